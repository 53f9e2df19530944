"""Models that describe the REST API's bodies and envelopes in its OpenAPI schema.

Answers are rendered by :mod:`dagtask.views` (the only place OCP JSON is made); the envelopes here
reuse its views as their ``data`` so the schema describes exactly what is sent. Request bodies are
validated with these models.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from dagtask import views

MAX_ID = 2**53 - 1
"""The largest id the API accepts: the largest integer every JSON client represents exactly."""
MAX_BATCH = 1000
"""Hosts one batch request may name."""


def _strict_host_id(value: Any) -> Any:
    """A JSON number that is a whole number from 1 to :data:`MAX_ID`, as an int.

    ``true`` and ``"1"`` are refused (pydantic's lax mode would take either as 1). A number
    written with a fraction part or exponent is taken when it is whole (``2.0``, ``2e0``): JSON
    Schema, which the published OpenAPI schema is, counts it as the integer 2, and every whole
    number up to :data:`MAX_ID` is exact as a double. ``2.5`` is refused.
    """
    if type(value) is float and value.is_integer() and 1 <= value <= MAX_ID:
        return int(value)
    if type(value) is not int or not 1 <= value <= MAX_ID:
        got = json.dumps(value) if isinstance(value, bool | None | float | str) else repr(value)
        if len(got) > 40:
            got = got[:40] + "..."
        raise PydanticCustomError(
            "host_id",
            "{got} is not a host id: give an integer from 1 to {max}",
            {"got": got, "max": MAX_ID},
        )
    return value


HostId = Annotated[int, BeforeValidator(_strict_host_id)]
"""A host id in a body: a JSON integer from 1 to :data:`MAX_ID`, nothing else."""
_SPELLINGS = ("hostIds", "hostids")


class _Schema(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class _Envelope(_Schema):
    duration: int = Field(description="Milliseconds the server took to answer.")
    server: str = Field(description="The server that answered.")
    status: int = Field(description="The HTTP status code.")
    successful: bool
    timestamp: datetime = Field(description="When the answer was made, ISO-8601 with offset.")
    trace_id: str = Field(description="The request's trace id (the caller's X-Trace-Id if valid).")


class EmptyEnvelope(_Envelope):
    """A successful answer without data (subtask skip and cancel)."""

    successful: Literal[True] = True


class TaskEnvelope(_Envelope):
    """A successful answer carrying a task with its subtasks (stop-ocp-agent.json)."""

    data: views.TaskView
    successful: Literal[True] = True


class TaskListEnvelope(_Envelope):
    """A successful answer carrying a page of tasks (query-task-list.json)."""

    data: views.TaskListView
    successful: Literal[True] = True


class SubtaskEnvelope(_Envelope):
    """A successful answer carrying one subtask (retry-subtask.json)."""

    data: views.SubtaskView
    successful: Literal[True] = True


class LogEnvelope(_Envelope):
    """A successful answer carrying a subtask's log (subtask-log.json)."""

    data: views.LogView
    successful: Literal[True] = True


class ErrorEnvelope(_Envelope):
    """A failed request: OCP's error envelope (docs/api.md)."""

    error: views.ErrorView
    successful: Literal[False] = False


def _host_list(description: str) -> dict[str, Any]:
    # The schema of a host id list as sent: never null (None only stands for "absent").
    return {
        "type": "array",
        "items": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        "minItems": 1,
        "maxItems": MAX_BATCH,
        "uniqueItems": True,
        "description": description,
    }


class BatchHostsRequest(_Schema):
    """The hosts of a batch agent operation: ``{"hostIds": [1, 2]}``.

    ``hostids`` (all lower case, as in OCP's batch-restart sample) is accepted instead of
    ``hostIds``. Exactly one of the two is given (a ``null`` counts as given, and is refused);
    no other key is accepted; the list is non-empty, of unique JSON integers from 1 to
    :data:`MAX_ID` (``true`` and ``"1"`` are refused; see :func:`_strict_host_id`).
    """

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=False,
        json_schema_extra={"oneOf": [{"required": ["hostIds"]}, {"required": ["hostids"]}]},
    )

    host_ids: Annotated[
        list[HostId] | None, WithJsonSchema(_host_list("The ids of the hosts."))
    ] = Field(default=None, alias="hostIds", min_length=1, max_length=MAX_BATCH)
    hostids: Annotated[
        list[HostId] | None,
        WithJsonSchema(_host_list("OCP's lower-case spelling of hostIds, used without hostIds.")),
    ] = Field(default=None, alias="hostids", min_length=1, max_length=MAX_BATCH)

    @model_validator(mode="before")
    @classmethod
    def _one_spelling(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data  # pydantic refuses it as "not an object"
        for key in data:
            if key not in _SPELLINGS:
                close = difflib.get_close_matches(str(key), _SPELLINGS, n=1, cutoff=0.5)
                raise PydanticCustomError(
                    "unknown_key",
                    "unknown key {key}: {hint}",
                    {
                        "key": repr(key)[:60],
                        "hint": f"did you mean {close[0]!r}?" if close else "give only hostIds",
                    },
                )
        given = [key for key in _SPELLINGS if key in data]
        if not given:
            raise PydanticCustomError(
                "missing_hosts", 'give the hosts as hostIds, e.g. {"hostIds": [1, 2]}'
            )
        if len(given) > 1:
            raise PydanticCustomError(
                "two_spellings",
                "give the hosts once, as hostIds or as hostids, not both",
            )
        if data[given[0]] is None:
            raise PydanticCustomError(
                "null_hosts",
                '{key} is null: give the hosts as a list, e.g. {{"{key}": [1, 2]}}',
                {"key": given[0]},
            )
        return data

    @model_validator(mode="after")
    def _unique(self) -> BatchHostsRequest:
        for key, ids in (("hostIds", self.host_ids), ("hostids", self.hostids)):
            if ids is not None and len(set(ids)) != len(ids):
                twice = sorted({i for i in ids if ids.count(i) > 1})
                raise PydanticCustomError(
                    "duplicate_hosts",
                    "{key} names host {twice} more than once: give each host once",
                    {"key": key, "twice": ", ".join(map(str, twice))},
                )
        return self

    @property
    def ids(self) -> list[int] | None:
        """The host ids, from ``hostIds`` or else ``hostids``."""
        return self.host_ids if self.host_ids is not None else self.hostids


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, all in the error envelope."""
    reasons = {
        400: "A parameter or the body is invalid (each bad field is a sub-error).",
        401: "No credentials, or wrong ones.",
        403: "The user lacks the role this endpoint needs (the error's target names it).",
        404: "The task, subtask or host does not exist (task errors have code 20000).",
        409: "Not allowed in this state (20003), rollback prohibited (20004), or host busy.",
        429: "Too many requests in the current window (see the RateLimit-* headers).",
        500: "An unexpected error; the server's log has the details under the trace id.",
    }
    docs: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorEnvelope, "description": reasons[status]} for status in statuses
    }
    # "default" also keeps FastAPI from documenting a 422 answer, which the API never sends.
    docs["default"] = {"model": ErrorEnvelope, "description": "Any other error (e.g. 405)."}
    return docs
