"""Timeline pictures of a task: every attempt of every subtask on one time axis.

:func:`html_page` is a self-contained page (inline SVG, CSS and a few lines of JavaScript, no
external resources) that fits the window's width: one row per subtask in topological order with
its full name, one bar per attempt coloured by its operation and outlined by its result, a hover
box with the attempt's details (a native ``<title>`` tooltip too, for viewers without
JavaScript), a mark for each operator action, and ticks on round values.
:func:`terminal` is the same picture in text, one line per subtask, as wide as the terminal.

Both share one :class:`Axis`. A retry or a rollback often comes minutes after the run it acts on;
on a linear axis every later attempt would then be squeezed into the last pixels. So the axis is
cut into *segments*, the busy stretches of the task's life, each with its own scale and a fair
share of the width, and the long idle gaps between them are drawn as axis breaks that say how
long nothing happened.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dagtask.models import TaskInfo
from dagtask.states import Operation

from . import typed as ev

# Okabe-Ito hues: EXECUTE, RETRY and ROLLBACK stay apart for colour-blind readers too.
COLOURS = {
    Operation.EXECUTE: "#0072b2",
    Operation.RETRY: "#cc79a7",
    Operation.ROLLBACK: "#e69f00",
    Operation.SKIP: "#b8bec8",
    Operation.ROLLBACK_SKIP: "#f0e442",
    Operation.CANCEL: "#6b7280",
}
RESULT_STYLE = {
    ev.Result.SUCCEEDED: ("#15803d", ""),
    ev.Result.FAILED: ("#b91c1c", ""),
    ev.Result.CANCELLED: ("#b91c1c", "4 2"),
    ev.Result.LOST: ("#7c2d12", "1 2"),
    ev.Result.RUNNING: ("#111827", "2 2"),
}
LETTERS = {
    Operation.EXECUTE: "E",
    Operation.RETRY: "R",
    Operation.ROLLBACK: "B",
    Operation.SKIP: "S",
    Operation.ROLLBACK_SKIP: "K",
    Operation.CANCEL: "C",
}
UNSUCCESSFUL = (ev.Result.FAILED, ev.Result.CANCELLED, ev.Result.LOST)

MIN_IDLE = 1.0
"""Seconds: a quieter stretch is never an axis break."""
IDLE_SHARE = 0.25
"""An idle gap longer than this share of the busy time (and than MIN_IDLE) becomes a break."""
NICE_STEPS = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip
"""Tick steps in seconds: ticks fall on round values (1 s, 5 s, 1 min, ...)."""


# ---- the axis ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A busy stretch of the axis: seconds ``start..end`` after the origin drawn over
    ``left..right`` (fractions of the plot, or columns)."""

    start: float
    end: float
    left: float
    right: float

    def at(self, seconds: float) -> float:
        """Where a time in this segment is drawn."""
        share = (seconds - self.start) / (self.end - self.start)
        return self.left + (self.right - self.left) * min(max(share, 0.0), 1.0)


@dataclass(frozen=True)
class Axis:
    """Time to position, over segments separated by axis breaks."""

    origin: datetime
    segments: list[Segment]

    @property
    def end(self) -> datetime:
        """The last time on the axis."""
        return self.origin + timedelta(seconds=self.segments[-1].end)

    def seconds(self, when: datetime) -> float:
        """Seconds from the origin."""
        return (when - self.origin).total_seconds()

    def segment(self, when: datetime) -> int:
        """The index of the segment drawing ``when`` (the nearest one for a time in a gap)."""
        t = self.seconds(when)
        for i, seg in enumerate(self.segments):
            if t <= seg.end or i + 1 == len(self.segments):
                return i
            if t < self.segments[i + 1].start:  # in the gap after segment i
                nearer_next = self.segments[i + 1].start - t < t - seg.end
                return i + 1 if nearer_next else i
        return len(self.segments) - 1

    def at(self, when: datetime) -> float:
        """Where ``when`` is drawn."""
        return self.segments[self.segment(when)].at(self.seconds(when))

    def breaks(self) -> list[tuple[float, float, float]]:
        """(left, right, idle seconds) of each axis break."""
        pairs = zip(self.segments, self.segments[1:], strict=False)
        return [(a.right, b.left, b.start - a.end) for a, b in pairs]


def _busy(
    attempts: Sequence[ev.Attempt], history: Sequence[ev.HistoryEvent], now: datetime
) -> list[tuple[datetime, datetime]]:
    """The times something happened, merged into disjoint stretches."""
    spans = [(a.start, max(a.end or now, a.start)) for a in attempts]
    spans += [(e.time, e.time) for e in history]
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged or [(now, now)]


def axis(
    attempts: Sequence[ev.Attempt],
    history: Sequence[ev.HistoryEvent],
    *,
    size: float,
    gap: float,
    now: datetime,
    whole: bool = False,
) -> Axis:
    """The axis over ``size`` units (1.0 for fractions, or columns) with ``gap`` units per
    break; ``whole``: segment edges on whole units (columns), each segment at least one."""
    busy = _busy(attempts, history, now)
    origin = busy[0][0]
    total_busy = sum((end - start).total_seconds() for start, end in busy)
    threshold = max(MIN_IDLE, IDLE_SHARE * total_busy)
    stretches: list[list[float]] = []
    for start, end in busy:
        s, e = (start - origin).total_seconds(), (end - origin).total_seconds()
        if stretches and s - stretches[-1][1] <= threshold:
            stretches[-1][1] = e
        else:
            stretches.append([s, e])
    room = size - gap * (len(stretches) - 1)
    if len(stretches) > 1 and room < (3 * len(stretches) if whole else 0.5):
        # Too narrow to show every stretch: one linear axis is better than slivers.
        stretches = [[stretches[0][0], stretches[-1][1]]]
        room = size
    durations = [e - s for s, e in stretches]
    longest = max(durations)
    for stretch in stretches:
        # A lone moment (an action nothing followed) still needs a scale.
        stretch[1] = max(stretch[1], stretch[0] + max(longest * 0.05, 0.1))
    durations = [e - s for s, e in stretches]
    # Half the room is shared equally, half by duration: a short phase stays readable beside a
    # long one, and a long one still looks longer.
    weights = [0.5 / len(durations) + 0.5 * d / sum(durations) for d in durations]
    segments: list[Segment] = []
    left = 0.0
    for i, ((s, e), weight) in enumerate(zip(stretches, weights, strict=True)):
        right = left + room * weight
        if whole:
            right = float(max(round(right), math.floor(left) + 1))
            if i + 1 == len(stretches):
                right = float(size)
        segments.append(Segment(s, e, left, right))
        left = right + gap
    return Axis(origin, segments)


def ticks(seg: Segment, pixels: float, spacing: float = 90.0) -> tuple[float, list[float]]:
    """(step, tick times) of a segment drawn over ``pixels``: round values at least ``spacing``
    pixels apart."""
    seconds = seg.end - seg.start
    wanted = seconds * spacing / max(pixels, 1.0)
    step = next((s for s in NICE_STEPS if s >= wanted), NICE_STEPS[-1])
    first = math.ceil(seg.start / step - 1e-9)
    last = math.floor(seg.end / step + 1e-9)
    return step, [k * step for k in range(first, last + 1)]


def offset(seconds: float, step: float = 1.0) -> str:
    """``+12.5s``, ``+5m``, ``+5m12s``, ``+1h05m``: a time after the origin, as precise as
    ``step`` needs."""
    places = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    if seconds < 60:
        return f"+{seconds:.{places}f}s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        if step >= 60 or round(rest, places) == 0:
            return f"+{int(minutes)}m"
        return f"+{int(minutes)}m{rest:0{3 + places if places else 2}.{places}f}s"
    hours, rest = divmod(seconds, 3600)
    return f"+{int(hours)}h{int(rest // 60):02d}m"


def human(seconds: float) -> str:
    """A duration for people: ``0.412 s``, ``12.3 s``, ``4 min 58 s``, ``1 h 02 min``."""
    if seconds < 10:
        return f"{seconds:.3f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


# ---- shared --------------------------------------------------------------------------------------


def _rows(task: TaskInfo) -> list[tuple[int, str]]:
    """(subtask id, label) in topological order (roots first), as ``dagtask show`` lists them."""
    names = ev.labels(task)
    subs = sorted(task.subtasks, key=lambda s: (-s.series_id, s.id))
    return [(s.id, names[s.id]) for s in subs]


def _stamp(when: datetime) -> str:
    return when.replace(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _clock(when: datetime) -> str:
    return when.replace(tzinfo=UTC).astimezone().strftime("%H:%M:%S")


def _details(a: ev.Attempt) -> str:
    lines = [
        f"{a.subtask}: {a.operation.value} attempt {a.run_time}",
        f"result: {a.result.value}",
        f"worker: {a.worker or '?'}",
        f"start: {_stamp(a.start)}",
        f"end: {_stamp(a.end) if a.end else '(not ended)'}",
        f"duration: {a.duration:.3f} s" if a.duration is not None else "duration: -",
    ]
    if a.error:
        lines.append(f"error: {a.error}")
    if a.cancel_requested_by:
        lines.append(f"cancel requested by {a.cancel_requested_by}")
    if a.retried_automatically:
        lines.append("retried automatically")
    return "\n".join(lines)


def _phases(
    axis_: Axis, attempts: Sequence[ev.Attempt], actions: Sequence[ev.ActionSummary]
) -> list[tuple[str, str]]:
    """(short, long) label of each segment: the operations run in it and the actions that
    started it, e.g. ``RETRY`` and ``RETRY: retry task by alice, 14:07:03``."""
    ops: list[list[str]] = [[] for _ in axis_.segments]
    acts: list[list[str]] = [[] for _ in axis_.segments]
    for a in attempts:
        names = ops[axis_.segment(a.start)]
        if a.operation.value not in names:
            names.append(a.operation.value)
    for act in actions:
        acts[axis_.segment(act.time)].append(f"{act.action.value} by {act.operator}")
    labels = []
    for seg, names, done in zip(axis_.segments, ops, acts, strict=True):
        short = "/".join(names) or (done[0] if done else "idle")
        when = _clock(axis_.origin + timedelta(seconds=seg.start))
        labels.append(
            (short, f"{short}: {', '.join(done)}, {when}" if done else f"{short}, {when}")
        )
    return labels


# ---- HTML ----------------------------------------------------------------------------------------

ROW_H = 28
TOP = 46
BOTTOM = 26
NOMINAL_PLOT = 620.0
"""Pixels the plot gets in a narrow (800 px) window: ticks and labels are spaced for it."""
BREAK_SHARE = 0.045


def html_page(
    task: TaskInfo,
    history: Sequence[ev.HistoryEvent],
    *,
    now: datetime | None = None,
) -> str:
    """A self-contained HTML page with the task's Gantt chart, as wide as the window."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    attempts = ev.attempts(history)
    actions = ev.actions(history)
    rows = _rows(task)
    ax = axis(attempts, history, size=1.0, gap=BREAK_SHARE, now=now)
    height = TOP + ROW_H * max(len(rows), 1) + BOTTOM
    chart_bottom = height - BOTTOM

    def pct(value: float) -> str:
        return f"{value * 100:.3f}%"

    index = {sid: i for i, (sid, _) in enumerate(rows)}
    parts: list[str] = []
    for i in range(len(rows)):
        if i % 2:
            parts.append(
                f'<rect x="0" y="{TOP + i * ROW_H}" width="100%" height="{ROW_H}" fill="#f6f7f9"/>'
            )
    for (short, long), seg in zip(_phases(ax, attempts, actions), ax.segments, strict=True):
        pixels = (seg.right - seg.left) * NOMINAL_PLOT
        label = long if len(long) * 6.6 < pixels - 8 else short
        if len(label) * 6.6 > pixels - 8:
            label = ""
        # The script below swaps in the longest label that fits the segment's real width.
        parts.append(
            f'<g class="phase"><rect x="{pct(seg.left)}" y="2" width="{pct(seg.right - seg.left)}" '
            f'height="18" rx="3"/><text class="phase-label" x="{pct(seg.left)}" dx="6" y="15" '
            f'data-labels="{html.escape(json.dumps([long, short]), quote=True)}">'
            f"{html.escape(label)}</text><title>{html.escape(long)}</title></g>"
        )
        step, times = ticks(seg, pixels)
        for t in times:
            tx = seg.at(t)
            near_left = (tx - seg.left) * NOMINAL_PLOT < 26
            near_right = (seg.right - tx) * NOMINAL_PLOT < 26
            if near_right and not near_left and len(times) > 1:
                continue  # would collide with the next segment's first label
            anchor = "start" if near_left else "middle"
            parts.append(
                f'<line class="grid" x1="{pct(tx)}" y1="{TOP - 6}" x2="{pct(tx)}" '
                f'y2="{chart_bottom}"/>'
                f'<text class="tick" x="{pct(tx)}" y="{TOP - 10}" text-anchor="{anchor}" '
                f'data-step="{step:g}">'
                f"{offset(t, step)}</text>"
            )
    for left, right, idle in ax.breaks():
        text = f"{human(idle)} idle"
        parts.append(
            f'<rect class="gap" x="{pct(left)}" y="{TOP - 4}" width="{pct(right - left)}" '
            f'height="{chart_bottom - TOP + 4}"><title>{text}: nothing happened</title></rect>'
            f'<svg x="{pct(left)}" y="{TOP - 4}" width="{pct(right - left)}" '
            f'height="{chart_bottom - TOP + 4}" viewBox="0 0 20 100" preserveAspectRatio="none">'
            '<polyline class="zigzag" points="3,0 7,4 3,8 7,12 3,16 7,20 3,24 7,28 3,32 7,36 '
            '3,40 7,44 3,48 7,52 3,56 7,60 3,64 7,68 3,72 7,76 3,80 7,84 3,88 7,92 3,96 7,100"/>'
            '<polyline class="zigzag" points="13,0 17,4 13,8 17,12 13,16 17,20 13,24 17,28 '
            "13,32 17,36 13,40 17,44 13,48 17,52 13,56 17,60 13,64 17,68 13,72 17,76 13,80 "
            '17,84 13,88 17,92 13,96 17,100"/></svg>'
            f'<text class="idle" x="{pct((left + right) / 2)}" y="{height - 8}">{text}</text>'
        )
    for a in attempts:
        if a.subtask_id not in index:
            continue
        y = TOP + index[a.subtask_id] * ROW_H + 5
        x0 = ax.at(a.start)
        x1 = max(ax.at(a.end or now), x0 + 0.003)
        stroke, dash = RESULT_STYLE[a.result]
        details = _details(a)
        parts.append(
            f'<rect class="attempt" x="{pct(x0)}" y="{y}" width="{pct(x1 - x0)}" '
            f'height="{ROW_H - 10}" rx="3" fill="{COLOURS[a.operation]}" stroke="{stroke}" '
            f'stroke-width="{2 if a.result in UNSUCCESSFUL else 1.5}" stroke-dasharray="{dash}" '
            f'data-op="{a.operation.value}" data-result="{a.result.value}" '
            f'data-details="{html.escape(details, quote=True)}">'
            f"<title>{html.escape(details)}</title></rect>"
        )
        if a.result in UNSUCCESSFUL:
            # Not by colour alone: a failed attempt also carries a dark strip along its foot.
            parts.append(
                f'<rect class="failed-mark" x="{pct(x0)}" y="{y + ROW_H - 14}" '
                f'width="{pct(x1 - x0)}" height="4" fill="{stroke}"/>'
            )
    for act in actions:
        ax_ = ax.at(act.time)
        text = f"{act.action.value} by {act.operator} at {_stamp(act.time)}"
        if act.task_status_before:
            text += f" (task was {act.task_status_before} / {act.task_operation_before})"
        parts.append(
            f'<line class="action" x1="{pct(ax_)}" y1="{TOP - 4}" x2="{pct(ax_)}" '
            f'y2="{chart_bottom}" data-details="{html.escape(text, quote=True)}">'
            f"<title>{html.escape(text)}</title></line>"
        )
    used = {a.operation for a in attempts}
    legend = "".join(
        f'<span class="key"><i style="background:{colour}"></i>{op.value}</span>'
        for op, colour in COLOURS.items()
        if op in (Operation.EXECUTE, Operation.RETRY, Operation.ROLLBACK) or op in used
    )
    legend += "".join(
        f'<span class="key"><i style="border:2px {"dashed" if dash else "solid"} {colour};'
        f'background:#fff"></i>{result.value}</span>'
        for result, (colour, dash) in RESULT_STYLE.items()
    )
    legend += (
        '<span class="key"><i class="key-action"></i>operator action</span>'
        '<span class="key"><i class="key-gap"></i>idle time left out</span>'
    )
    names = "".join(
        f'<div class="name{" odd" if i % 2 else ""}">{html.escape(label)}</div>'
        for i, (_, label) in enumerate(rows)
    )
    title = f"Task {task.id} {task.name}: {task.status.value} ({task.operation.value})"
    start, end = ax.origin, max(ax.end, ax.origin)
    summary = (
        f"{len(attempts)} attempts of {len(rows)} subtasks, {len(actions)} operator actions; "
        f"{_stamp(start)} to {_stamp(end)} ({human((end - start).total_seconds())})"
    )
    if ax.breaks():
        summary += "; the axis leaves out long idle stretches and scales each busy one to fit"
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}">' + "".join(parts) + "</svg>"
    )
    data = json.dumps({"task": task.id, "attempts": len(attempts), "segments": len(ax.segments)})
    return _PAGE.format(
        title=html.escape(title),
        summary=html.escape(summary),
        legend=legend,
        names=names,
        svg=svg,
        data=data,
        top=TOP,
        bottom=BOTTOM,
        row=ROW_H,
    )


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 20px; color: #111827; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }}
.summary {{ color: #4b5563; margin-bottom: 8px; }}
.legend {{ margin: 8px 0 12px; line-height: 1.9; }}
.key {{ margin-right: 14px; white-space: nowrap; }}
.key i {{ display: inline-block; width: 14px; height: 10px; margin-right: 4px;
  vertical-align: middle; border-radius: 2px; box-sizing: border-box; }}
.key .key-action {{ width: 0; height: 14px; border-left: 2px dashed #dc2626; border-radius: 0; }}
.key .key-gap {{ background: #eef0f3; border-left: 1px solid #9ca3af;
  border-right: 1px solid #9ca3af; width: 12px; }}
.chart {{ display: flex; border: 1px solid #e5e7eb; overflow-x: auto; }}
.names {{ flex: none; padding: {top}px 0 {bottom}px; border-right: 1px solid #e5e7eb; }}
.name {{ height: {row}px; line-height: {row}px; padding: 0 10px; font-size: 13px;
  white-space: nowrap; }}
.name.odd {{ background: #f6f7f9; }}
.plot {{ flex: 1 1 auto; min-width: 360px; padding: 0 14px; }}
.plot svg {{ display: block; overflow: visible; }}
.phase rect {{ fill: #eef2f7; }}
.phase-label {{ font-size: 11px; font-weight: 600; fill: #374151; }}
.tick {{ font-size: 11px; fill: #6b7280; }}
.grid {{ stroke: #e5e7eb; }}
.gap {{ fill: #eef0f3; }}
.zigzag {{ fill: none; stroke: #9ca3af; stroke-width: 1; vector-effect: non-scaling-stroke; }}
.idle {{ font-size: 11px; fill: #4b5563; text-anchor: middle; }}
.action {{ stroke: #dc2626; stroke-width: 2; stroke-dasharray: 3 3; cursor: help; }}
.attempt {{ cursor: help; }}
.attempt:hover {{ opacity: 0.8; }}
#tip {{ position: fixed; display: none; background: #111827; color: #f9fafb; padding: 6px 8px;
  border-radius: 4px; font-size: 12px; white-space: pre; pointer-events: none; }}
</style></head>
<body>
<h1>{title}</h1>
<div class="summary">{summary}</div>
<div class="legend">{legend}</div>
<div class="chart"><div class="names">{names}</div><div class="plot">{svg}</div></div>
<div id="tip"></div>
<script type="application/json" id="timeline-data">{data}</script>
<script>
(function () {{
  var tip = document.getElementById("tip");
  document.querySelectorAll("[data-details]").forEach(function (el) {{
    el.addEventListener("mousemove", function (e) {{
      tip.textContent = el.getAttribute("data-details");
      tip.style.display = "block";
      tip.style.left = Math.min(e.clientX + 12, window.innerWidth - tip.offsetWidth - 4) + "px";
      tip.style.top = (e.clientY + 12) + "px";
    }});
    el.addEventListener("mouseleave", function () {{ tip.style.display = "none"; }});
  }});
  function fitLabels() {{
    document.querySelectorAll(".phase-label").forEach(function (text) {{
      var room = text.previousElementSibling.getBBox().width - 12;
      var choices = JSON.parse(text.getAttribute("data-labels")).concat([""]);
      for (var i = 0; i < choices.length; i++) {{
        text.textContent = choices[i];
        if (text.getComputedTextLength() <= room) break;
      }}
    }});
  }}
  fitLabels();
  window.addEventListener("resize", fitLabels);
}})();
</script>
</body></html>
"""


# ---- terminal ------------------------------------------------------------------------------------

MIN_BARS = 20
"""Fewer columns than this for the bars and the names go on their own lines."""
LEGEND = (
    "E execute, R retry, B rollback, S skip, K rollback skip; lower case: failed, cancelled or "
    "lost; > running"
)


def terminal_width() -> int:
    """The terminal's width in columns (``COLUMNS`` first; 100 when it cannot be told)."""
    return shutil.get_terminal_size((100, 24)).columns


def terminal(
    task: TaskInfo,
    history: Sequence[ev.HistoryEvent],
    *,
    width: int | None = None,
    colour: bool = False,
    now: datetime | None = None,
) -> str:
    """The timeline as text no wider than ``width`` columns (default: the terminal's width).

    One line per subtask with its full name, one letter per time slot of an attempt (E execute,
    R retry, B rollback, S skip, K rollback skip; lower case: the attempt failed, was cancelled or
    lost its worker; ``>``: still running), then its attempts and last result. Names are never
    cut: when they leave fewer than :data:`MIN_BARS` columns for the bars, each name goes on its
    own line (wrapped if longer than the terminal) above its bars. Long idle gaps are ``//``.
    """
    now = now or datetime.now(UTC).replace(tzinfo=None)
    columns = max(width or terminal_width(), 30)
    attempts = ev.attempts(history)
    rows = _rows(task)
    mine = {sid: [a for a in attempts if a.subtask_id == sid] for sid, _ in rows}
    tails = {sid: _tail(mine[sid]) for sid, _ in rows}
    name_w = max((len(label) for _, label in rows), default=4)
    tail_w = max((len(t) for t in tails.values()), default=0)
    bars = columns - (2 + name_w + 2 + 2 + tail_w)
    stacked = bars < MIN_BARS
    if stacked:
        bars = columns - 6
    ax = axis(attempts, history, size=bars, gap=2, now=now, whole=True)
    total = (ax.end - ax.origin).total_seconds()
    head = (
        f"task {task.id} {task.name}: {task.status.value} ({task.operation.value}), "
        f"{_stamp(ax.origin)} .. {_stamp(ax.end)} ({human(total)}"
    )
    if len(ax.segments) == 1:
        head += f"; one column = {total / bars:.3f} s)"
    else:
        idle = ", ".join(human(idle) for _, _, idle in ax.breaks())
        head += f"; // idle time left out: {idle})"
    lines = _wrap(head, columns, "")
    pad = "    " if stacked else "  " + " " * name_w + " "
    lines.append(f"{pad}{_ruler(ax, bars)}")
    for sid, label in rows:
        cells = _cells(ax, bars, mine[sid], colour, now)
        error = _error(mine[sid])
        if stacked:
            text = f"{label}: {tails[sid]}" + (f": {_cut(error, 120)}" if error else "")
            lines += _wrap(text, columns, "  ", "    ")
            lines.append(f"    |{cells}|")
            continue
        line = f"  {label.ljust(name_w)} |{cells}| {tails[sid]}"
        room = columns - (2 + name_w + 2 + bars + 2 + len(tails[sid]))
        if error and room >= 10:
            line += ": " + _cut(error, room - 2)
        lines.append(line)
    for act in ev.actions(history):
        text = f"action at {_stamp(act.time)}: {act.action.value} by {act.operator}"
        lines += _wrap(text, columns, "  ", "    ")
    legend = LEGEND + ("; // idle time left out" if ax.breaks() else "")
    lines += _wrap(legend, columns, "  ", "  ")
    return "\n".join(lines)


def _tail(mine: Sequence[ev.Attempt]) -> str:
    if not mine:
        return "never ran"
    return f"{len(mine)} attempt{'s' if len(mine) > 1 else ''}, last {mine[-1].result.value}"


def _error(mine: Sequence[ev.Attempt]) -> str:
    return " ".join(mine[-1].error.split()) if mine and mine[-1].error else ""


def _cut(text: str, room: int) -> str:
    """An error message cut to ``room`` columns (names are never cut; messages may be)."""
    return text if len(text) <= room else text[: max(room - 1, 0)] + "…"


def _wrap(text: str, columns: int, first: str, rest: str = "  ") -> list[str]:
    return textwrap.wrap(
        text,
        columns,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=True,
        break_on_hyphens=False,
    ) or [first]


def _ruler(ax: Axis, bars: int) -> str:
    """The start of each segment above the bars (``+0s``, ``+5m01s``), ``//`` at each break."""
    cells = [" "] * bars
    for left, right, _ in ax.breaks():
        for i in range(int(left), min(int(right), bars)):
            cells[i] = "/"
    for seg in ax.segments:
        label = offset(seg.start, 0.1 if seg.end - seg.start < 10 else 1.0)
        first, room = int(seg.left), int(seg.right) - int(seg.left)
        if len(label) <= room:
            cells[first : first + len(label)] = list(label)
    return " " + "".join(cells).rstrip()


def _cells(ax: Axis, bars: int, mine: Sequence[ev.Attempt], colour: bool, now: datetime) -> str:
    cells = [" "] * bars
    for left, right, _ in ax.breaks():
        for i in range(int(left), min(int(right), bars)):
            cells[i] = "/"
    for a in mine:
        seg = ax.segments[ax.segment(a.start)]
        edge = max(int(seg.right) - 1, int(seg.left))
        first = min(int(ax.at(a.start)), edge)
        end_seg = ax.segments[ax.segment(a.end or now)]
        last = min(int(ax.at(a.end or now)), max(int(end_seg.right) - 1, int(end_seg.left)))
        letter = LETTERS[a.operation]
        if a.result in UNSUCCESSFUL:
            letter = letter.lower()
        if a.result is ev.Result.RUNNING:
            letter = ">"
        for i in range(first, max(last, first) + 1):
            if cells[i] != "/":
                cells[i] = _paint(letter, a, colour)
    return "".join(cells)


def _paint(letter: str, attempt: ev.Attempt, colour: bool) -> str:
    if not colour:
        return letter
    code = {
        ev.Result.SUCCEEDED: "32",
        ev.Result.FAILED: "31",
        ev.Result.CANCELLED: "35",
        ev.Result.LOST: "35",
        ev.Result.RUNNING: "33",
    }[attempt.result]
    return f"\033[{code}m{letter}\033[0m"
