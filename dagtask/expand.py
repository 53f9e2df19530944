"""Expansion: a template plus the task's arguments become the subtask instances of one task.

Pure: no I/O, no ids. The store turns an :class:`ExpandedTask` into rows. Decisions written down:

* ``seriesId`` is the position in *reverse* topological order (sinks first), as in OCP's Stop OCP
  agent sample, with ties broken by template order. Ids are handed out in seriesId order, so ids
  grow the same way (the sample's sink also has the smallest id).
* Fan-out (docs/templates.md): a spec with ``split_key = K`` becomes one copy per element of
  ``listMap[K]`` with ``parallel = true`` and ``parallelIdx = 0..n-1``. PARALLEL copies link to
  every copy of each neighbour; SERIAL copies form a chain, upstream links attach to the first
  copy and downstream links to the last. An empty or missing list is refused.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from pydantic import ValidationError

from dagtask import graph
from dagtask.context import PROHIBIT_ROLLBACK, TaskContext, check_arguments
from dagtask.errors import ArgumentError, ContextError
from dagtask.template import SplitMethod, SubtaskSpec, TaskTemplate


@dataclass
class ExpandedSubtask:
    """One subtask instance before it has an id (``index`` is its position in the task)."""

    index: int
    spec: SubtaskSpec
    parallel: bool = False
    parallel_idx: int = -1
    series_id: int = 0
    upstreams: list[int] = field(default_factory=list)
    prohibit_rollback: bool = False
    """The spec's flag, or'ed by the engine with its handler class's ``prohibit_rollback``."""


@dataclass
class ExpandedTask:
    """The subtask instances of one task and the task's own context."""

    template: TaskTemplate
    context: TaskContext
    subtasks: list[ExpandedSubtask]

    @property
    def edges(self) -> list[tuple[int, int]]:
        """``(upstream index, downstream index)`` pairs."""
        return [(up, sub.index) for sub in self.subtasks for up in sub.upstreams]


def task_context(
    template: TaskTemplate,
    strings: dict[str, str] | None = None,
    lists: dict[str, list[str]] | None = None,
) -> TaskContext:
    """The task's argument: the given maps plus ``prohibit_rollback`` from the template default.

    The maps must hold only strings; what a task cannot be stored with (a NUL character, a value
    past the bounds of :func:`dagtask.context.check_arguments`) is a :class:`ContextError`.
    """
    check_arguments(strings or {}, lists or {})
    given = dict(strings or {})
    asked = given.pop(PROHIBIT_ROLLBACK, "false")
    # OCP writes the template's flag after the caller's arguments, so a template that prohibits
    # rollback cannot be overridden; a caller may still prohibit it for one task of a template
    # that allows it (docs/design.md, "prohibit_rollback"). The flag comes first, as in OCP.
    string_map = {PROHIBIT_ROLLBACK: "true" if template.prohibit_rollback else asked, **given}
    try:
        return TaskContext(string_map=string_map, list_map=dict(lists or {}))
    except ValidationError as exc:
        # Only a caller that skipped the engine's conversion gets here (e.g. an int in a list).
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        raise ContextError(
            f"error 20002: the task context is invalid at {where}: {err['msg']}; "
            "pass every argument as a string"
        ) from None


def expand(template: TaskTemplate, context: TaskContext) -> ExpandedTask:
    """Expand ``template`` for ``context`` (fan-out, links, seriesId)."""
    subtasks: list[ExpandedSubtask] = []
    copies: dict[str, list[int]] = {}
    serial_specs: set[str] = set()
    serial = SplitMethod.SERIAL  # an enum member lookup per spec is measurable at 100k specs
    for spec in template.subtasks:
        if spec.split_key is None:
            copies[spec.name] = [_new(subtasks, spec)]
            continue
        values = context.list_map.get(spec.split_key)
        if not values:
            raise ArgumentError(
                f"subtask {spec.name!r} fans out over listMap[{spec.split_key!r}], which is "
                f"{'empty' if values is not None else 'missing'}; "
                f"submit the task with --list {spec.split_key}=A,B,..."
            )
        indexes = [_new(subtasks, spec, parallel_idx=i) for i in range(len(values))]
        if spec.split_method is serial:
            serial_specs.add(spec.name)
            for up, down in itertools.pairwise(indexes):
                subtasks[down].upstreams.append(up)
        copies[spec.name] = indexes
    for spec in template.subtasks:
        if not spec.upstreams:
            continue
        mine = copies[spec.name]
        receivers = mine[:1] if spec.name in serial_specs else mine
        for up_name in spec.upstreams:
            theirs = copies[up_name]
            senders = theirs[-1:] if up_name in serial_specs else theirs
            for down in receivers:
                subtasks[down].upstreams.extend(senders)
    order = graph.topological_order(
        [s.index for s in subtasks], [(u, s.index) for s in subtasks for u in s.upstreams]
    )
    for series_id, index in enumerate(reversed(order)):
        subtasks[index].series_id = series_id
    return ExpandedTask(template=template, context=context, subtasks=subtasks)


def _new(subtasks: list[ExpandedSubtask], spec: SubtaskSpec, parallel_idx: int = -1) -> int:
    index = len(subtasks)
    subtasks.append(
        ExpandedSubtask(
            index=index,
            spec=spec,
            parallel=parallel_idx >= 0,
            parallel_idx=parallel_idx,
            prohibit_rollback=spec.prohibit_rollback,
        )
    )
    return index
