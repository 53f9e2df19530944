"""Context merge rules and the argument accessor."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dagtask import ContextError, TaskContext
from dagtask.context import (
    MAX_LIST_LENGTH,
    MAX_VALUE_LENGTH,
    StoredContexts,
    check_arguments,
    merge,
)

keys = st.text("abcdef", min_size=1, max_size=3)
values = st.text("xyz", max_size=3)


def test_disagreeing_strings_are_error_20002() -> None:
    with pytest.raises(ContextError, match=r"20002.*'k'"):
        merge([TaskContext(string_map={"k": "1"}), TaskContext(string_map={"k": "2"})])


def test_engine_keys_never_conflict_and_are_dropped() -> None:
    merged = merge(
        [
            TaskContext(string_map={"sub_task_instance_id": "1", "a": "x"}),
            TaskContext(string_map={"sub_task_instance_id": "2", "a": "x"}),
        ]
    )
    assert merged.string_map == {"a": "x"}


@given(st.lists(st.dictionaries(keys, st.lists(values, max_size=3), max_size=3), max_size=4))
def test_list_maps_are_unioned(list_maps: list[dict[str, list[str]]]) -> None:
    merged = merge(TaskContext(list_map=m) for m in list_maps)
    for m in list_maps:
        for key, items in m.items():
            assert set(items) <= set(merged.list_map[key])
    for key, items in merged.list_map.items():
        assert len(items) == len(set(items))
        assert set(items) == {i for m in list_maps for i in m.get(key, [])}


def test_accessor_reads_the_parallel_element_or_the_string() -> None:
    single = TaskContext(string_map={"host_id": "7"})
    assert single.get("host_id") == "7"
    copy = TaskContext(list_map={"host_ids": ["1", "2", "3"]}, parallel=True, parallel_idx=1)
    assert copy.get("host_id") == "2"
    with pytest.raises(ContextError, match="host_id"):
        TaskContext().get("host_id")
    with pytest.raises(ContextError, match="parallelIdx=5"):
        copy.model_copy(update={"parallel_idx": 5}).get("host_id")


def test_non_string_values_are_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        TaskContext.model_validate({"stringMap": {"n": 2}})


def test_json_round_trip_uses_ocp_keys() -> None:
    ctx = TaskContext(string_map={"a": "b"}, list_map={"l": ["1"]})
    data = ctx.to_json()
    assert data == {
        "stringMap": {"a": "b"},
        "listMap": {"l": ["1"]},
        "parallel": False,
        "parallelIdx": -1,
    }
    assert TaskContext.from_json(data) == ctx


def test_check_arguments_names_the_first_offender() -> None:
    check_arguments({"k": "v" * MAX_VALUE_LENGTH}, {"l": ["x"] * MAX_LIST_LENGTH})  # the bounds
    with pytest.raises(ContextError, match=r"^error 20002: listMap\['l'\]\[2\] 'a\\x00' contains"):
        check_arguments({}, {"l": ["ok", "ok", "a\x00"]})
    with pytest.raises(ContextError, match=r"stringMap\['k'\] 'vvvv.*\.\.\. has 65537 characters"):
        check_arguments({"k": "v" * (MAX_VALUE_LENGTH + 1)}, {})
    with pytest.raises(ContextError, match=r"listMap\['l'\]\[0\] must be a string, got int"):
        check_arguments({}, {"l": [1]})  # type: ignore[list-item]


@given(st.text(min_size=1, max_size=8), st.text(max_size=8), st.text(max_size=8))
def test_property_a_nul_in_a_key_or_value_is_refused(key: str, left: str, right: str) -> None:
    nul = f"{left}\x00{right}"
    for strings, lists in (({key: nul}, {}), ({nul: "v"}, {}), ({}, {key: [nul]}), ({}, {nul: []})):
        with pytest.raises(ContextError, match="NUL"):
            check_arguments(strings, lists)


def test_stored_contexts_read_back_whatever_a_handler_wrote() -> None:
    # The bounds are for a task's arguments; an output already stored must stay readable.
    big = TaskContext.from_json({"stringMap": {"k": "v" * (MAX_VALUE_LENGTH + 1)}})
    assert len(big.string_map["k"]) == MAX_VALUE_LENGTH + 1


_outputs = st.builds(
    TaskContext,
    string_map=st.dictionaries(
        st.sampled_from(["a", "b", "prohibit_rollback", "task_instance_id"]), values, max_size=3
    ),
    list_map=st.dictionaries(keys, st.lists(values, max_size=3), max_size=2),
)


@given(st.lists(_outputs, min_size=1, max_size=3), st.lists(st.integers(0, 2), max_size=6))
@example(  # listMap items keep their upstreams' order
    [TaskContext(list_map={"h": ["y"]}), TaskContext(list_map={"h": ["x"]})], [0, 1, 0]
)
@example(  # a conflict is raised every time
    [TaskContext(string_map={"a": "1"}), TaskContext(string_map={"a": "2"})], [1, 0]
)
def test_remembered_merges_equal_fresh_merges_whatever_repeats(
    distinct: list[TaskContext], picks: list[int]
) -> None:
    # A claim's upstream outputs as stored (JSON text), some repeated, in any order: the
    # remembered merge gives what merging them afresh gives, conflicts included, every time.
    texts = [json.dumps(distinct[i % len(distinct)].to_json()) for i in picks] or [
        json.dumps(distinct[0].to_json())
    ]
    memo = StoredContexts()
    for _ in range(2):  # the second round is answered from the tables
        try:
            expected: TaskContext | str = merge(TaskContext.from_stored(t) for t in texts)
        except ContextError as exc:
            expected = str(exc)
        try:
            got: TaskContext | str = memo.merge(texts)
        except ContextError as exc:
            got = str(exc)
        assert got == expected


def test_remembered_contexts_are_bounded() -> None:
    memo = StoredContexts()
    texts = [json.dumps({"stringMap": {"n": str(i)}}) for i in range(memo.MAX_ENTRIES + 10)]
    for text in texts:
        assert memo.parse(text).string_map["n"] == json.loads(text)["stringMap"]["n"]
    assert len(memo._parsed) <= memo.MAX_ENTRIES
    huge = json.dumps({"stringMap": {"k": "v" * memo.MAX_CHARS}})
    assert memo.parse(huge).string_map["k"] == "v" * memo.MAX_CHARS
    assert huge not in memo._parsed
