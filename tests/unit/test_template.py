"""Template validation, the builder and template files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

from dagtask import (
    CycleError,
    HandlerImportError,
    TaskTemplate,
    TemplateBuilder,
    TemplateError,
    graph,
    load_template,
)
from tests.strategies import Dag, cyclic_graphs, dags

NOOP = "dagtask.builtin.noop"


def spec(name: str, *ups: str, **extra: object) -> dict[str, object]:
    return {"name": name, "handler": NOOP, "upstreams": list(ups), **extra}


def test_builder_makes_a_valid_template() -> None:
    t = TemplateBuilder("Stop it", concurrency=3, prohibit_rollback=True)
    first = t.add("Prepare", NOOP, timeout=60)
    t.add("Act", NOOP, after=[first], retry_count=2, description="Do it")
    tpl = t.build()
    assert [s.name for s in tpl.subtasks] == ["Prepare", "Act"]
    assert tpl.subtasks[1].upstreams == ("Prepare",)
    assert tpl.subtasks[0].description == "Prepare"  # defaults to the name
    assert tpl.concurrency == 3 and tpl.prohibit_rollback


def test_builder_accepts_handler_objects() -> None:
    from dagtask.builtin import noop

    t = TemplateBuilder("x")
    t.add("a", noop)
    assert t.build().subtasks[0].handler == NOOP


def test_cycle_is_error_20001_naming_the_nodes() -> None:
    with pytest.raises(CycleError) as info:
        TaskTemplate.parse(
            {"name": "c", "subtasks": [spec("a", "c"), spec("b", "a"), spec("c", "b")]}
        )
    assert info.value.code == 20001
    assert set(info.value.cycle) == {"a", "b", "c"}
    assert "a" in str(info.value) and "20001" in str(info.value)


@given(cyclic_graphs())
def test_every_graph_with_a_cycle_is_refused(
    graph_: tuple[list[str], list[tuple[str, str]]],
) -> None:
    names, edges = graph_
    subtasks = [spec(n, *[u for u, d in edges if d == n]) for n in names]
    with pytest.raises(CycleError) as info:
        TaskTemplate.parse({"name": "cyclic", "subtasks": subtasks})
    # The named nodes really form a cycle of the graph.
    cycle = info.value.cycle
    edge_set = set(edges)
    assert all((cycle[i], cycle[(i + 1) % len(cycle)]) in edge_set for i in range(len(cycle)))


@given(dags())
def test_every_dag_is_accepted(dag: Dag) -> None:
    tpl = dag.template()
    assert len(tpl.subtasks) == len(dag.names)
    order = graph.topological_order(list(dag.names), sorted(dag.edges))
    position = {n: i for i, n in enumerate(order)}
    assert all(position[u] < position[d] for u, d in dag.edges)


@pytest.mark.parametrize(
    ("subtasks", "fragment"),
    [
        ([spec("a", "ghost")], "unknown upstream 'ghost'"),
        ([spec("a"), spec("a")], "two subtasks are named 'a'"),
        ([spec("a", "a")], "lists itself as upstream"),
        ([spec("a", timeout=-1)], "timeout"),
        ([spec("a", retry_count=-2)], "retry_count"),
        ([], "subtasks"),
    ],
)
def test_bad_templates_are_refused_clearly(subtasks: list[object], fragment: str) -> None:
    with pytest.raises(TemplateError, match=fragment):
        TaskTemplate.parse({"name": "bad", "subtasks": subtasks})


def test_handler_that_does_not_import_is_refused() -> None:
    tpl = TaskTemplate.parse({"name": "h", "subtasks": [{"name": "a", "handler": "nope.mod.X"}]})
    with pytest.raises(HandlerImportError, match=r"'nope\.mod\.X' does not import"):
        tpl.check_handlers()
    tpl = TaskTemplate.parse(
        {"name": "h", "subtasks": [{"name": "a", "handler": "dagtask.builtin.missing"}]}
    )
    with pytest.raises(HandlerImportError, match="has no attribute 'missing'"):
        tpl.check_handlers()


def test_yaml_file_in_the_spec_shape(tmp_path: Path) -> None:
    file = tmp_path / "t.yaml"
    file.write_text(
        """
name: Restart web tier
prohibit_rollback: false
concurrency: 10
subtasks:
  - name: Prepare restart
    handler: dagtask.builtin.noop
    description: Prepare restart
    timeout: 60
    retry_count: 0
    prohibit_rollback: false
    upstreams: []
  - name: Restart nodes
    handler: dagtask.builtin.noop
    split_key: node_ids
    split_method: PARALLEL
    upstreams: [Prepare restart]
"""
    )
    tpl = load_template(file)
    assert tpl.name == "Restart web tier"
    assert tpl.subtasks[1].split_key == "node_ids"
    assert tpl.subtasks[0].timeout == 60


def test_json_file_and_file_errors(tmp_path: Path) -> None:
    good = tmp_path / "t.json"
    good.write_text('{"name": "j", "subtasks": [{"name": "a", "handler": "dagtask.builtin.noop"}]}')
    assert load_template(good).name == "j"
    broken = tmp_path / "b.yaml"
    broken.write_text("name: [unclosed")
    with pytest.raises(TemplateError, match="not valid YAML/JSON"):
        load_template(broken)
    with pytest.raises(TemplateError, match="cannot read template file"):
        load_template(tmp_path / "missing.yaml")
    listy = tmp_path / "l.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(TemplateError, match="must hold a mapping"):
        load_template(listy)


def test_digest_changes_with_the_definition() -> None:
    a = TaskTemplate.parse({"name": "d", "subtasks": [spec("a")]})
    b = TaskTemplate.parse({"name": "d", "subtasks": [spec("a", timeout=5)]})
    assert a.digest() == TaskTemplate.parse(a.definition()).digest()
    assert a.digest() != b.digest()
