"""Task templates: a named DAG of subtask specs, built in Python or loaded from YAML/JSON (SPEC §9).

A template is validated as a whole when it is built: unique names, known upstreams, no self-links,
no cycle (error 20001, naming the nodes on it), non-negative timeouts and retry counts.
:meth:`TaskTemplate.check_handlers` also imports every handler; the engine calls it before a task
is stored, so a template that cannot run is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dagtask import graph, handlers
from dagtask.errors import TemplateError


class SplitMethod(StrEnum):
    """How fan-out copies of one spec relate (SPEC §5)."""

    PARALLEL = "PARALLEL"
    SERIAL = "SERIAL"


class Recovery(StrEnum):
    """What happens to a subtask whose worker is lost (killed, machine gone) while running it."""

    FAIL = "FAIL"
    """The attempt ends FAILED saying the worker was lost; the operator decides (as in OCP)."""
    RETRY = "RETRY"
    """The attempt is run again by another worker (for idempotent handlers)."""


class SubtaskSpec(BaseModel):
    """One node of a template."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, max_length=256)
    handler: str = Field(min_length=1)
    display_name: str | None = Field(
        default=None,
        max_length=256,
        description="the subtask's name in task instances when it differs from the unique "
        "template name (OCP repeats names such as 'Wait node')",
    )
    description: str = ""
    timeout: int = Field(default=0, ge=0, description="seconds; 0 = no watchdog")
    retry_count: int = Field(default=0, ge=0)
    prohibit_rollback: bool = False
    upstreams: tuple[str, ...] = ()
    split_key: str | None = None
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

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, max_length=256)
    subtasks: tuple[SubtaskSpec, ...] = Field(min_length=1)
    prohibit_rollback: bool = False
    concurrency: int = Field(default=10, ge=1)
    host_arg: str | None = Field(
        default=None,
        description="stringMap key holding the id of the host the task acts on (its hostId)",
    )
    host_list_arg: str | None = Field(
        default=None,
        description="listMap key holding the ids of the hosts a batch task acts on",
    )
    description: str = ""

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
        """Import every handler; raise :class:`HandlerImportError` naming the first that fails."""
        for spec in self.subtasks:
            try:
                handlers.resolve(spec.handler)
            except TemplateError as exc:
                raise type(exc)(f"template {self.name!r}, subtask {spec.name!r}: {exc}") from exc

    def definition(self) -> dict[str, Any]:
        """The template as the plain JSON-able document a file would hold."""
        return self.model_dump(mode="json", exclude_defaults=False)

    def digest(self) -> str:
        """A stable hash of :meth:`definition`, used to version stored templates."""
        body = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, source: str = "template") -> TaskTemplate:
        """Validate a template document, turning pydantic's errors into one clear TemplateError."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            problems = "; ".join(_describe(err) for err in exc.errors())
            raise TemplateError(f"{source} is not a valid template: {problems}") from exc


def _describe(err: Mapping[str, Any]) -> str:
    loc = ".".join(str(part) for part in err.get("loc", ()))
    return f"{loc or 'document'}: {err.get('msg', 'invalid')}"


def load_template(path: str | Path) -> TaskTemplate:
    """Load a template from a ``.yaml``/``.yml``/``.json`` file (SPEC §9)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"cannot read template file {str(file)!r}: {exc.strerror}") from exc
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
    ) -> None:
        self.name = name
        self.options: dict[str, Any] = {
            "prohibit_rollback": prohibit_rollback,
            "concurrency": concurrency,
            "host_arg": host_arg,
            "host_list_arg": host_list_arg,
            "description": description,
        }
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
        """Add a subtask run by ``handler`` after the subtasks in ``after``; return its name."""
        self.specs.append(
            {
                "name": name,
                "handler": handler if isinstance(handler, str) else handlers.dotted_path(handler),
                "upstreams": list(after),
                "description": description,
                "timeout": timeout,
                "retry_count": retry_count,
                "prohibit_rollback": prohibit_rollback,
                "split_key": split_key,
                "split_method": split_method,
                "on_worker_lost": on_worker_lost,
                **extra,
            }
        )
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
