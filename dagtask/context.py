"""The task context (SPEC §1): ``stringMap``, ``listMap``, ``parallel``, ``parallelIdx``.

A root subtask's input is the task's context. A non-root subtask's input is the merge of its
upstreams' output contexts (:func:`merge`): stringMap values that disagree are error 20002, except
the engine-owned keys, which the engine rewrites for every attempt; listMaps are unioned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dagtask.errors import ContextError

ENGINE_KEYS = frozenset(
    {"task_instance_id", "sub_task_instance_id", "task_operation", "latest_execution_start_time"}
)
"""stringMap keys the engine writes into the context a handler sees (SPEC §1)."""

PROHIBIT_ROLLBACK = "prohibit_rollback"


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

    def with_strings(self, updates: Mapping[str, str]) -> TaskContext:
        """A copy with ``updates`` written into the stringMap."""
        return self.model_copy(update={"string_map": {**self.string_map, **updates}})

    def without_engine_keys(self) -> TaskContext:
        """A copy without the engine-owned stringMap keys."""
        clean = {k: v for k, v in self.string_map.items() if k not in ENGINE_KEYS}
        return self.model_copy(update={"string_map": clean})

    def get(self, key: str, list_key: str | None = None) -> str:
        """This copy's argument (SPEC §5).

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
    """Merge upstream output contexts into a downstream input context (SPEC §1).

    Raises :class:`ContextError` (20002) when two upstreams give different values for one
    stringMap key that the engine does not own. ``parallel``/``parallelIdx`` are not inherited:
    the engine sets them for the subtask that receives the merged context.
    """
    strings: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    for ctx in outputs:
        for key, value in ctx.string_map.items():
            if key in ENGINE_KEYS:
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
