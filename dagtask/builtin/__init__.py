"""Built-in templates: OCP's host operations, ready to submit by name or slug.

* "Stop OCP agent" / "Restart OCP agent" (``stringMap.host_id``)
* "Batch stop OCP agent" / "Batch restart OCP agent" (``listMap.host_ids``)
* "Run command on hosts" / "Check hosts" (``listMap.host_ids``; handlers and templates in
  :mod:`dagtask.builtin.host_commands`)
* "Purge finished tasks" (``stringMap.older_than``), fired daily by the built-in SYS_SCHEDULED
  definition ``purge-finished-tasks`` (:mod:`dagtask.builtin.maintenance`)

The templates live in :mod:`dagtask.builtin.templates`, their handlers in
:mod:`dagtask.builtin.ocp_agent`.
"""

from __future__ import annotations

from dagtask.builtin.templates import (
    batch_restart_ocp_agent,
    batch_stop_ocp_agent,
    ocp_agent_templates,
    restart_ocp_agent,
    stop_ocp_agent,
)
from dagtask.template import TaskTemplate

__all__ = [
    "batch_restart_ocp_agent",
    "batch_stop_ocp_agent",
    "builtin_templates",
    "noop",
    "restart_ocp_agent",
    "stop_ocp_agent",
]


def noop(ctx: object) -> None:
    """A handler that does nothing (benchmarks, examples and tests use it)."""
    return None


def builtin_templates() -> list[TaskTemplate]:
    """Every built-in template."""
    from dagtask.builtin.host_commands import check_hosts, run_command_on_hosts
    from dagtask.builtin.maintenance import purge_finished_tasks

    return [*ocp_agent_templates(), run_command_on_hosts(), check_hosts(), purge_finished_tasks()]
