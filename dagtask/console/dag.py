"""A task's (or a template's) DAG drawn as one inline, self-contained ``<svg>`` for the console.

Layout decision: a layered drawing, left to right, with no JavaScript and no layout library.

* A node's column is the longest path to it from a root (:func:`dagtask.graph.longest_path_layers`),
  so every edge points right and a chain reads as a line, as in OCP's task view.
* Within a column, nodes are ordered by the mean row of their neighbours (a downward, an upward
  and a downward barycenter sweep; ties keep the input order) to cut crossings. Each sweep is
  linear in the edges; a 1,000-subtask task draws in about 40 ms.
* A column of more than :data:`MAX_ROWS` nodes wraps into side-by-side sub-columns, so the
  drawing grows wide (the page scrolls it) instead of thousands of pixels tall.
* Rows lie on one grid for the whole drawing, so the gaps between rows are free horizontal lanes
  in every column. An edge that would cross boxes (over a wrapped sub-column, or across the
  columns between its ends when it skips some) runs along such a lane, one for all the columns it
  skips (the lane nearest the middle of its ends), and changes lanes only in the gaps between
  columns; elsewhere it is one cubic curve from the right side of the upstream box to the left
  side of the downstream box. Each edge costs a constant amount of work, however far it reaches.
  Edges are drawn below the nodes.

The copies of a fan-out (hundreds of hosts) collapse into one group node with a status bar
(:func:`task_nodes`), which is what keeps real tasks small; ``expand`` shows the copies.
"""

from __future__ import annotations

import functools
import html
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dagtask import graph
from dagtask.models import SubtaskInfo, TaskInfo
from dagtask.states import SubtaskStatus
from dagtask.template import TaskTemplate

S = SubtaskStatus
URGENCY = (S.FAILED, S.CANCELING, S.RUNNING, S.READY, S.PENDING, S.SUCCESSFUL)
"""The status a group node shows: the first of these that any of its copies has."""
SHOWN = (S.SUCCESSFUL, S.FAILED, S.CANCELING, S.RUNNING, S.READY, S.PENDING)
"""The order of a group's counts (its bar and second line show them in the order given)."""
WORDS: dict[str, str] = {"SUCCESSFUL": "ok"}
"""How a group's second line names a status (others: the status in lower case)."""

NODE_W, NODE_H, RADIUS = 160, 36, 6
ROW_GAP, SUB_GAP, LAYER_GAP, MARGIN = 16, 32, 64, 16
PITCH = NODE_H + ROW_GAP
MAX_ROWS = 20
"""The most nodes stacked in one (sub-)column: 20 rows make a drawing about 1,050 px tall."""
FONT, SMALL = 12, 10
PAD = 8

# Characters XML 1.0 cannot hold even escaped; a name could still carry one.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")

_COUNT = re.compile(" \u00d7[0-9]+$")

COLOURS = {  # status: box fill, border, bar segment (OCP's palette; dark text stays readable)
    "SUCCESSFUL": ("#d9f7be", "#389e0d", "#52c41a"),
    "FAILED": ("#ffccc7", "#cf1322", "#f5222d"),
    "RUNNING": ("#d6e4ff", "#1d39c4", "#2f54eb"),
    "READY": ("#b5f5ec", "#08979c", "#13c2c2"),
    "PENDING": ("#f0f0f0", "#8c8c8c", "#bfbfbf"),
    "CANCELING": ("#ffe7ba", "#d46b08", "#fa8c16"),
    "none": ("#ffffff", "#595959", "#595959"),
}
STYLE = "".join(
    [
        ".dagtask-dag{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'Noto Sans',"
        "'PingFang SC','Microsoft YaHei',sans-serif;font-size:12px}"
        ".dagtask-dag text{fill:#1f1f1f;text-anchor:middle}"
        ".dagtask-dag .counts{font-size:10px;fill:#434343}"
        ".dagtask-dag rect{stroke-width:1.5}.dagtask-dag .node rect.bar{stroke:none}"
        ".dagtask-dag .st-FAILED .box{stroke-width:2}"
        ".dagtask-dag .edge{fill:none;stroke:#8c8c8c;stroke-width:1.25;"
        "marker-end:url(#dagtask-arrow)}"
        ".dagtask-dag .edge.to-pending{stroke:#d0d0d0;marker-end:url(#dagtask-arrow-pending)}"
        ".dagtask-dag .st-RUNNING .box{stroke-dasharray:6 3;animation:dagtask-run 1s linear "
        "infinite}@keyframes dagtask-run{to{stroke-dashoffset:-9}}"
        "@media (prefers-reduced-motion:reduce){.dagtask-dag .st-RUNNING .box{animation:none}}"
        ".dagtask-dag a{outline:none}"
        ".dagtask-dag a:hover .box,.dagtask-dag a:focus .box{stroke-width:3}"
    ]
    + [
        f".dagtask-dag .st-{st} rect{{fill:{fill};stroke:{border}}}"
        f".dagtask-dag .node rect.bar-{st}{{fill:{bar}}}"
        for st, (fill, border, bar) in COLOURS.items()
    ]
)
MARKERS = "".join(
    f'<marker id="dagtask-arrow{suffix}" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="8" '
    f'markerHeight="8" markerUnits="userSpaceOnUse" orient="auto">'
    f'<path d="M0,0L8,4L0,8z" fill="{colour}"/></marker>'
    for suffix, colour in (("", "#8c8c8c"), ("-pending", "#d0d0d0"))
)


@dataclass(frozen=True)
class Node:
    """One box of a drawing: a subtask, a fan-out group of copies, or a template spec."""

    key: str
    label: str
    status: str | None
    upstreams: tuple[str, ...]
    subtask_id: int | None = None
    href: str | None = None
    group: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    detail: str = ""


def task_nodes(
    task: TaskInfo,
    *,
    expand: Collection[str] = (),
    href: Callable[[SubtaskInfo], str] | None = None,
    group_href: Callable[[str], str] | None = None,
) -> list[Node]:
    """The nodes of ``task``: one per subtask, but one per fan-out (``"g:<name>"``) unless its
    name is in ``expand``. ``href`` links a subtask's node, ``group_href`` a group's.

    Two fan-outs sharing a name (their copies repeat a ``parallel_idx``) cannot be told apart,
    so their copies are drawn one by one.
    """
    indexes: dict[str, list[int]] = {}
    for sub in task.subtasks:
        if sub.parallel:
            indexes.setdefault(sub.name, []).append(sub.parallel_idx)
    grouped = {n for n, idx in indexes.items() if n not in expand and len(set(idx)) == len(idx)}
    key_of = {
        sub.id: f"g:{sub.name}" if sub.parallel and sub.name in grouped else f"s{sub.id}"
        for sub in task.subtasks
    }
    members_of: dict[str, list[SubtaskInfo]] = {}
    for sub in task.subtasks:
        members_of.setdefault(key_of[sub.id], []).append(sub)
    nodes: list[Node] = []
    for key, members in members_of.items():
        ups = (key_of[up] for m in members for up in m.upstreams if key_of.get(up, key) != key)
        if key.startswith("g:"):
            nodes.append(_group_node(key, members, tuple(dict.fromkeys(ups)), group_href))
        else:
            nodes.append(_subtask_node(key, members[0], tuple(dict.fromkeys(ups)), href))
    return nodes


def template_nodes(template: TaskTemplate) -> list[Node]:
    """The nodes of ``template``: one per spec (keyed by its name), without a status."""
    nodes: list[Node] = []
    for spec in template.subtasks:
        facts = [f"handler {spec.handler}"]
        if spec.display_name:
            facts.append(f"shown as {spec.display_name}")
        if spec.split_key is not None:
            facts.append(f"one copy per item of listMap[{spec.split_key}] ({spec.split_method})")
        if spec.timeout:
            facts.append(f"timeout {spec.timeout}s")
        if spec.retry_count:
            facts.append(f"{spec.retry_count} automatic retries")
        if spec.prohibit_rollback:
            facts.append("rollback prohibited")
        fan_out = spec.split_key is not None
        label = f"{spec.name} (fan-out by {spec.split_key})" if fan_out else spec.name
        group = spec.name if fan_out else None
        nodes.append(
            Node(spec.name, label, None, spec.upstreams, group=group, detail="\n".join(facts))
        )
    return nodes


def render(nodes: Sequence[Node], *, title: str = "") -> str:
    """The ``<svg>`` of ``nodes`` (a DAG: upstream keys not among them are ignored).

    Raises ``ValueError`` if two nodes share a key or the upstreams form a cycle.
    """
    index = {node.key: i for i, node in enumerate(nodes)}
    if len(index) != len(nodes):
        raise ValueError("two nodes of the drawing share a key; keys must be unique")
    edges: dict[tuple[int, int], None] = {}
    for i, node in enumerate(nodes):
        for up in node.upstreams:
            j = index.get(up, i)
            if j != i:
                edges[j, i] = None
    n = len(nodes)
    layer_of = graph.longest_path_layers(list(range(n)), edges)
    ups: list[list[int]] = [[] for _ in range(n)]
    downs: list[list[int]] = [[] for _ in range(n)]
    for u, d in edges:
        ups[d].append(u)
        downs[u].append(d)
    columns: list[list[int]] = [[] for _ in range(max(layer_of.values(), default=-1) + 1)]
    for i in range(n):
        columns[layer_of[i]].append(i)
    subcols = [math.ceil(len(col) / MAX_ROWS) for col in columns]
    rows = [math.ceil(len(col) / k) for col, k in zip(columns, subcols, strict=True)]
    grid = max(rows, default=0)
    row = [0] * n

    def place(c: int) -> None:
        offset = (grid - rows[c]) // 2
        for k, i in enumerate(columns[c]):
            row[i] = offset + k % rows[c]

    def sweep(neighbours: list[list[int]], order: Iterable[int]) -> None:
        for c in order:
            columns[c].sort(key=lambda i: (_mean(row, neighbours[i], row[i]), i))
            place(c)

    last = len(columns) - 1
    for c in range(len(columns)):
        place(c)
    sweep(ups, range(1, last + 1))
    sweep(downs, range(last - 1, -1, -1))
    sweep(ups, range(1, last + 1))

    lefts: list[int] = []
    x = MARGIN
    for k in subcols:
        lefts.append(x)
        x += k * NODE_W + (k - 1) * SUB_GAP + LAYER_GAP
    rights = [left + k * NODE_W + (k - 1) * SUB_GAP for left, k in zip(lefts, subcols, strict=True)]
    width = max(x - LAYER_GAP + MARGIN, 2 * MARGIN + NODE_W)
    height = MARGIN * 2 + max(grid * PITCH - ROW_GAP, NODE_H)
    xs, ys, sub = [0] * n, [0] * n, [0] * n
    for c, col in enumerate(columns):
        for k, i in enumerate(col):
            sub[i] = k // rows[c]
            xs[i] = lefts[c] + sub[i] * (NODE_W + SUB_GAP)
            ys[i] = MARGIN + row[i] * PITCH

    def lane(r: int) -> int:  # the middle of the gap above grid row r
        return MARGIN + r * PITCH - ROW_GAP // 2

    def path(u: int, d: int) -> str:
        sx, sy = xs[u] + NODE_W, ys[u] + NODE_H // 2
        tx, ty = xs[d], ys[d] + NODE_H // 2
        lu, ld = layer_of[u], layer_of[d]
        runs: list[tuple[float, float, int]] = []  # horizontal stretches along lanes
        if sub[u] < subcols[lu] - 1:
            runs.append((sx + SUB_GAP / 2, rights[lu], lane(row[u] + (ty >= sy))))
        if ld - lu > 1:  # one lane across every column between: lanes are free in all of them
            r = min(max(round(((sy + ty) / 2 - MARGIN + ROW_GAP / 2) / PITCH), 0), grid)
            runs.append((lefts[lu + 1], rights[ld - 1], lane(r)))
        if sub[d] > 0:
            before = runs[-1][2] if runs else sy
            runs.append((lefts[ld], tx - SUB_GAP / 2, lane(row[d] + (before > ty))))
        out, cx, cy = [f"M{sx},{sy}"], float(sx), float(sy)
        for x_in, x_out, y in runs:
            out.append(f"{_curve(cx, cy, x_in, y)}L{_num(x_out)},{y}")
            cx, cy = x_out, y
        out.append(_curve(cx, cy, tx, ty))
        return "".join(out)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dagtask-dag" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" aria-label="{_esc(title or "DAG")}">'
    ]
    if title:
        parts.append(f"<title>{_esc(title)}</title>")
    parts.append(f"<style>{STYLE}</style><defs>{MARKERS}</defs>")
    if not nodes:
        parts.append(f'<text x="{width // 2}" y="{MARGIN + 22}">no subtasks</text>')
    parts.append('<g class="edges">')
    for u, d in edges:
        pending = " to-pending" if nodes[d].status == S.PENDING else ""
        parts.append(
            f'<path class="edge{pending}" data-from="{_esc(nodes[u].key)}" '
            f'data-to="{_esc(nodes[d].key)}" d="{path(u, d)}"/>'
        )
    parts.append('</g><g class="nodes">')
    parts.extend(_node(node, xs[i], ys[i]) for i, node in enumerate(nodes))
    parts.append("</g></svg>")
    return "".join(parts)


def _subtask_node(
    key: str, sub: SubtaskInfo, ups: tuple[str, ...], href: Callable[[SubtaskInfo], str] | None
) -> Node:
    label = f"{sub.name} [{sub.parallel_idx}]" if sub.parallel else sub.name
    facts = [
        f"subtask {sub.id} \u00b7 {sub.status} \u00b7 {sub.operation} \u00b7 attempt {sub.run_time}"
    ]
    if sub.executor:
        facts.append(f"worker {sub.executor}")
    if sub.message:
        facts.append(f"error: {_cut(sub.message, 300)}")
    link = href(sub) if href else None
    return Node(key, label, sub.status.value, ups, sub.id, link, detail="\n".join(facts))


def _group_node(
    key: str, copies: list[SubtaskInfo], ups: tuple[str, ...], href: Callable[[str], str] | None
) -> Node:
    name, tally = copies[0].name, Counter(m.status for m in copies)
    counts = {st.value: tally[st] for st in SHOWN if tally[st]}
    detail = f"{len(copies)} copies: " + ", ".join(f"{n} {st}" for st, n in counts.items())
    failed = next((m for m in copies if m.status is S.FAILED and m.message), None)
    if failed is not None:
        detail += f"\n[{failed.parallel_idx}] error: {_cut(failed.message or '', 300)}"
    status = next(st for st in URGENCY if tally[st]).value
    label = f"{name} \u00d7{len(copies)}"  # a multiplication sign
    link = href(name) if href else None
    return Node(key, label, status, ups, None, link, name, counts, detail)


def _node(node: Node, x: int, y: int) -> str:
    attrs = [f'class="node st-{_esc(node.status or "none")}{" group" if node.group else ""}"']
    attrs.append(f'data-key="{_esc(node.key)}"')
    for name, value in (
        ("data-status", node.status),
        ("data-subtask-id", node.subtask_id),
        ("data-group", node.group),
    ):
        if value is not None:
            attrs.append(f'{name}="{_esc(str(value))}"')
    tip = f"{node.label}\n{node.detail}" if node.detail else node.label
    out = [f"<g {' '.join(attrs)}><title>{_esc(tip)}</title>"]
    size = f'width="{NODE_W}" height="{NODE_H}" rx="{RADIUS}"'
    if node.group:  # a second box peeking out behind: this node stands for several
        out.append(f'<rect class="stack" x="{x + 4}" y="{y + 4}" {size}/>')
    out.append(f'<rect class="box" x="{x}" y="{y}" {size}/>')
    room, mid = NODE_W - 2 * PAD, x + NODE_W // 2
    if node.counts:
        label = _fit_keeping_count(node.label, room, FONT)
        out.append(f'<text class="label" x="{mid}" y="{y + 14}">{_esc(label)}</text>')
        out.append(_bar(node.counts, x + PAD, y + NODE_H - 7, room))
        words = " · ".join(f"{n} {WORDS.get(st, st.lower())}" for st, n in node.counts.items())
        line = _esc(_fit(words, NODE_W - PAD, SMALL))
        out.append(f'<text class="counts" x="{mid}" y="{y + 25}">{line}</text>')
    else:
        lines = _wrap(node.label, room, FONT)
        baselines = [y + 22] if len(lines) == 1 else [y + 15, y + 29]
        for text, base in zip(lines, baselines, strict=True):
            out.append(f'<text class="label" x="{mid}" y="{base}">{_esc(text)}</text>')
    out.append("</g>")
    svg = "".join(out)
    return f'<a href="{_esc(node.href)}" tabindex="0">{svg}</a>' if node.href else svg


def _bar(counts: Mapping[str, int], x: int, y: int, room: int) -> str:
    """A thin stacked bar: one segment per status, as wide as its share of the copies."""
    total = sum(counts.values()) or 1
    out, done = [], 0
    for status, n in counts.items():
        start, done = room * done / total, done + n
        seg = room * done / total - start
        out.append(
            f'<rect class="bar bar-{_esc(status)}" x="{_num(x + start)}" y="{y}" '
            f'width="{_num(seg)}" height="3"/>'
        )
    return "".join(out)


def _mean(values: list[int], of: list[int], default: int) -> float:
    return sum(values[i] for i in of) / len(of) if of else default


def _curve(x0: float, y0: float, x1: float, y1: float) -> str:
    """A cubic from (x0, y0) to (x1, y1) that leaves and arrives horizontally."""
    mid = (x0 + x1) / 2
    return f"C{_num(mid)},{_num(y0)} {_num(mid)},{_num(y1)} {_num(x1)},{_num(y1)}"


def _num(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _esc(text: str) -> str:
    return html.escape(_NOT_XML.sub("\ufffd", text))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.cache
def _em(ch: str) -> float:
    """About how wide ``ch`` is, in ems, in a wide sans-serif font (DejaVu Sans, erring wide)."""
    if unicodedata.east_asian_width(ch) in "WF":
        return 1.0
    if ch in "iljI.,:;|!'\u00b7":
        return 0.3
    if ch in " ftr()[]-/":
        return 0.4
    if ch in "mwMW@%":
        return 0.95
    if ch.isupper() or ch in "&\u00d7\u2014":
        return 0.72
    return 0.6 if ch.isalpha() else 0.64


def _width(text: str, size: float) -> float:
    """About how wide ``text`` is in px at ``size`` px."""
    return sum(_em(ch) for ch in text) * size


def _fit(text: str, room: float, size: float) -> str:
    """``text`` cut with an ellipsis to fit ``room`` px."""
    if _width(text, size) <= room:
        return text
    used, keep = 0.0, room - _width("…", size)
    for k, ch in enumerate(text):
        used += _width(ch, size)
        if used > keep:
            return text[:k].rstrip() + "…"
    return text


def _fit_keeping_count(label: str, room: float, size: float) -> str:
    """A group label cut to fit, but never its trailing copy count (`` \u00d7300``)."""
    found = _COUNT.search(label)
    if found is None:
        return _fit(label, room, size)
    head, tail = label[: found.start()], found.group()
    return _fit(head, room - _width(tail, size), size) + tail


def _wrap(text: str, room: float, size: float) -> list[str]:
    """One line, or two (broken at a space when one is near), the second cut to fit."""
    if _width(text, size) <= room:
        return [text]
    used, cut = 0.0, 0
    for k, ch in enumerate(text):
        used += _width(ch, size)
        if used > room:
            break
        cut = k + 1
    # Break before a parenthesis (" (fan-out by hosts)") if there is one, else at a space.
    paren, space = text.rfind(" (", 1, cut + 1), text.rfind(" ", 0, cut + 1)
    if paren > cut // 4:
        cut = paren
    elif space > cut // 3:
        cut = space
    return [text[:cut].rstrip(), _fit(text[cut:].lstrip(), room, size)]
