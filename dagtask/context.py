"""The task context (docs/templates.md): ``stringMap``, ``listMap``, ``parallel``, ``parallelIdx``.

A root subtask's input is the task's context. A non-root subtask's input is the merge of its
upstreams' output contexts (:func:`merge`): stringMap values that disagree are error 20002, except
the engine-owned keys, which the engine rewrites for every attempt; listMaps are unioned.

A task's arguments are bounded when it is submitted (:func:`check_arguments`): keys of 1 to
:data:`MAX_KEY_LENGTH` characters, values of at most :data:`MAX_VALUE_LENGTH`, lists of at most
:data:`MAX_LIST_LENGTH` items, :data:`MAX_CONTEXT_CHARS` characters in all, and no NUL character
anywhere (PostgreSQL cannot store one). The model itself does not enforce the bounds, because it
also reads back what handlers wrote.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dagtask.errors import ContextError

ENGINE_KEYS = frozenset(
    {"task_instance_id", "sub_task_instance_id", "task_operation", "latest_execution_start_time"}
)
"""stringMap keys the engine writes into the context a handler sees (docs/templates.md)."""

PROHIBIT_ROLLBACK = "prohibit_rollback"

MAX_KEY_LENGTH = 256
"""Characters of a stringMap or listMap key (as long as a template's key names may be)."""
MAX_VALUE_LENGTH = 65_536
"""Characters of one stringMap value or listMap item: arguments are ids, names and paths, not
documents (pass a file's path rather than its content)."""
MAX_LIST_LENGTH = 10_000
"""Items of one listMap list (a fan-out over it makes one subtask per item)."""
MAX_CONTEXT_CHARS = 1_048_576
"""Characters of all keys and values of a task's arguments together (one JSON column holds them;
MariaDB's default packet limit must not be what refuses a task)."""


def check_arguments(strings: Mapping[str, str], lists: Mapping[str, Sequence[str]]) -> None:
    """Refuse arguments a task cannot be stored with (:class:`ContextError`, 20002).

    ``strings`` and ``lists`` hold only ``str`` (the engine has converted them): this checks
    NUL characters and the bounds in the module's docstring, and names the first offender.
    """
    total = 0
    for map_name, entries in (("stringMap", strings), ("listMap", lists)):
        for key, value in entries.items():
            _check_text(f"a {map_name} key", key, MAX_KEY_LENGTH)
            if len(key) == 0:
                raise ContextError(
                    f"error 20002: a {map_name} key is empty; give every argument a name"
                )
            items = [value] if isinstance(value, str) else list(value)
            if not isinstance(value, str) and len(items) > MAX_LIST_LENGTH:
                raise ContextError(
                    f"error 20002: listMap[{_shown(key)}] has {len(items)} items; at most "
                    f"{MAX_LIST_LENGTH} are allowed, so split the work into several tasks"
                )
            for index, item in enumerate(items):
                where = f"{map_name}[{_shown(key)}]" + (
                    "" if isinstance(value, str) else f"[{index}]"
                )
                _check_text(where, item, MAX_VALUE_LENGTH)
                total += len(item)
            total += len(key)
    if total > MAX_CONTEXT_CHARS:
        raise ContextError(
            f"error 20002: the task's arguments hold {total} characters; at most "
            f"{MAX_CONTEXT_CHARS} are allowed, so pass large data by reference (a path or a URL)"
        )


def _check_text(where: str, text: object, limit: int) -> None:
    if not isinstance(text, str):
        raise ContextError(
            f"error 20002: {where} must be a string, got {type(text).__name__}; "
            "pass every argument as a string"
        )
    if "\x00" in text:
        raise ContextError(
            f"error 20002: {where} {_shown(text)} contains a NUL character (\\x00), "
            "which cannot be stored; remove it"
        )
    if len(text) > limit:
        raise ContextError(
            f"error 20002: {where} {_shown(text)} has {len(text)} characters; "
            f"at most {limit} are allowed"
        )


def _shown(text: str, limit: int = 40) -> str:
    """``text`` quoted for a message, cut short if it is long."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def stored_is_empty(data: object) -> bool:
    """Whether a stored context, as a driver returns it, is no context: SQL NULL, or JSON
    ``null`` (what a JSON column keeps for ``None``) read as text."""
    return data is None or data in ("null", b"null")


class TaskContext(BaseModel):
    """OCP's ``Context``: string arguments, list arguments and the parallel copy index."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="forbid")

    # Declared in OCP's (alphabetical) key order so the JSON reads like OCP's.
    list_map: dict[str, list[str]] = Field(default_factory=dict, alias="listMap")
    parallel: bool = False
    parallel_idx: int = Field(default=-1, alias="parallelIdx")
    string_map: dict[str, str] = Field(default_factory=dict, alias="stringMap")

    @field_validator("string_map", mode="before")
    @classmethod
    def _strings_only(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(item, str):
                    raise ValueError(
                        f"stringMap[{key!r}] must be a string, got {type(item).__name__}; "
                        "pass numbers and flags as strings (e.g. 'true', '2')"
                    )
        return value

    def to_json(self) -> dict[str, Any]:
        """The context as OCP's JSON object (camelCase keys)."""
        return self.model_dump(by_alias=True)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> TaskContext:
        """Parse OCP's JSON object (or ``None`` for an empty context)."""
        return cls.model_validate(dict(data or {}))

    @classmethod
    def from_stored(cls, data: str | bytes | Mapping[str, Any] | None) -> TaskContext:
        """Parse a stored context as a driver returns it: JSON text (parsed straight into the
        model) or, from drivers that decode JSON themselves, a mapping."""
        if stored_is_empty(data):
            return cls()
        if isinstance(data, str | bytes):
            return cls.model_validate_json(data)
        return cls.from_json(data)

    def with_strings(self, updates: Mapping[str, str]) -> TaskContext:
        """A copy with ``updates`` written into the stringMap."""
        return self.model_copy(update={"string_map": {**self.string_map, **updates}})

    def stored_json(self) -> dict[str, Any]:
        """:meth:`to_json` without the engine-owned stringMap keys: what a subtask's output
        keeps (the engine writes those keys again for every attempt that reads it)."""
        data = self.model_dump(by_alias=True)
        strings = data["stringMap"]
        if not ENGINE_KEYS.isdisjoint(strings):
            data["stringMap"] = {k: v for k, v in strings.items() if k not in ENGINE_KEYS}
        return data

    def get(self, key: str, list_key: str | None = None) -> str:
        """This copy's argument (docs/templates.md).

        For a parallel copy: ``listMap[list_key][parallelIdx]`` (``list_key`` defaults to
        ``key + "s"``, so ``get("host_id")`` reads ``listMap.host_ids``); otherwise
        ``stringMap[key]``. A missing argument is a :class:`ContextError` naming it.
        """
        if self.parallel:
            name = list_key or f"{key}s"
            values = self.list_map.get(name)
            if values is None or not 0 <= self.parallel_idx < len(values):
                raise ContextError(
                    f"error 20002: this parallel copy (parallelIdx={self.parallel_idx}) "
                    f"has no element in listMap[{name!r}]; submit the task with that list"
                )
            return values[self.parallel_idx]
        if key not in self.string_map:
            raise ContextError(
                f"error 20002: the task context has no stringMap[{key!r}]; "
                f"submit the task with --set {key}=VALUE"
            )
        return self.string_map[key]

    @property
    def prohibit_rollback(self) -> bool:
        """The task-level ``stringMap.prohibit_rollback`` flag."""
        return self.string_map.get(PROHIBIT_ROLLBACK, "false").lower() == "true"


def merge(outputs: Iterable[TaskContext]) -> TaskContext:
    """Merge upstream output contexts into a downstream input context (docs/templates.md).

    Raises :class:`ContextError` (20002) when two upstreams give different values for one
    stringMap key that the engine does not own. ``prohibit_rollback`` is the exception: "true"
    from any upstream wins (a subtask that prohibits rollback writes it into its output once it
    has run, as OCP does, and its siblings still carry the task's "false").
    ``parallel``/``parallelIdx`` are not inherited: the engine sets them for the subtask that
    receives the merged context.
    """
    strings: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    for ctx in outputs:
        for key, value in ctx.string_map.items():
            if key in ENGINE_KEYS:
                continue
            if key == PROHIBIT_ROLLBACK:
                if strings.get(key) != "true":
                    strings[key] = value
                continue
            seen = strings.get(key)
            if seen is not None and seen != value:
                raise ContextError(
                    f"error 20002: upstream subtasks disagree on stringMap[{key!r}] "
                    f"({seen!r} vs {value!r}); make the handlers agree or use different keys"
                )
            strings[key] = value
        for key, items in ctx.list_map.items():
            merged = lists.setdefault(key, [])
            merged.extend(item for item in items if item not in merged)
    return TaskContext(string_map=strings, list_map=lists)


class StoredContexts:
    """Stored contexts parsed once per distinct stored text, and merges of them once per
    distinct list of texts: the claims of a fan or a lattice hand most subtasks the same
    upstream outputs (a no-op's output is its input), and parsing and merging them again for
    every claim was a fifth of a worker's time per subtask.

    Bounded: texts over :attr:`MAX_CHARS` (and mappings, from drivers that decode JSON) are
    parsed each time, and a table that reaches :attr:`MAX_ENTRIES` starts again. The contexts
    it returns are shared between claims: whoever hands one to user code copies its containers
    first (the runner does).
    """

    MAX_CHARS = 16_384
    MAX_ENTRIES = 2_048

    def __init__(self) -> None:
        self._parsed: dict[str | bytes, TaskContext] = {}
        self._merged: dict[tuple[str | bytes, ...], TaskContext] = {}

    def parse(self, data: str | bytes | Mapping[str, Any] | None) -> TaskContext:
        """:meth:`TaskContext.from_stored`, remembered for a short text."""
        if not isinstance(data, str | bytes) or len(data) > self.MAX_CHARS:
            return TaskContext.from_stored(data)
        return self._remembered(self._parsed, data, lambda: TaskContext.from_stored(data))

    def merge(self, stored: Sequence[str | bytes | Mapping[str, Any] | None]) -> TaskContext:
        """:func:`merge` of the upstream outputs ``stored`` (in order), remembered for short
        texts; raises :class:`ContextError` as :func:`merge` does (a conflict is not kept)."""
        if not all(isinstance(data, str | bytes) for data in stored):
            return merge(self.parse(data) for data in stored)
        # Keyed by every text in order, repeats included: merging an output twice is not always
        # merging it once (a non-"true" prohibit_rollback: the last upstream's value is kept).
        texts: tuple[str | bytes, ...] = tuple(stored)  # type: ignore[arg-type]
        if sum(len(text) for text in texts) > self.MAX_CHARS:
            return merge(self.parse(text) for text in texts)
        return self._remembered(
            self._merged, texts, lambda: merge(self.parse(text) for text in texts)
        )

    def _remembered(
        self, table: dict[Any, TaskContext], key: Any, make: Callable[[], TaskContext]
    ) -> TaskContext:
        """``table[key]``, made by ``make()`` if missing (the table starts again when full; a
        ``make`` that raises keeps nothing)."""
        found = table.get(key)
        if found is None:
            found = make()
            if len(table) >= self.MAX_ENTRIES:
                table.clear()
            table[key] = found
        return found
