"""Engine.submit refuses what it cannot take as given, before anything is written.

Each refusal is asserted against the real store: the task, template and host-lock rows are
counted before and after, and must not change.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagtask import Engine, TemplateBuilder
from dagtask.builtin.templates import BATCH_STOP_OCP_AGENT, STOP_OCP_AGENT
from dagtask.context import MAX_KEY_LENGTH, MAX_LIST_LENGTH, MAX_VALUE_LENGTH
from dagtask.errors import (
    ArgumentError,
    ContextError,
    DagtaskError,
    HostBusyError,
    HostNotFoundError,
)
from dagtask.store import schema
from dagtask.template import MAX_DESCRIPTION, MAX_INT, TaskTemplate

NOOP = "dagtask.builtin.noop"
MAX_HOST_ID = 2**63 - 1
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def engine(sqlite_url: str, tmp_path: Path) -> Iterator[Engine]:
    """An engine without workers (tasks stay as submitted) and hosts 1 and 2."""
    with Engine(sqlite_url, workers=0) as eng:
        for i in (1, 2):
            eng.hosts.add(f"h{i}", "127.0.0.1", str(tmp_path / f"agent-{i}"))
        yield eng


def rows(engine: Engine) -> dict[str, int]:
    """How many rows the tables a submit writes hold."""
    tables = {
        "tasks": schema.task,
        "subtasks": schema.subtask,
        "templates": schema.task_template,
        "locks": schema.host_lock,
    }
    with engine.database.read() as conn:
        return {
            name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
            for name, t in tables.items()
        }


def refused(
    engine: Engine,
    error: type[DagtaskError] | tuple[type[DagtaskError], ...],
    match: str,
    **submit: Any,
) -> str:
    """Submit with ``submit``; assert it is refused with ``error`` and nothing is stored."""
    before = rows(engine)
    template = submit.pop("template", "plain")
    with pytest.raises(error, match=match) as info:
        engine.submit(template, **submit)
    assert rows(engine) == before, "a refused submit stored something"
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture
def plain(engine: Engine) -> TaskTemplate:
    """A template without hosts, registered as 'plain'."""
    t = TemplateBuilder("plain")
    t.add("a", NOOP)
    tpl = t.build()
    engine.register_template(tpl)
    return tpl


# ---- list arguments ------------------------------------------------------------------------------


def test_a_string_of_host_ids_is_not_split_into_hosts(engine: Engine) -> None:
    message = refused(
        engine,
        ArgumentError,
        "must be a list",
        template=BATCH_STOP_OCP_AGENT,
        lists={"host_ids": "12"},
    )
    assert "'host_ids'" in message and "str" in message


@pytest.mark.parametrize(
    "value",
    ["12", b"12", bytearray(b"12"), {"1": "2"}, {"1", "2"}, 12, None, 1.5, (x for x in "12")],
    ids=["str", "bytes", "bytearray", "dict", "set", "int", "None", "float", "generator"],
)
def test_anything_but_a_list_for_a_list_argument_is_refused(
    engine: Engine, plain: TaskTemplate, value: object
) -> None:
    refused(engine, ArgumentError, r"list argument 'xs' must be a list", lists={"xs": value})


@FUZZ
@given(
    st.one_of(
        st.text(),
        st.binary(),
        st.integers(),
        st.floats(),
        st.booleans(),
        st.none(),
        st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
        st.frozensets(st.text(max_size=3)),
    )
)
def test_property_any_non_list_for_a_list_argument_is_refused(
    engine: Engine, plain: TaskTemplate, value: object
) -> None:
    refused(engine, ArgumentError, "must be a list", lists={"host_ids": value})


def test_lists_and_tuples_of_strings_and_ints_are_taken(
    engine: Engine, plain: TaskTemplate
) -> None:
    # Typed as Any: the signature asks for strings; ints are a documented runtime conversion.
    lists: dict[str, Any] = {"a": ["x", "y"], "b": (1, 2), "c": range(2)}
    task = engine.submit("plain", lists=lists)
    assert task.context.list_map == {"a": ["x", "y"], "b": ["1", "2"], "c": ["0", "1"]}


@pytest.mark.parametrize(
    ("item", "hint"),
    [
        (True, "'true' or 'false'"),
        (None, "NoneType"),
        (1.0, "float"),
        (b"1", "bytes"),
        ([1], "list"),
    ],
)
def test_a_list_item_that_is_not_a_string_is_refused(
    engine: Engine, plain: TaskTemplate, item: object, hint: str
) -> None:
    message = refused(
        engine, ArgumentError, r"list argument 'xs' item 1", lists={"xs": ["a", item]}
    )
    assert hint in message


# ---- string arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (True, "'true' or 'false'"),
        (False, "'true' or 'false'"),
        (None, "NoneType"),
        (2.5, "float"),
        (b"x", "bytes"),
        (["x"], "list"),
        ({"x": "y"}, "dict"),
    ],
)
def test_a_string_argument_that_is_not_a_string_is_refused(
    engine: Engine, plain: TaskTemplate, value: object, hint: str
) -> None:
    message = refused(
        engine, ArgumentError, r"argument 'flag' must be a string", args={"flag": value}
    )
    assert hint in message


def test_an_int_argument_becomes_its_decimal_string(engine: Engine, plain: TaskTemplate) -> None:
    args: dict[str, Any] = {"n": 42, "big": 2**70, "s": "text"}
    task = engine.submit("plain", args=args)
    assert task.context.string_map["n"] == "42"
    assert task.context.string_map["big"] == str(2**70)
    assert task.context.string_map["s"] == "text"


@pytest.mark.parametrize("bad", [{1: "x"}, {None: "x"}, {b"k": "x"}])
def test_argument_names_must_be_strings(
    engine: Engine, plain: TaskTemplate, bad: dict[object, str]
) -> None:
    refused(engine, ArgumentError, "every key of args must be a string", args=bad)
    refused(
        engine,
        ArgumentError,
        "every key of lists must be a string",
        lists={k: [v] for k, v in bad.items()},
    )


@pytest.mark.parametrize("bad", [[("a", "b")], "a=b", 5])
def test_args_must_be_a_mapping(engine: Engine, plain: TaskTemplate, bad: object) -> None:
    refused(engine, ArgumentError, "args must be a mapping", args=bad)
    refused(engine, ArgumentError, "lists must be a mapping", lists=bad)


@pytest.mark.parametrize("creator", ["", "x" * 129, "a\x00b", 5])
def test_a_creator_the_task_row_cannot_hold_is_refused(
    engine: Engine, plain: TaskTemplate, creator: object
) -> None:
    refused(engine, ArgumentError, "creator must be a name of 1 to 128", creator=creator)


def test_a_creator_of_128_characters_is_stored(engine: Engine, plain: TaskTemplate) -> None:
    assert engine.submit("plain", creator="c" * 128).creator == "c" * 128


# ---- the context's bounds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("submit", "fragment"),
    [
        ({"args": {"k": "a\x00b"}}, r"stringMap\['k'\] 'a\\x00b' contains a NUL"),
        ({"args": {"k\x00": "v"}}, "stringMap key 'k\\\\x00' contains a NUL"),
        ({"lists": {"k": ["ok", "\x00"]}}, r"listMap\['k'\]\[1\] .* contains a NUL"),
        ({"args": {"": "v"}}, "stringMap key is empty"),
        ({"args": {"k" * (MAX_KEY_LENGTH + 1): "v"}}, "at most 256 are allowed"),
        ({"args": {"k": "v" * (MAX_VALUE_LENGTH + 1)}}, "at most 65536 are allowed"),
        ({"lists": {"k": ["1"] * (MAX_LIST_LENGTH + 1)}}, "at most 10000 are allowed"),
        ({"args": {f"k{i}": "v" * 60_000 for i in range(20)}}, "at most 1048576 are allowed"),
    ],
)
def test_arguments_the_store_cannot_hold_are_error_20002(
    engine: Engine, plain: TaskTemplate, submit: dict[str, Any], fragment: str
) -> None:
    message = refused(engine, ContextError, fragment, **submit)
    assert message.startswith("error 20002: ")


@FUZZ
@given(st.text(max_size=20), st.text(max_size=20))
def test_property_a_nul_anywhere_in_the_arguments_is_refused(
    engine: Engine, plain: TaskTemplate, left: str, right: str
) -> None:
    value = f"{left}\x00{right}"
    refused(engine, ContextError, "NUL", args={"k": value})
    refused(engine, ContextError, "NUL", lists={"k": [value]})


def test_arguments_at_the_bounds_are_stored(engine: Engine, plain: TaskTemplate) -> None:
    key = "k" * MAX_KEY_LENGTH
    task = engine.submit("plain", args={key: "v" * MAX_VALUE_LENGTH}, lists={"l": ["x"] * 100})
    assert engine.get(task.id).context.string_map[key] == "v" * MAX_VALUE_LENGTH


# ---- host ids ------------------------------------------------------------------------------------


def test_a_host_id_past_64_bits_is_out_of_range(engine: Engine) -> None:
    message = refused(
        engine, ArgumentError, "out of range", template=STOP_OCP_AGENT, args={"host_id": "9" * 20}
    )
    assert message == (
        "host_id '99999999999999999999' is out of range: "
        "give a host id between 1 and 9223372036854775807"
    )


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("0", "out of range"),
        ("00", "out of range"),
        (str(2**63), "out of range"),
        ("1" * 5000, "out of range"),  # more digits than int() takes
        ("01", "leading zeros: give it as 1"),
        ("-1", "is not a host id"),
        ("+1", "is not a host id"),
        (" 1", "is not a host id"),
        ("1 ", "is not a host id"),
        ("1_0", "is not a host id"),
        ("1.0", "is not a host id"),
        ("0x1", "is not a host id"),
        ("\u0661", "is not a host id"),  # ARABIC-INDIC DIGIT ONE: int() would take it
        ("", "is not a host id"),
        ("one", "is not a host id"),
    ],
)
def test_a_host_id_must_be_canonical_decimal_digits(
    engine: Engine, raw: str, fragment: str
) -> None:
    refused(engine, ArgumentError, fragment, template=STOP_OCP_AGENT, args={"host_id": raw})
    refused(
        engine,
        ArgumentError,
        rf"host_ids\[1\] .*{fragment}",
        template=BATCH_STOP_OCP_AGENT,
        lists={"host_ids": ["1", raw]},
    )


@FUZZ
@given(
    st.text(max_size=25).filter(
        lambda s: not (s.isascii() and s.isdigit() and s[0] != "0" and int(s) <= MAX_HOST_ID)
    )
)
def test_property_anything_but_a_host_id_is_refused_before_the_lookup(
    engine: Engine, raw: str
) -> None:
    # Not HostNotFoundError: the text is refused before the inventory is asked (a NUL already
    # as context error 20002).
    refused(
        engine,
        (ArgumentError, ContextError),
        "host_id",
        template=STOP_OCP_AGENT,
        args={"host_id": raw},
    )


def test_host_ids_as_ints_are_taken(engine: Engine) -> None:
    ids: list[Any] = [1, 2]
    task = engine.submit(BATCH_STOP_OCP_AGENT, lists={"host_ids": ids})
    assert task.context.list_map["host_ids"] == ["1", "2"]


def test_a_host_named_twice_is_refused(engine: Engine) -> None:
    refused(
        engine,
        ArgumentError,
        "names host 1 more than once",
        template=BATCH_STOP_OCP_AGENT,
        lists={"host_ids": ["1", "2", 1]},
    )


def test_the_largest_host_id_is_looked_up_on_every_backend(db_url: str) -> None:
    # 2**63 - 1 passes the range check and reaches the BIGINT columns' queries without an error.
    with Engine(db_url, workers=0) as engine:
        refused(
            engine,
            HostNotFoundError,
            f"host {MAX_HOST_ID} does not exist",
            template=STOP_OCP_AGENT,
            args={"host_id": str(MAX_HOST_ID)},
        )
        refused(
            engine,
            HostNotFoundError,
            f"hosts {MAX_HOST_ID} do not exist",
            template=BATCH_STOP_OCP_AGENT,
            lists={"host_ids": [MAX_HOST_ID]},
        )


def test_a_custom_host_arg_is_checked_too(engine: Engine) -> None:
    t = TemplateBuilder("on a node", host_arg="node")
    t.add("a", NOOP)
    refused(
        engine,
        ArgumentError,
        "node '1e3' is not a host id",
        template=t.build(),
        args={"node": "1e3"},
    )


# ---- templates: the bounds match the columns; a refusal stores no template ----------------------


def test_a_template_at_the_column_bounds_is_stored_on_every_backend(db_url: str) -> None:
    t = TemplateBuilder("b" * 256, concurrency=MAX_INT, description="d" * MAX_DESCRIPTION)
    t.add("s" * 256, NOOP, timeout=MAX_INT, retry_count=MAX_INT, description="x" * MAX_DESCRIPTION)
    with Engine(db_url, workers=0) as engine:
        task = engine.get(engine.submit(t.build()).id)
    sub = task.subtasks[0]
    assert (sub.timeout, sub.retry_count, task.concurrency) == (MAX_INT, MAX_INT, MAX_INT)
    assert sub.description == "x" * MAX_DESCRIPTION and task.name == "b" * 256


def test_a_busy_host_leaves_no_template_row(db_url: str, tmp_path: Path) -> None:
    with Engine(db_url, workers=0) as engine:
        host = engine.hosts.add("busy", "127.0.0.1", str(tmp_path / "agent"))
        engine.submit(STOP_OCP_AGENT, args={"host_id": str(host.id)})
        fresh = TemplateBuilder("never stored", host_arg="host_id")
        fresh.add("a", NOOP)
        refused(
            engine,
            HostBusyError,
            f"host {host.id} already has a running host operation",
            template=fresh.build(),
            args={"host_id": str(host.id)},
        )
        assert "never stored" not in [t.name for t in engine.templates()]
