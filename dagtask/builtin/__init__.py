"""Built-in templates: OCP's host operations, ready to submit by name or slug.

* "Stop OCP agent" / "Restart OCP agent" (``stringMap.host_id``)
* "Batch stop OCP agent" / "Batch restart OCP agent" (``listMap.host_ids``)

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
    return ocp_agent_templates()
