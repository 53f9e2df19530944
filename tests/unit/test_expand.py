"""Expansion of templates into subtask instances (seriesId, links, fan-out)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagtask import ArgumentError, TaskContext, TaskTemplate
from dagtask.builtin import stop_ocp_agent
from dagtask.expand import expand, task_context
from tests.strategies import Dag, dags


def test_stop_ocp_agent_series_ids_follow_the_golden_sample() -> None:
    tpl = stop_ocp_agent()
    expanded = expand(tpl, task_context(tpl, {"host_id": "2"}))
    series = {s.spec.name: s.series_id for s in expanded.subtasks}
    assert series == {
        "Prepare stop OCP agent": 2,
        "Stop all OCP agent processes": 1,
        "Finish OCP agent operation": 0,
    }
    assert expanded.context.string_map == {"prohibit_rollback": "false", "host_id": "2"}


@given(dags())
def test_series_ids_are_a_reverse_topological_permutation(dag: Dag) -> None:
    expanded = expand(dag.template(), TaskContext())
    ids = sorted(s.series_id for s in expanded.subtasks)
    assert ids == list(range(len(dag.names)))
    for up, down in expanded.edges:
        assert expanded.subtasks[up].series_id > expanded.subtasks[down].series_id


def fan_template(method: str) -> TaskTemplate:
    return TaskTemplate.parse(
        {
            "name": "fan",
            "subtasks": [
                {"name": "first", "handler": "dagtask.builtin.noop"},
                {
                    "name": "each",
                    "handler": "dagtask.builtin.noop",
                    "split_key": "host_ids",
                    "split_method": method,
                    "upstreams": ["first"],
                },
                {"name": "last", "handler": "dagtask.builtin.noop", "upstreams": ["each"]},
            ],
        }
    )


@given(st.integers(1, 12))
def test_parallel_fan_out_links_every_copy_to_every_neighbour(n: int) -> None:
    ctx = TaskContext(list_map={"host_ids": [str(i) for i in range(n)]})
    expanded = expand(fan_template("PARALLEL"), ctx)
    copies = [s for s in expanded.subtasks if s.spec.name == "each"]
    assert [c.parallel_idx for c in copies] == list(range(n))
    assert all(c.parallel for c in copies)
    first = next(s.index for s in expanded.subtasks if s.spec.name == "first")
    last = next(s for s in expanded.subtasks if s.spec.name == "last")
    assert all(c.upstreams == [first] for c in copies)
    assert sorted(last.upstreams) == sorted(c.index for c in copies)


@given(st.integers(1, 12))
def test_serial_fan_out_is_a_chain(n: int) -> None:
    ctx = TaskContext(list_map={"host_ids": [str(i) for i in range(n)]})
    expanded = expand(fan_template("SERIAL"), ctx)
    copies = [s for s in expanded.subtasks if s.spec.name == "each"]
    first = next(s.index for s in expanded.subtasks if s.spec.name == "first")
    last = next(s for s in expanded.subtasks if s.spec.name == "last")
    assert copies[0].upstreams == [first]
    for prev, cur in itertools.pairwise(copies):
        assert cur.upstreams == [prev.index]
    assert last.upstreams == [copies[-1].index]


@pytest.mark.parametrize("lists", [{}, {"host_ids": []}])
def test_empty_or_missing_fan_out_list_is_refused(lists: dict[str, list[str]]) -> None:
    with pytest.raises(ArgumentError, match="host_ids"):
        expand(fan_template("PARALLEL"), TaskContext(list_map=lists))


def test_the_templates_prohibit_rollback_is_written_after_the_callers() -> None:
    """OCP writes the template's flag after the caller's arguments: a template that prohibits
    rollback cannot be overridden; a caller may prohibit it on a template that allows it."""
    prohibits = TaskTemplate.parse(
        {"name": "p", "prohibit_rollback": True, "subtasks": [{"name": "a", "handler": "x.y"}]}
    )
    allows = TaskTemplate.parse({"name": "q", "subtasks": [{"name": "a", "handler": "x.y"}]})
    assert task_context(prohibits).string_map["prohibit_rollback"] == "true"
    assert task_context(prohibits, {"prohibit_rollback": "false"}).prohibit_rollback is True
    assert task_context(allows).string_map["prohibit_rollback"] == "false"
    assert task_context(allows, {"prohibit_rollback": "true"}).prohibit_rollback is True
    ctx = task_context(allows, {"host_id": "2", "prohibit_rollback": "false"})
    assert list(ctx.string_map) == ["prohibit_rollback", "host_id"]  # OCP's order
