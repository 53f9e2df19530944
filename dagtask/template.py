"""Task templates: a named DAG of subtask specs, built in Python or loaded from YAML/JSON
(docs/templates.md).

A template is validated as a whole when it is built: unique names, known upstreams, no self-links,
no cycle (error 20001, naming the nodes on it), non-negative timeouts and retry counts.
:meth:`TaskTemplate.check_handlers` also imports every handler and hook; the engine calls it before
a task is stored, so a template that cannot run is refused before anything is written.

The model is as strict as the tables that hold it, on every backend: a key the model does not
know is refused (naming the closest known key, so ``upstream`` or ``timout`` is not silently
ignored), numbers are integers (not flags, not text) no larger than the INTEGER columns they are
stored in, strings are no longer than their VARCHAR columns, and no string holds a NUL character
(PostgreSQL cannot store one). SQLite would store what PostgreSQL refuses; the model refuses it
everywhere, so a template that works on one database works on all.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from dagtask import graph, handlers
from dagtask.errors import TemplateError

MAX_INT = 2**31 - 1
"""The largest timeout, retry count or concurrency: the INTEGER columns' maximum (PostgreSQL and
MariaDB; SQLite would store more)."""
MAX_NAME = 256
"""Characters of a template, subtask or display name (the name columns are VARCHAR(256))."""
MAX_DESCRIPTION = 1024
"""Characters of a description (the subtask description column is VARCHAR(1024))."""
MAX_HANDLER = 512
"""Characters of a handler's dotted path (the class_name column is VARCHAR(512))."""
MAX_KEY = 256
"""Characters of a context key named by a template (split_key, host_arg, host_list_arg)."""


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError(
            "nul_character", "contains a NUL character (\\x00), which cannot be stored; remove it"
        )
    return value


Text = Annotated[str, Strict(), AfterValidator(_no_nul)]
"""A string without NUL characters (never a number or flag turned into text)."""
# The length bounds come before the NUL check so that pydantic reports them as string lengths.
OptionalName = (
    Annotated[str, Strict(), Field(min_length=1, max_length=MAX_NAME), AfterValidator(_no_nul)]
    | None
)
"""A name of 1 to :data:`MAX_NAME` characters, or none."""
OptionalKey = (
    Annotated[str, Strict(), Field(min_length=1, max_length=MAX_KEY), AfterValidator(_no_nul)]
    | None
)
"""A context key of 1 to :data:`MAX_KEY` characters, or none."""
Count = Annotated[int, Strict(), Field(ge=0, le=MAX_INT)]
"""A non-negative integer an INTEGER column holds (``true`` or ``"5"`` is not one)."""
Flag = Annotated[bool, Strict()]
"""``true`` or ``false`` (not ``"yes"``, not ``1``)."""


class SplitMethod(StrEnum):
    """How fan-out copies of one spec relate (docs/templates.md)."""

    PARALLEL = "PARALLEL"
    SERIAL = "SERIAL"


class Recovery(StrEnum):
    """What happens to a subtask whose worker is lost (killed, machine gone) while running it."""

    FAIL = "FAIL"
    """The attempt ends FAILED saying the worker was lost; the operator decides (as in OCP)."""
    RETRY = "RETRY"
    """The attempt is run again by another worker (for idempotent handlers)."""


HookPath = Annotated[
    str, Strict(), Field(min_length=1, max_length=MAX_HANDLER), AfterValidator(_no_nul)
]
"""A hook's dotted path (bounded like a handler's)."""


class Hooks(BaseModel):
    """Functions (dotted paths, or the functions themselves) a template's tasks call around
    their subtasks and when they end (docs/templates.md, "Hooks"; run by :mod:`dagtask.hooks`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    before_subtask: tuple[HookPath, ...] = Field(
        default=(), description="fn(ctx) before each attempt's handler, in order"
    )
    after_subtask: tuple[HookPath, ...] = Field(
        default=(), description="fn(ctx, result) after each attempt's handler, in order"
    )
    after_task: tuple[HookPath, ...] = Field(
        default=(), description="fn(task_id, status) once each time a task ends (best effort)"
    )

    @field_validator("before_subtask", "after_subtask", "after_task", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str) or callable(value):
            value = (value,)
        if isinstance(value, list | tuple):
            return tuple(
                item
                if isinstance(item, str) or not callable(item)
                else handlers.dotted_path(item, what="hook")
                for item in value
            )
        return value

    @property
    def empty(self) -> bool:
        """Whether no hook is set (such a template's definition has no ``hooks`` key)."""
        return not (self.before_subtask or self.after_subtask or self.after_task)

    def paths(self) -> list[tuple[str, str]]:
        """``(kind, dotted path)`` of every hook, kinds in the order they run."""
        return [
            (kind, path)
            for kind in ("before_subtask", "after_subtask", "after_task")
            for path in getattr(self, kind)
        ]


class SubtaskSpec(BaseModel):
    """One node of a template."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Text = Field(min_length=1, max_length=MAX_NAME)
    handler: Text = Field(min_length=1, max_length=MAX_HANDLER)
    display_name: OptionalName = Field(
        default=None,
        description="the subtask's name in task instances when it differs from the unique "
        "template name (OCP repeats names such as 'Wait node')",
    )
    description: Text = Field(default="", max_length=MAX_DESCRIPTION)
    timeout: Count = Field(default=0, description="seconds; 0 = no watchdog")
    retry_count: Count = 0
    prohibit_rollback: Flag = False
    upstreams: tuple[Text, ...] = ()
    split_key: OptionalKey = None
    split_method: SplitMethod = SplitMethod.PARALLEL
    on_worker_lost: Recovery = Field(
        default=Recovery.FAIL,
        description="FAIL (default) or RETRY: what happens when the worker running it is lost",
    )

    @field_validator("handler", mode="before")
    @classmethod
    def _handler_path(cls, value: Any) -> Any:
        return value if isinstance(value, str) else handlers.dotted_path(value)

    @field_validator("upstreams", mode="before")
    @classmethod
    def _upstream_list(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        return value

    @model_validator(mode="after")
    def _default_description(self) -> SubtaskSpec:
        if not self.description:
            object.__setattr__(self, "description", self.display_name or self.name)
        return self

    @property
    def instance_name(self) -> str:
        """The name its subtask instances carry."""
        return self.display_name or self.name


class TaskTemplate(BaseModel):
    """A named DAG of :class:`SubtaskSpec`; the ``name`` is also the task's name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    _digest: str | None = PrivateAttr(default=None)

    name: Text = Field(min_length=1, max_length=MAX_NAME)
    subtasks: tuple[SubtaskSpec, ...] = Field(min_length=1)
    prohibit_rollback: Flag = False
    concurrency: Annotated[int, Strict(), Field(ge=1, le=MAX_INT)] = 10
    host_arg: OptionalKey = Field(
        default=None,
        description="stringMap key holding the id of the host the task acts on (its hostId)",
    )
    host_list_arg: OptionalKey = Field(
        default=None,
        description="listMap key holding the ids of the hosts a batch task acts on",
    )
    description: Text = Field(default="", max_length=MAX_DESCRIPTION)
    hooks: Hooks = Field(
        default=Hooks(),
        description="functions called before and after each subtask and when the task ends",
    )

    @field_validator("hooks", mode="before")
    @classmethod
    def _no_hooks(cls, value: Any) -> Any:
        return Hooks() if value is None else value  # `hooks:` with every line commented out

    @model_validator(mode="after")
    def _check_graph(self) -> TaskTemplate:
        names = [spec.name for spec in self.subtasks]
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise TemplateError(
                    f"template {self.name!r}: two subtasks are named {name!r}; "
                    "names must be unique because links refer to them"
                )
            seen.add(name)
        for spec in self.subtasks:
            for up in spec.upstreams:
                if up == spec.name:
                    raise TemplateError(
                        f"template {self.name!r}: subtask {spec.name!r} lists itself as upstream"
                    )
                if up not in seen:
                    raise TemplateError(
                        f"template {self.name!r}: subtask {spec.name!r} has unknown upstream "
                        f"{up!r}; known subtasks: {', '.join(names)}"
                    )
        graph.check_acyclic(names, self.edges())
        return self

    def edges(self) -> list[tuple[str, str]]:
        """``(upstream, downstream)`` name pairs."""
        return [(up, spec.name) for spec in self.subtasks for up in spec.upstreams]

    def check_handlers(self) -> None:
        """Import every handler and hook; raise :class:`HandlerImportError` naming the first
        that fails."""
        for spec in self.subtasks:
            try:
                handlers.resolve(spec.handler)
            except TemplateError as exc:
                raise type(exc)(f"template {self.name!r}, subtask {spec.name!r}: {exc}") from exc
        for kind, path in self.hooks.paths():
            try:
                handlers.resolve_hook(path)
            except TemplateError as exc:
                raise type(exc)(f"template {self.name!r}, hooks.{kind}: {exc}") from exc

    def definition(self) -> dict[str, Any]:
        """The template as the plain JSON-able document a file would hold.

        Without hooks it has no ``hooks`` key, so the digests of templates stored before hooks
        existed stay what they were.
        """
        data = self.model_dump(mode="json", exclude_defaults=False)
        if self.hooks.empty:
            del data["hooks"]
        return data

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy (with ``update`` applied); a changed copy computes its own digest."""
        copy = super().model_copy(update=update, deep=deep)
        if update:
            copy._digest = None
        return copy

    def digest(self) -> str:
        """A stable hash of :meth:`definition`, used to version stored templates (computed once:
        a template is immutable, and every submit asks for it)."""
        return self.digest_and_dump()[0]

    def digest_and_dump(self) -> tuple[str, dict[str, Any] | None]:
        """:meth:`digest`, and the :meth:`definition` it was computed from when this call
        computed it (``None`` when the digest was already known). A 100,000-subtask template's
        dump takes most of a second: the first submit stores the definition it hashed."""
        if self._digest is not None:
            return self._digest, None
        data = self.definition()
        body = json.dumps(data, sort_keys=True, separators=(",", ":"))
        self._digest = hashlib.sha256(body.encode()).hexdigest()
        return self._digest, data

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, source: str = "template") -> TaskTemplate:
        """Validate a template document, turning pydantic's errors into one clear TemplateError.

        An unknown key is refused with the closest known key suggested (``upstream`` → did you
        mean 'upstreams'?).
        """
        if not isinstance(data, Mapping):
            raise TemplateError(
                f"{source} is not a valid template: it is a {type(data).__name__}; "
                "give a mapping with 'name' and 'subtasks'"
            )
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            errors = exc.errors()
            if any(len(e["loc"]) > 1 and e["loc"][0] == "subtasks" for e in errors):
                # pydantic also counts a tuple whose items failed as too short: noise.
                errors = [e for e in errors if tuple(e["loc"]) != ("subtasks",)]
            problems = "; ".join(_describe(err) for err in errors)
            raise TemplateError(f"{source} is not a valid template: {problems}") from exc

    @classmethod
    def from_definition(cls, data: Mapping[str, Any], *, source: str = "template") -> TaskTemplate:
        """Like :meth:`parse`, for a definition a database already holds: keys this version does
        not know are dropped rather than refused.

        Earlier versions kept unknown keys in stored definitions; a task stored then must stay
        readable. Everything else is validated as in :meth:`parse`.
        """
        if not isinstance(data, Mapping):
            return cls.parse(data, source=source)
        clean = {k: v for k, v in data.items() if k in cls.model_fields}
        hooks = clean.get("hooks")
        if isinstance(hooks, Mapping):
            clean["hooks"] = {k: v for k, v in hooks.items() if k in Hooks.model_fields}
        subtasks = clean.get("subtasks")
        if isinstance(subtasks, list | tuple):
            known = SubtaskSpec.model_fields
            clean["subtasks"] = [
                {k: v for k, v in sub.items() if k in known} if isinstance(sub, Mapping) else sub
                for sub in subtasks
            ]
        return cls.parse(clean, source=source)


def _describe(err: Mapping[str, Any]) -> str:
    parts = tuple(err.get("loc", ()))
    loc = ".".join(str(part) for part in parts)
    if err.get("type") == "extra_forbidden" and parts:
        key = str(parts[-1])
        # Which model the key was given to: the template itself, a subtask or the hooks.
        in_subtask = len(parts) == 3 and parts[0] == "subtasks"
        in_hooks = len(parts) == 2 and parts[0] == "hooks"
        fields = (
            SubtaskSpec.model_fields
            if in_subtask
            else Hooks.model_fields
            if in_hooks
            else TaskTemplate.model_fields
        )
        where = ".".join(str(part) for part in parts[:-1])
        close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(fields)}"
        return f"{where + ': ' if where else ''}unknown key {_shown(repr(key))}; {hint}"
    msg = str(err.get("msg", "invalid"))
    kind = str(err.get("type", ""))
    if kind.endswith("_type") or kind.endswith("_parsing"):
        # "should be a valid integer" alone does not say that true or "5" was what came.
        msg += f", got {_shown(json.dumps(err.get('input'), default=repr))}"
    return f"{loc or 'document'}: {msg}"


def _shown(text: str, limit: int = 60) -> str:
    """``text`` for a message, cut short if it is long."""
    return text if len(text) <= limit else text[:limit] + "..."


def load_template(path: str | Path) -> TaskTemplate:
    """Load a template from a ``.yaml``/``.yml``/``.json`` file (docs/templates.md)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"cannot read template file {str(file)!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise TemplateError(
            f"template file {str(file)!r} is not UTF-8 text; give a YAML or JSON file"
        ) from exc
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise TemplateError(f"template file {str(file)!r} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TemplateError(
            f"template file {str(file)!r} must hold a mapping with 'name' and 'subtasks'"
        )
    return TaskTemplate.parse(data, source=f"template file {str(file)!r}")


class TemplateBuilder:
    """A small builder for templates in Python.

    >>> t = TemplateBuilder("Say hello")
    >>> first = t.add("Greet", "mypkg.Greet", timeout=10)
    >>> _ = t.add("Reply", "mypkg.Reply", after=[first])
    >>> template = t.build()
    """

    def __init__(
        self,
        name: str,
        *,
        prohibit_rollback: bool = False,
        concurrency: int = 10,
        host_arg: str | None = None,
        host_list_arg: str | None = None,
        description: str = "",
        hooks: Hooks | Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.options: dict[str, Any] = {
            "prohibit_rollback": prohibit_rollback,
            "concurrency": concurrency,
            "host_arg": host_arg,
            "host_list_arg": host_list_arg,
            "description": description,
        }
        if hooks is not None:
            self.options["hooks"] = hooks
        self.specs: list[dict[str, Any]] = []

    def add(
        self,
        name: str,
        handler: str | type[Any] | Callable[..., Any],
        *,
        after: Iterable[str] = (),
        description: str = "",
        timeout: int = 0,
        retry_count: int = 0,
        prohibit_rollback: bool = False,
        split_key: str | None = None,
        split_method: SplitMethod | str = SplitMethod.PARALLEL,
        on_worker_lost: Recovery | str = Recovery.FAIL,
        **extra: Any,
    ) -> str:
        """Add a subtask run by ``handler`` after the subtasks in ``after``; return its name.

        ``extra`` holds the other :class:`SubtaskSpec` keys (``display_name``); like a file's keys
        they are checked by :meth:`build`, which refuses one it does not know.
        """
        spec: dict[str, Any] = {
            "name": name,
            "handler": handler if isinstance(handler, str) else handlers.dotted_path(handler),
            "upstreams": list(after),
        }
        # Only what differs from the defaults: a spec remembers the keys it was given (pydantic's
        # fields_set), 0.5 KB a subtask when all ten are passed.
        given = {
            "description": description,
            "timeout": timeout,
            "retry_count": retry_count,
            "prohibit_rollback": prohibit_rollback,
            "split_key": split_key,
            "split_method": split_method,
            "on_worker_lost": on_worker_lost,
        }
        fields = SubtaskSpec.model_fields
        for key, value in given.items():
            default = fields[key].default
            # A value of another type (0 for False) is passed on, for the model to refuse.
            if type(value) is not type(default) or value != default:
                spec[key] = value
        self.specs.append({**spec, **extra})
        return name

    def chain(self, *names: str) -> None:
        """Link the named subtasks one after another (each gains the previous as upstream)."""
        index = {spec["name"]: spec for spec in self.specs}
        for up, down in itertools.pairwise(names):
            index[down]["upstreams"].append(up)

    def build(self) -> TaskTemplate:
        """Validate and return the template."""
        return TaskTemplate.parse(
            {"name": self.name, "subtasks": self.specs, **self.options},
            source=f"template {self.name!r}",
        )


def template_names(templates: Sequence[TaskTemplate]) -> list[str]:
    """Names of ``templates``, for error messages."""
    return [t.name for t in templates]
