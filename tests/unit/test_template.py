"""Template validation, the builder and template files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dagtask import (
    CycleError,
    HandlerImportError,
    TaskTemplate,
    TemplateBuilder,
    TemplateError,
    graph,
    load_template,
)
from dagtask.template import MAX_DESCRIPTION, MAX_INT, SubtaskSpec
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


# ---- unknown keys, types and the bounds the tables set -------------------------------------------


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("upstream", "upstreams"),
        ("timout", "timeout"),
        ("retyr_count", "retry_count"),
        ("on_worker_loss", "on_worker_lost"),
        ("splitkey", "split_key"),
        ("displayname", "display_name"),
    ],
)
def test_a_misspelled_subtask_key_is_refused_with_a_suggestion(typo: str, meant: str) -> None:
    with pytest.raises(TemplateError) as info:
        TaskTemplate.parse({"name": "t", "subtasks": [spec("a", **{typo: 1})]})
    message = str(info.value)
    assert f"subtasks.0: unknown key {typo!r}; did you mean {meant!r}?" in message
    assert "\n" not in message


def test_a_misspelled_template_key_is_refused_with_a_suggestion() -> None:
    with pytest.raises(
        TemplateError, match=r"unknown key 'concurency'; did you mean 'concurrency'"
    ):
        TaskTemplate.parse({"name": "t", "concurency": 2, "subtasks": [spec("a")]})
    with pytest.raises(TemplateError, match=r"unknown key 'zzz'; known keys: name, subtasks"):
        TaskTemplate.parse({"name": "t", "zzz": 2, "subtasks": [spec("a")]})


def test_a_misspelled_key_in_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "t.yaml"
    file.write_text(
        "name: t\nsubtasks:\n  - name: a\n    handler: dagtask.builtin.noop\n    upstream: []\n"
    )
    with pytest.raises(TemplateError, match=r"t\.yaml.*did you mean 'upstreams'"):
        load_template(file)


def test_the_builder_refuses_unknown_keyword_arguments() -> None:
    t = TemplateBuilder("t")
    t.add("a", NOOP, timout=5)
    with pytest.raises(TemplateError, match="did you mean 'timeout'"):
        t.build()


SUBTASK_KEYS = sorted(SubtaskSpec.model_fields)
TEMPLATE_KEYS = sorted(TaskTemplate.model_fields)


@given(
    st.sampled_from(SUBTASK_KEYS + TEMPLATE_KEYS),
    st.integers(min_value=0, max_value=30),
    st.sampled_from("abcdefghijklmnopqrstuvwxyz_"),
    st.sampled_from(["insert", "delete", "replace", "swap"]),
)
def test_property_any_misspelled_key_is_refused_naming_it(
    key: str, where: int, letter: str, edit: str
) -> None:
    i = where % len(key)
    typo = {
        "insert": key[:i] + letter + key[i:],
        "delete": key[:i] + key[i + 1 :],
        "replace": key[:i] + letter + key[i + 1 :],
        "swap": key[:i] + key[i + 1 : i + 2] + key[i : i + 1] + key[i + 2 :],
    }[edit]
    in_subtask = key in SUBTASK_KEYS and key not in TEMPLATE_KEYS
    known = SUBTASK_KEYS if in_subtask else TEMPLATE_KEYS
    assume(typo and typo not in known)
    sub = spec("a", **({typo: 1} if in_subtask else {}))
    document = {"name": "t", "subtasks": [sub], **({} if in_subtask else {typo: 1})}
    with pytest.raises(TemplateError) as info:
        TaskTemplate.parse(document)
    assert f"unknown key {typo!r}" in str(info.value)


def test_stored_definitions_with_keys_of_old_versions_still_read() -> None:
    old = {"name": "t", "owner": "ops", "subtasks": [spec("a", colour="red")]}
    assert TaskTemplate.from_definition(old).subtasks[0].name == "a"
    with pytest.raises(TemplateError, match="timeout"):
        TaskTemplate.from_definition({"name": "t", "subtasks": [spec("a", timeout=-1)]})


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"timeout": MAX_INT + 1}, "timeout: Input should be less than or equal to 2147483647"),
        ({"retry_count": 2**40}, "retry_count: Input should be less than or equal to 2147483647"),
        (
            {"description": "d" * (MAX_DESCRIPTION + 1)},
            "description: String should have at most 1024",
        ),
        ({"name": "n" * 257}, "name: String should have at most 256"),
        ({"display_name": "n" * 257}, "display_name: String should have at most 256"),
        ({"display_name": ""}, "display_name: String should have at least 1"),
        ({"handler": "h" * 513}, "handler: String should have at most 512"),
        ({"split_key": "k" * 257}, "split_key: String should have at most 256"),
        ({"timeout": True}, "timeout: Input should be a valid integer, got true"),
        ({"timeout": "60"}, 'timeout: Input should be a valid integer, got "60"'),
        ({"timeout": 1.5}, "timeout: Input should be a valid integer, got 1.5"),
        (
            {"prohibit_rollback": "yes"},
            'prohibit_rollback: Input should be a valid boolean, got "yes"',
        ),
        ({"prohibit_rollback": 1}, "prohibit_rollback: Input should be a valid boolean, got 1"),
        ({"upstreams": [1]}, "upstreams.0: Input should be a valid string, got 1"),
        ({"split_method": "parallel"}, "split_method"),
    ],
)
def test_subtask_values_the_tables_cannot_hold_are_refused(
    change: dict[str, object], fragment: str
) -> None:
    with pytest.raises(TemplateError) as info:
        TaskTemplate.parse({"name": "t", "subtasks": [{**spec("a"), **change}]})
    message = str(info.value)
    assert f"subtasks.0.{fragment}" in message, message
    assert "Tuple should have at least 1 item" not in message  # no noise about the tuple


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"concurrency": MAX_INT + 1}, "concurrency: Input should be less than or equal to"),
        ({"concurrency": 0}, "concurrency: Input should be greater than or equal to 1"),
        ({"concurrency": False}, "concurrency: Input should be a valid integer, got false"),
        ({"name": "n" * 257}, "name: String should have at most 256"),
        ({"name": ""}, "name: String should have at least 1"),
        ({"description": "d" * 1025}, "description: String should have at most 1024"),
        ({"host_arg": ""}, "host_arg: String should have at least 1"),
        ({"host_list_arg": "k" * 257}, "host_list_arg: String should have at most 256"),
        ({"prohibit_rollback": "true"}, "prohibit_rollback: Input should be a valid boolean"),
    ],
)
def test_template_values_the_tables_cannot_hold_are_refused(
    change: dict[str, object], fragment: str
) -> None:
    with pytest.raises(TemplateError, match=re.escape(fragment)):
        TaskTemplate.parse({"name": "t", "subtasks": [spec("a")], **change})


@pytest.mark.parametrize(
    "path",
    [
        ("name",),
        ("description",),
        ("host_arg",),
        ("host_list_arg",),
        ("subtasks", "name"),
        ("subtasks", "handler"),
        ("subtasks", "display_name"),
        ("subtasks", "description"),
        ("subtasks", "split_key"),
        ("subtasks", "upstreams"),
    ],
)
def test_a_nul_in_any_string_is_refused(path: tuple[str, ...]) -> None:
    first: dict[str, object] = spec("a")
    document: dict[str, object] = {"name": "t", "subtasks": [first, spec("b\x00", "a")]}
    if path[0] == "subtasks":
        if path[1] == "upstreams":
            document["subtasks"] = [first, spec("b", "a\x00")]
        else:
            first[path[1]] = "x\x00y"
            document["subtasks"] = [first]
    else:
        document[path[0]] = "x\x00y"
        document["subtasks"] = [first]
    with pytest.raises(TemplateError, match=r"contains a NUL character \(\\x00\)"):
        TaskTemplate.parse(document)


def test_the_column_bounds_themselves_are_accepted() -> None:
    tpl = TaskTemplate.parse(
        {
            "name": "n" * 256,
            "concurrency": MAX_INT,
            "description": "d" * MAX_DESCRIPTION,
            "subtasks": [
                {
                    "name": "s" * 256,
                    "handler": "h" * 512,
                    "timeout": MAX_INT,
                    "retry_count": MAX_INT,
                    "description": "x" * MAX_DESCRIPTION,
                }
            ],
        }
    )
    assert tpl.subtasks[0].timeout == MAX_INT and tpl.concurrency == MAX_INT


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(TemplateError, match="it is a list"):
        TaskTemplate.parse([1, 2])  # type: ignore[arg-type]
