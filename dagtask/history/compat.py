"""Template compatibility: can a recorded task still be retried or rolled back under another
version of its template?

A task keeps its own subtask instances, but the code behind them moves on with the template: an
upgrade that removes, renames or re-links a subtask, or swaps its handler, leaves old tasks whose
retry or rollback would run handlers that are gone or steps in an order the new code does not
expect. :func:`check` compares the recorded task with a candidate template and replays the
recorded history against it:

* nodes are matched by the recorded template's spec names (the task's template version), or, for
  a task without one (an OCP import), by subtask name; fan-out copies are one node;
* a recorded node missing from the candidate is *renamed* when exactly one new node has the same
  handler, else *removed*; other findings: *handler changed*, *links
  changed* (its upstreams differ), *fan-out changed*, *settings changed* (timeout, retries,
  prohibit_rollback: informational) and *added* (informational);
* a retry runs again every subtask that is not SUCCESSFUL, so a finding on one of them blocks
  retry; a rollback undoes every subtask that has run (not PENDING) in reverse order of the
  links, so a finding on one of them blocks rollback;
* the replay walks the history's attempts and reports the first step whose subtask or handler
  the candidate no longer has.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from dagtask import expand
from dagtask.errors import DagtaskError
from dagtask.models import TaskInfo
from dagtask.states import SubtaskStatus, TaskStatus
from dagtask.template import TaskTemplate

from . import typed as ev

S = SubtaskStatus


class IssueKind(StrEnum):
    """What no longer fits."""

    REMOVED = "removed"
    RENAMED = "renamed"
    HANDLER_CHANGED = "handler changed"
    LINKS_CHANGED = "links changed"
    FANOUT_CHANGED = "fan-out changed"
    SETTINGS_CHANGED = "settings changed"
    ADDED = "added"


class CompatIssue(BaseModel):
    """One difference between the recorded task and the candidate template."""

    model_config = ConfigDict(frozen=True)

    kind: IssueKind
    subtask: str
    detail: str
    blocks_retry: bool
    blocks_rollback: bool


class CompatReport(BaseModel):
    """What a candidate template means for a recorded task."""

    model_config = ConfigDict(frozen=True)

    task_id: int
    task_status: TaskStatus
    recorded_template: str | None
    """``name vN`` of the template version the task was expanded from, if stored."""
    candidate: str
    retry_ok: bool
    rollback_ok: bool
    issues: list[CompatIssue]
    events_checked: int
    first_misfit_step: int | None
    """The first history step (an attempt) whose subtask or handler the candidate lacks."""

    @property
    def compatible(self) -> bool:
        """Whether both a retry and a rollback of the task would still fit."""
        return self.retry_ok and self.rollback_ok


class _Node(BaseModel):
    name: str
    handler: str
    upstreams: frozenset[str]
    split: tuple[str | None, str] | None = None
    settings: tuple[int, int, bool] | None = None


def _recorded_nodes(
    task: TaskInfo, recorded: TaskTemplate | None
) -> tuple[dict[str, _Node], dict[int, str], bool]:
    """The recorded task's nodes, instance id -> node name, and whether nodes are named by the
    recorded template's spec names (else by subtask names)."""
    key: dict[int, str] = {}
    specs = {}
    if recorded is not None:
        try:
            expanded = expand.expand(recorded, task.context)
            by_series = {s.series_id: s for s in expanded.subtasks}
            for sub in task.subtasks:
                match = by_series.get(sub.series_id)
                if match is None or match.spec.instance_name != sub.name:
                    raise ValueError(sub.name)
                key[sub.id] = match.spec.name
            specs = {spec.name: spec for spec in recorded.subtasks}
        except (DagtaskError, ValueError):
            key, specs = {}, {}
    by_spec = bool(key)
    if not key:
        key = {sub.id: sub.name for sub in task.subtasks}
    nodes: dict[str, _Node] = {}
    for sub in task.subtasks:
        name = key[sub.id]
        ups = frozenset(key[u] for u in sub.upstreams if key[u] != name)
        spec = specs.get(name)
        old = nodes.get(name)
        nodes[name] = _Node(
            name=name,
            handler=sub.class_name,
            upstreams=ups | (old.upstreams if old else frozenset()),
            split=(spec.split_key, spec.split_method.value) if spec else None,
            settings=(spec.timeout, spec.retry_count, spec.prohibit_rollback) if spec else None,
        )
    return nodes, key, by_spec


def _candidate_nodes(template: TaskTemplate, by_spec_name: bool) -> dict[str, _Node]:
    nodes: dict[str, _Node] = {}
    names = {
        spec.name: spec.name if by_spec_name else spec.instance_name for spec in template.subtasks
    }
    for spec in template.subtasks:
        name = names[spec.name]
        old = nodes.get(name)
        ups = frozenset(names[u] for u in spec.upstreams if names[u] != name)
        nodes[name] = _Node(
            name=name,
            handler=spec.handler,
            upstreams=ups | (old.upstreams if old else frozenset()),
            split=(spec.split_key, spec.split_method.value),
            settings=(spec.timeout, spec.retry_count, spec.prohibit_rollback),
        )
    return nodes


def check(
    task: TaskInfo,
    history: Sequence[ev.HistoryEvent],
    candidate: TaskTemplate,
    *,
    recorded: TaskTemplate | None = None,
    recorded_name: str | None = None,
    candidate_name: str | None = None,
) -> CompatReport:
    """Compare ``task`` (expanded from ``recorded``, if known) and its history with
    ``candidate`` (see the module)."""
    old, key, by_spec = _recorded_nodes(task, recorded)
    new = _candidate_nodes(candidate, by_spec)
    renamed = _renames(old, new)
    statuses: dict[str, set[S]] = {}
    for sub in task.subtasks:
        statuses.setdefault(key[sub.id], set()).add(sub.status)
    retried = {n for n, st in statuses.items() if st - {S.SUCCESSFUL}}
    ran = {n for n, st in statuses.items() if st - {S.PENDING}}
    ran |= {
        key[e.subtask_id]
        for e in history
        if isinstance(e, ev.AttemptStarted) and e.subtask_id in key
    }
    issues: list[CompatIssue] = []

    def add(kind: IssueKind, name: str, detail: str, *, info: bool = False) -> None:
        issues.append(
            CompatIssue(
                kind=kind,
                subtask=name,
                detail=detail,
                blocks_retry=not info and name in retried,
                blocks_rollback=not info and name in ran,
            )
        )

    for name, node in old.items():
        target = renamed.get(name, name)
        if target not in new:
            add(IssueKind.REMOVED, name, f"{name!r} ({node.handler}) is not in the candidate")
            continue
        if target != name:
            add(IssueKind.RENAMED, name, f"{name!r} is now {target!r} (same handler)")
        other = new[target]
        if node.handler != other.handler:
            add(
                IssueKind.HANDLER_CHANGED,
                name,
                f"handler {node.handler or '(none recorded)'} is now {other.handler}",
            )
        mapped = frozenset(renamed.get(u, u) for u in node.upstreams)
        if mapped != other.upstreams:
            add(
                IssueKind.LINKS_CHANGED,
                name,
                f"upstreams {sorted(node.upstreams)} are now {sorted(other.upstreams)}",
            )
        if node.split is not None and other.split is not None and node.split != other.split:
            add(IssueKind.FANOUT_CHANGED, name, f"fan-out {node.split} is now {other.split}")
        if None not in (node.settings, other.settings) and node.settings != other.settings:
            add(
                IssueKind.SETTINGS_CHANGED,
                name,
                f"timeout, retry_count, prohibit_rollback {node.settings} are now {other.settings}",
                info=True,
            )
    targets = set(renamed.values())
    for name in new:
        if name not in old and name not in targets:
            add(IssueKind.ADDED, name, f"{name!r} ({new[name].handler}) is new", info=True)
    first = None
    checked = 0
    for event in history:
        checked += 1
        if isinstance(event, ev.AttemptStarted) and event.subtask_id in key and first is None:
            ran_as = key[event.subtask_id]
            fits = new.get(renamed.get(ran_as, ran_as))
            if fits is None or fits.handler != old[ran_as].handler:
                first = event.step
    return CompatReport(
        task_id=task.id,
        task_status=task.status,
        recorded_template=recorded_name,
        candidate=candidate_name or candidate.name,
        retry_ok=not any(i.blocks_retry for i in issues),
        rollback_ok=not any(i.blocks_rollback for i in issues),
        issues=issues,
        events_checked=checked,
        first_misfit_step=first,
    )


def _renames(old: dict[str, _Node], new: dict[str, _Node]) -> dict[str, str]:
    """Old name -> new name for nodes that only changed their name."""
    gone = [n for n in old if n not in new]
    fresh = [n for n in new if n not in old]
    result: dict[str, str] = {}
    for name in gone:
        same = [n for n in fresh if new[n].handler == old[name].handler]
        if len(same) == 1:
            result[name] = same[0]
    # Links are compared after renaming, so a renamed node whose links differ is reported too.
    return result
