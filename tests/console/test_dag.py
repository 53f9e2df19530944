"""The console's DAG drawing (dagtask.console.dag): layout, fan-out groups, escaping."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagtask import Engine, TemplateBuilder
from dagtask.console import dag
from dagtask.context import TaskContext
from dagtask.models import SubtaskInfo, TaskInfo
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from tests.hypo import examples
from tests.strategies import dags

S = SubtaskStatus
SVG = "{http://www.w3.org/2000/svg}"
T0 = datetime(2024, 5, 1, 8, 0, 0)
HANDLER = "tests.handlers.record"


# ---- building tasks ----------------------------------------------------------------------------


def row(
    sid: int,
    name: str,
    *,
    status: SubtaskStatus = S.PENDING,
    ups: Sequence[int] = (),
    idx: int = -1,
    message: str | None = None,
) -> dict[str, Any]:
    """The fields of a subtask (``downstreams`` are filled in by :func:`make_task`)."""
    return {
        "id": sid,
        "task_id": 1,
        "name": name,
        "description": name,
        "class_name": HANDLER,
        "operation": Operation.EXECUTE,
        "status": status,
        "series_id": 0,
        "run_time": 1,
        "timeout": 0,
        "retry_count": 0,
        "parallel": idx >= 0,
        "parallel_idx": idx,
        "prohibit_rollback": False,
        "upstreams": list(ups),
        "downstreams": [],
        "executor": None if status is S.PENDING else "10.0.0.7:8080",
        "message": message,
        "create_time": T0,
    }


def make_task(rows: Sequence[dict[str, Any]]) -> TaskInfo:
    downs: dict[int, list[int]] = {r["id"]: [] for r in rows}
    for r in rows:
        for up in r["upstreams"]:
            downs[up].append(r["id"])
    return TaskInfo(
        id=1,
        name="Deploy",
        template_id=None,
        status=TaskStatus.RUNNING,
        operation=Operation.EXECUTE,
        creator="admin",
        executor="10.0.0.7:8080",
        context=TaskContext(),
        prohibit_rollback=False,
        concurrency=10,
        create_time=T0,
        subtasks=[SubtaskInfo(**{**r, "downstreams": downs[r["id"]]}) for r in rows],
    )


def fan_out_task(copies: int = 300) -> TaskInfo:
    """Prepare -> ``copies`` x Install (280 ok, 15 failed, 5 running of 300) -> Verify."""
    statuses = [S.SUCCESSFUL] * 280 + [S.FAILED] * 15 + [S.RUNNING] * 5
    rows = [row(1, "Prepare", status=S.SUCCESSFUL)]
    for i in range(copies):
        status = statuses[i % len(statuses)]
        message = f"host {i}: exit 1" if status is S.FAILED else None
        rows.append(row(10 + i, "Install", status=status, ups=[1], idx=i, message=message))
    rows.append(row(999, "Verify", ups=[10 + i for i in range(copies)]))
    return make_task(rows)


# ---- reading the drawing -----------------------------------------------------------------------


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def classes(el: ET.Element) -> list[str]:
    return el.get("class", "").split()


def node_elements(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if "node" in classes(g)]


def by_key(root: ET.Element) -> dict[str, ET.Element]:
    found = {g.get("data-key", ""): g for g in node_elements(root)}
    assert len(found) == len(node_elements(root))
    return found


def box(g: ET.Element) -> tuple[float, float, float, float]:
    """x, y, width, height of a node's box."""
    rect = next(r for r in g.iter(f"{SVG}rect") if "box" in classes(r))
    return tuple(float(rect.get(a, "nan")) for a in ("x", "y", "width", "height"))  # type: ignore[return-value]


def edge_elements(root: ET.Element) -> list[ET.Element]:
    return [p for p in root.iter(f"{SVG}path") if "edge" in classes(p)]


def segments(d: str) -> Iterator[list[tuple[float, float]]]:
    """The path's pieces as control-point lists: 2 points for a line, 4 for a cubic."""
    here = (0.0, 0.0)
    for cmd, args in re.findall(r"([MCL])([^MCL]*)", d):
        nums = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", args)]
        points = list(zip(nums[::2], nums[1::2], strict=True))
        if cmd != "M":
            yield [here, *points]
        here = points[-1]


def sample(points: list[tuple[float, float]], steps: int = 12) -> Iterator[tuple[float, float]]:
    for k in range(steps + 1):
        t = k / steps
        if len(points) == 2:
            (x0, y0), (x1, y1) = points
            yield x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
        else:
            weights = ((1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3)
            yield (
                sum(w * p[0] for w, p in zip(weights, points, strict=True)),
                sum(w * p[1] for w, p in zip(weights, points, strict=True)),
            )


def check_drawing(svg: str, expected_keys: list[str], expected_edges: set[tuple[str, str]]) -> None:
    """Every node once, every edge once from an earlier column to a later one, entering and
    leaving boxes at their sides, never through another box; no two boxes overlap."""
    root = parse(svg)
    drawn = [g.get("data-key") for g in node_elements(root)]
    assert sorted(drawn) == sorted(expected_keys)  # type: ignore[type-var]
    boxes = {key: box(g) for key, g in by_key(root).items()}
    ordered = sorted(boxes.values())
    for i, (x, y, w, h) in enumerate(ordered):
        for x2, y2, _, h2 in ordered[i + 1 :]:
            if x2 >= x + w:
                break
            assert y2 >= y + h or y >= y2 + h2, f"boxes at {(x, y)} and {(x2, y2)} overlap"
    edges = [(p.get("data-from", ""), p.get("data-to", "")) for p in edge_elements(root)]
    assert sorted(edges) == sorted(expected_edges)  # each edge exactly once
    columns: dict[float, list[tuple[float, float, float, float]]] = {}
    for b in boxes.values():
        columns.setdefault(b[0], []).append(b)
    for path in edge_elements(root):
        ux, uy, uw, uh = boxes[path.get("data-from", "")]
        vx, vy, _, vh = boxes[path.get("data-to", "")]
        assert ux + uw <= vx, "an edge goes right, to a later column"
        pieces = list(segments(path.get("d", "")))
        assert pieces[0][0] == (ux + uw, uy + uh // 2)  # the upstream's right side
        assert pieces[-1][-1] == (vx, vy + vh // 2)  # the downstream's left side
        for piece in pieces:
            for px, py in sample(piece):
                for left, stack in columns.items():
                    if left + 1 < px < left + dag.NODE_W - 1:
                        assert not any(y + 1 < py < y + h - 1 for _, y, _, h in stack), (
                            f"edge {path.get('data-from')} -> {path.get('data-to')} crosses "
                            f"a box at ({px:.0f}, {py:.0f})"
                        )


# ---- layout ------------------------------------------------------------------------------------


@settings(max_examples=examples(60))
@given(data=st.data())
def test_random_dags_draw_every_node_and_edge_once_without_overlaps(data: st.DataObject) -> None:
    graph = data.draw(dags(max_nodes=60))
    # A random subset of the links: sparse DAGs have wide columns, which wrap.
    links = sorted(graph.edges)
    kept = data.draw(st.sets(st.sampled_from(links))) if links else set()
    statuses = data.draw(st.lists(st.sampled_from(list(S)), min_size=len(graph.names)))
    labels = data.draw(st.lists(st.text(max_size=40), min_size=len(graph.names)))
    ids = {name: 100 + i for i, name in enumerate(graph.names)}
    rows = [
        row(
            ids[name],
            labels[i],
            status=statuses[i],
            ups=sorted(ids[u] for u, d in kept if d == name),
        )
        for i, name in enumerate(graph.names)
    ]
    svg = dag.render(dag.task_nodes(make_task(rows)), title="random")
    keys = [f"s{ids[name]}" for name in graph.names]
    check_drawing(svg, keys, {(f"s{ids[u]}", f"s{ids[d]}") for u, d in kept})


def test_columns_are_longest_paths_and_crossings_are_avoided() -> None:
    # b is listed before a, but b's child is drawn below a's: the children follow their parents.
    nodes = [
        dag.Node("a", "a", None, ()),
        dag.Node("b", "b", None, ()),
        dag.Node("child of b", "child of b", None, ("b",)),
        dag.Node("child of a", "child of a", None, ("a",)),
        dag.Node("end", "end", None, ("a", "child of b")),
    ]
    boxes = {k: box(g) for k, g in by_key(parse(dag.render(nodes))).items()}
    xs = sorted({b[0] for b in boxes.values()})
    assert [xs.index(boxes[k][0]) for k in ("a", "b", "child of a", "child of b", "end")] == [
        0,
        0,
        1,
        1,
        2,
    ]
    assert (boxes["a"][1] < boxes["b"][1]) == (boxes["child of a"][1] < boxes["child of b"][1])


def test_a_tall_column_wraps_and_the_svg_gives_its_size() -> None:
    nodes = [dag.Node("root", "root", None, ())]
    nodes += [dag.Node(f"n{i}", f"n{i}", "PENDING", ("root",)) for i in range(95)]
    nodes.append(dag.Node("end", "end", None, tuple(f"n{i}" for i in range(95))))
    svg = dag.render(nodes)
    root = parse(svg)
    width, height = int(root.get("width", "0")), int(root.get("height", "0"))
    assert root.get("viewBox") == f"0 0 {width} {height}"
    assert height <= 2 * dag.MARGIN + dag.MAX_ROWS * dag.PITCH
    boxes = [box(g) for g in node_elements(root)]
    assert max(x + w for x, _, w, _ in boxes) <= width
    assert max(y + h for _, y, _, h in boxes) <= height
    edges = {("root", f"n{i}") for i in range(95)} | {(f"n{i}", "end") for i in range(95)}
    check_drawing(svg, [n.key for n in nodes], edges)


def test_the_output_is_deterministic() -> None:
    task = fan_out_task(40)
    first = dag.render(dag.task_nodes(task, expand={"Install"}), title="t")
    assert dag.render(dag.task_nodes(task, expand={"Install"}), title="t") == first


def test_a_thousand_subtask_task_renders() -> None:
    rows = [row(1 + i, f"step {i}") for i in range(100)]
    for layer in range(1, 10):
        for i in range(100):
            sid = 1 + layer * 100 + i
            base = 1 + (layer - 1) * 100
            ups = sorted({base + i, base + (i * 7 + 3) % 100, base + (i * 13 + 5) % 100})
            rows.append(row(sid, f"step {layer}.{i}", ups=ups))
    root = parse(dag.render(dag.task_nodes(make_task(rows))))
    assert len(node_elements(root)) == 1000
    assert len(edge_elements(root)) == sum(len(r["upstreams"]) for r in rows)


def test_no_nodes_draw_an_empty_picture() -> None:
    root = parse(dag.render([]))
    assert node_elements(root) == []
    assert "no subtasks" in "".join(root.itertext())


def test_a_cycle_or_a_repeated_key_is_refused() -> None:
    with pytest.raises(ValueError, match="cycle"):
        dag.render([dag.Node("a", "a", None, ("b",)), dag.Node("b", "b", None, ("a",))])
    with pytest.raises(ValueError, match="share a key"):
        dag.render([dag.Node("a", "a", None, ()), dag.Node("a", "b", None, ())])


# ---- fan-out groups ----------------------------------------------------------------------------


def test_three_hundred_copies_collapse_into_one_group_node() -> None:
    nodes = dag.task_nodes(fan_out_task(), group_href=lambda name: f"?expand={name}")
    assert [n.key for n in nodes] == ["s1", "g:Install", "s999"]
    group = nodes[1]
    assert group.label == "Install \u00d7300"
    assert group.status == "FAILED"
    assert dict(group.counts) == {"SUCCESSFUL": 280, "FAILED": 15, "RUNNING": 5}
    assert group.upstreams == ("s1",)
    assert nodes[2].upstreams == ("g:Install",)
    svg = dag.render(nodes)
    check_drawing(svg, ["s1", "g:Install", "s999"], {("s1", "g:Install"), ("g:Install", "s999")})
    root = parse(svg)
    g = by_key(root)["g:Install"]
    assert g.get("data-group") == "Install"
    assert g.get("data-subtask-id") is None
    texts = ["".join(t.itertext()) for t in g.iter(f"{SVG}text")]
    assert texts == ["Install \u00d7300", "280 ok \u00b7 15 failed \u00b7 5 running"]
    bar = [c for r in g.iter(f"{SVG}rect") for c in classes(r) if c.startswith("bar-")]
    assert bar == ["bar-SUCCESSFUL", "bar-FAILED", "bar-RUNNING"]
    title = g.findtext(f"{SVG}title") or ""
    assert "300 copies" in title and "exit 1" in title
    link = next(a for a in root.iter(f"{SVG}a") if a.find(f"{SVG}g") is g)
    assert link.get("href") == "?expand=Install" and link.get("tabindex") == "0"


def test_an_expanded_fan_out_shows_every_copy() -> None:
    nodes = dag.task_nodes(fan_out_task(), expand={"Install"}, href=lambda s: f"/subtasks/{s.id}")
    copies = [n for n in nodes if n.label.startswith("Install [")]
    assert [n.label for n in copies] == [f"Install [{i}]" for i in range(300)]
    assert all(n.group is None and n.upstreams == ("s1",) for n in copies)
    svg = dag.render(nodes)
    keys = ["s1", "s999", *(f"s{10 + i}" for i in range(300))]
    edges = {("s1", f"s{10 + i}") for i in range(300)} | {
        (f"s{10 + i}", "s999") for i in range(300)
    }
    check_drawing(svg, keys, edges)
    root = parse(svg)
    assert int(root.get("height", "0")) <= 2 * dag.MARGIN + dag.MAX_ROWS * dag.PITCH
    assert {a.get("href") for a in root.iter(f"{SVG}a")} >= {"/subtasks/10", "/subtasks/309"}


@pytest.mark.parametrize(
    ("statuses", "shown"),
    [
        ([S.SUCCESSFUL, S.PENDING], "PENDING"),
        ([S.SUCCESSFUL, S.READY, S.PENDING], "READY"),
        ([S.READY, S.RUNNING, S.SUCCESSFUL], "RUNNING"),
        ([S.RUNNING, S.CANCELING], "CANCELING"),
        ([S.CANCELING, S.FAILED, S.SUCCESSFUL], "FAILED"),
        ([S.SUCCESSFUL, S.SUCCESSFUL], "SUCCESSFUL"),
    ],
)
def test_a_group_shows_its_most_urgent_status(statuses: list[SubtaskStatus], shown: str) -> None:
    rows = [row(1 + i, "Copy", status=status, idx=i) for i, status in enumerate(statuses)]
    (group,) = dag.task_nodes(make_task(rows))
    assert group.status == shown
    assert sum(group.counts.values()) == len(statuses)


def test_edges_map_through_groups() -> None:
    # fan-out A (3 copies) -> fan-out B (2 copies, every copy of A links every copy of B) -> end
    rows = [row(1, "start", status=S.SUCCESSFUL)]
    rows += [row(10 + i, "A", status=S.SUCCESSFUL, ups=[1], idx=i) for i in range(3)]
    rows += [row(20 + i, "B", ups=[10, 11, 12], idx=i) for i in range(2)]
    rows += [row(30, "end", ups=[20, 21, 1])]
    task = make_task(rows)
    nodes = dag.task_nodes(task)
    assert {n.key: n.upstreams for n in nodes} == {
        "s1": (),
        "g:A": ("s1",),
        "g:B": ("g:A",),
        "s30": ("g:B", "s1"),
    }
    edges = {("s1", "g:A"), ("g:A", "g:B"), ("g:B", "s30"), ("s1", "s30")}
    check_drawing(dag.render(nodes), ["s1", "g:A", "g:B", "s30"], edges)
    only_b = dag.task_nodes(task, expand={"B"})
    assert {n.key: n.upstreams for n in only_b}["s20"] == ("g:A",)
    assert {n.key: n.upstreams for n in only_b}["s30"] == ("s20", "s21", "s1")


def test_two_fan_outs_with_one_name_are_drawn_copy_by_copy() -> None:
    rows = [row(1 + i, "Wait node", idx=i) for i in range(2)]
    rows += [row(5, "middle", ups=[1, 2])]
    rows += [row(6 + i, "Wait node", ups=[5], idx=i) for i in range(2)]
    nodes = dag.task_nodes(make_task(rows))
    labels = ["Wait node [0]", "Wait node [1]", "middle", "Wait node [0]", "Wait node [1]"]
    assert [n.label for n in nodes] == labels
    parse(dag.render(nodes))


def test_a_serial_fan_out_from_the_engine_is_one_group(tmp_path: Path) -> None:
    t = TemplateBuilder("Rolling restart")
    first = t.add("Check", HANDLER)
    restart = t.add("Restart", HANDLER, after=[first], split_key="hosts", split_method="SERIAL")
    t.add("Done", HANDLER, after=[restart])
    with Engine(f"sqlite:///{tmp_path}/x.db", workers=0) as engine:
        task = engine.submit(t.build(), lists={"hosts": ["h1", "h2", "h3", "h4"]})
    nodes = dag.task_nodes(task)
    assert [(n.label, n.upstreams) for n in nodes] == [
        ("Check", ()),
        ("Restart \u00d74", (nodes[0].key,)),
        ("Done", ("g:Restart",)),
    ]
    expanded = dag.task_nodes(task, expand={"Restart"})
    copies = [n for n in expanded if n.label.startswith("Restart [")]
    assert [len(n.upstreams) for n in copies] == [1, 1, 1, 1]  # a chain: one link each
    parse(dag.render(expanded))


# ---- statuses, links, text ---------------------------------------------------------------------


def test_statuses_become_classes_and_pending_targets_get_light_edges() -> None:
    rows = [row(1 + i, status.value, status=status) for i, status in enumerate(S)]
    rows.append(row(50, "after running", ups=[1 + list(S).index(S.RUNNING)]))
    svg = dag.render(dag.task_nodes(make_task(rows)))
    root = parse(svg)
    for i, status in enumerate(S):
        g = by_key(root)[f"s{1 + i}"]
        assert f"st-{status.value}" in classes(g)
        assert g.get("data-status") == status.value
        assert f".st-{status.value}" in svg  # styled by the embedded sheet
    (edge,) = edge_elements(root)
    assert "to-pending" in classes(edge)
    assert ".st-none" in svg


def test_user_text_is_escaped() -> None:
    name = '<script>alert("x")</script> & co\x01'
    rows = [row(1, name, status=S.FAILED, message="<b>bad</b> & worse")]
    nodes = dag.task_nodes(make_task(rows), href=lambda s: f"/t?a=1&b={s.id}")
    svg = dag.render(nodes, title="<t>")
    assert "<script>" not in svg and "<b>" not in svg
    root = parse(svg)
    g = by_key(root)["s1"]
    title = g.findtext(f"{SVG}title") or ""
    assert title.startswith('<script>alert("x")</script> & co\ufffd\n')
    assert "<b>bad</b> & worse" in title
    assert next(root.iter(f"{SVG}a")).get("href") == "/t?a=1&b=1"
    assert root.findtext(f"{SVG}title") == "<t>"


def test_long_labels_are_cut_with_the_full_text_in_the_tooltip() -> None:
    long = "Upload the observer installation package to every host of the zone"
    root = parse(dag.render([dag.Node("k", long, "READY", (), subtask_id=7, detail="why")]))
    g = by_key(root)["k"]
    lines = ["".join(t.itertext()) for t in g.iter(f"{SVG}text")]
    assert len(lines) == 2 and lines[1].endswith("\u2026")
    assert long.startswith(lines[0])
    assert g.findtext(f"{SVG}title") == f"{long}\nwhy"
    assert g.get("data-subtask-id") == "7"
    assert g.get("data-group") is None


def test_template_nodes_mark_fan_out_specs() -> None:
    t = TemplateBuilder("Install agents")
    check = t.add("Check hosts", HANDLER, timeout=30)
    install = t.add("Install agent", HANDLER, after=[check], split_key="hosts", retry_count=2)
    t.add("Report", HANDLER, after=[check, install])
    nodes = dag.template_nodes(t.build())
    assert [(n.key, n.label, n.status, n.upstreams, n.group) for n in nodes] == [
        ("Check hosts", "Check hosts", None, (), None),
        (
            "Install agent",
            "Install agent (fan-out by hosts)",
            None,
            ("Check hosts",),
            "Install agent",
        ),
        ("Report", "Report", None, ("Check hosts", "Install agent"), None),
    ]
    assert "timeout 30s" in nodes[0].detail and "2 automatic retries" in nodes[1].detail
    root = parse(dag.render(nodes, title="Install agents"))
    assert all(
        "st-none" in classes(g) and g.get("data-status") is None for g in node_elements(root)
    )
    assert not list(root.iter(f"{SVG}a"))  # no links without href
