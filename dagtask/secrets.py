"""Secrets in task contexts: which keys hold one, and how they are masked wherever they are shown.

The rule (``docs/security.md``): a stringMap or listMap key is secret when its lower-case form
contains one of :data:`SECRET_WORDS` (``password``, ``passwd``, ``pwd``, ``secret``, ``token``,
``credential``, ``key``) or a word added with ``DAGTASK_SECRET_KEYS`` (comma-separated) or
:func:`register_secret_keys`. Its value is shown as :data:`MASK`; a listMap value keeps its
length (``["******", "******"]``), so how many parallel copies a task has stays visible.

Masking is for what people and files see: REST and CLI output, logs, history, exports. The store
keeps the real values and a handler receives them, so :meth:`dagtask.Engine.get` (the Python API)
returns them too.

Free text (a log line, an error message) is masked by value: every secret value of the contexts
it came with is replaced, also in its ``repr`` and JSON-escaped spellings (a context printed as a
Python dict escapes quotes and backslashes). Values shorter than :data:`MIN_TEXT_SECRET`
characters are not searched for in text: ``"1"`` or ``"yes"`` would blot out every occurrence in
a log while protecting nothing.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from dagtask.context import TaskContext
from dagtask.models import TaskInfo, TaskRecord

MASK = "******"
"""What a secret value is shown as (OCP's mask)."""

SECRET_WORDS: tuple[str, ...] = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "credential",
    "key",
)
"""A key containing one of these (case-insensitive) is secret."""

ENV_VAR = "DAGTASK_SECRET_KEYS"
"""More words that make a key secret, comma-separated (read again on every check)."""

MIN_TEXT_SECRET = 4
"""The shortest value :func:`mask_text` searches for in free text."""

_registered: set[str] = set()
_registered_lock = threading.Lock()

Source = TaskContext | TaskInfo | Mapping[str, Any] | None
"""Where secret values come from: a context, OCP context JSON, a task (its context and every
subtask's output context), or nothing."""


def register_secret_keys(*words: str) -> None:
    """Make keys containing any of ``words`` (case-insensitive) secret, in this process.

    >>> register_secret_keys("license", "dsn")  # doctest: +SKIP
    """
    cleaned = {w.strip().lower() for w in words if w.strip()}
    with _registered_lock:
        _registered.update(cleaned)


def secret_words() -> tuple[str, ...]:
    """Every word that makes a key secret: built in, from ``DAGTASK_SECRET_KEYS``, registered.

    Each call reads the variable and the registry again; the words are worked out only when
    either changed (a runner masks the context of every attempt it runs)."""
    with _registered_lock:
        registered = frozenset(_registered)
    return _words(os.environ.get(ENV_VAR, ""), registered)


@functools.lru_cache(maxsize=8)
def _words(given: str, registered: frozenset[str]) -> tuple[str, ...]:
    extra = {w.strip().lower() for w in given.split(",") if w.strip()} | registered
    return SECRET_WORDS + tuple(sorted(extra - set(SECRET_WORDS)))


def is_secret_key(key: str) -> bool:
    """Whether a context key holds a secret (its lower-case form contains a secret word)."""
    lowered = key.lower()
    return any(word in lowered for word in secret_words())


def mask_context(ctx: TaskContext) -> TaskContext:
    """A copy of ``ctx`` with the values of its secret keys masked."""
    words = secret_words()
    strings = {k: MASK if _secret(k, words) else v for k, v in ctx.string_map.items()}
    lists = {k: [MASK] * len(v) if _secret(k, words) else v for k, v in ctx.list_map.items()}
    if strings == ctx.string_map and lists == ctx.list_map:
        return ctx
    return ctx.model_copy(update={"string_map": strings, "list_map": lists})


def mask_json(obj: Any) -> Any:
    """OCP context JSON (``{"stringMap": {...}, "listMap": {...}, ...}``) with secret values
    masked; anything that is not such a dict is returned as it is. The input is not changed."""
    if not isinstance(obj, Mapping):
        return obj
    words = secret_words()
    out = dict(obj)
    strings = obj.get("stringMap")
    if isinstance(strings, Mapping):
        out["stringMap"] = {k: MASK if _secret(str(k), words) else v for k, v in strings.items()}
    lists = obj.get("listMap")
    if isinstance(lists, Mapping):
        out["listMap"] = {
            k: [MASK] * len(v) if _secret(str(k), words) and isinstance(v, list) else v
            for k, v in lists.items()
        }
    return out


def secret_values(*sources: Source) -> list[str]:
    """The secret values of ``sources`` worth searching for in text, longest first."""
    words = secret_words()
    found: set[str] = set()
    for source in sources:
        for ctx in _contexts(source):
            for key, value in ctx.get("stringMap", {}).items():
                if isinstance(value, str) and _secret(str(key), words):
                    found.add(value)
            for key, items in ctx.get("listMap", {}).items():
                if isinstance(items, list) and _secret(str(key), words):
                    found.update(item for item in items if isinstance(item, str))
    values = {v for v in found if len(v) >= MIN_TEXT_SECRET and v != MASK}
    return sorted(values, key=lambda v: (-len(v), v))


def mask_text(text: str, *sources: Source) -> str:
    """``text`` with every secret value of ``sources`` (see :func:`secret_values`) replaced by
    the mask, also where it appears escaped as by ``repr`` or JSON."""
    return mask_values(text, secret_values(*sources))


def mask_values(text: str, values: Iterable[str]) -> str:
    """``text`` with each of ``values`` (longest first, as :func:`secret_values` gives them)
    replaced by the mask; for masking many texts with the values of one task."""
    for value in values:
        for spelling in _spellings(value):
            if spelling in text:
                text = text.replace(spelling, MASK)
    return text


def mask_record(record: TaskRecord) -> TaskRecord:
    """A task's export record with its secrets masked: the task's context, every subtask's
    output context, and the secret values wherever they occur in messages and logs."""
    contexts: list[Source] = [record.task.context]
    contexts += [s.output_context for s in record.subtasks if s.output_context]
    values = secret_values(*contexts)

    def text(value: str | None) -> str | None:
        return None if value is None else mask_values(value, values)

    return record.model_copy(
        update={
            "task": record.task.model_copy(update={"context": mask_json(record.task.context)}),
            "subtasks": [
                s.model_copy(
                    update={
                        "output_context": mask_json(s.output_context)
                        if s.output_context
                        else s.output_context,
                        "message": text(s.message),
                    }
                )
                for s in record.subtasks
            ],
            "events": [e.model_copy(update={"message": text(e.message)}) for e in record.events],
            "logs": [
                g.model_copy(update={"text": mask_values(g.text, values)}) for g in record.logs
            ],
        }
    )


@functools.lru_cache(maxsize=10_000)
def _secret(key: str, words: tuple[str, ...]) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in words)


def _contexts(source: Source) -> list[Mapping[str, Any]]:
    if source is None:
        return []
    if isinstance(source, TaskInfo):
        found: list[Mapping[str, Any]] = [source.context.to_json()]
        found += [s.context.to_json() for s in source.subtasks if s.context is not None]
        return found
    if isinstance(source, TaskContext):
        return [source.to_json()]
    return [source]


def _spellings(value: str) -> list[str]:
    """The value as it is, as ``repr`` shows it inside quotes, and as JSON escapes it."""
    spellings = [value, repr(value)[1:-1], json.dumps(value)[1:-1]]
    spellings.append(json.dumps(value, ensure_ascii=False)[1:-1])
    return list(dict.fromkeys(s for s in spellings if s))
