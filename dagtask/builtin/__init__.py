"""Built-in templates: OCP's host operations, ready to submit by name."""

from __future__ import annotations

from dagtask.template import TaskTemplate, TemplateBuilder

OCP_AGENT = "dagtask.builtin.ocp_agent"


def stop_ocp_agent() -> TaskTemplate:
    """ "Stop OCP agent" (SPEC §8): Prepare (60 s) → Stop all processes (600 s) → Finish (60 s)."""
    t = TemplateBuilder(
        "Stop OCP agent",
        host_arg="host_id",
        description="Stop the OCP agent processes on one host (stringMap.host_id)",
    )
    t.add("Prepare stop OCP agent", f"{OCP_AGENT}.PrepareStopOcpAgentTask", timeout=60)
    t.add(
        "Stop all OCP agent processes",
        f"{OCP_AGENT}.StopAllOcpAgentProcessesTask",
        timeout=600,
        after=["Prepare stop OCP agent"],
    )
    t.add(
        "Finish OCP agent operation",
        f"{OCP_AGENT}.FinishOcpAgentOperationTask",
        timeout=60,
        after=["Stop all OCP agent processes"],
    )
    return t.build()


def noop(ctx: object) -> None:
    """A handler that does nothing (benchmarks, examples and tests use it)."""
    return None


def builtin_templates() -> list[TaskTemplate]:
    """Every built-in template."""
    return [stop_ocp_agent()]
