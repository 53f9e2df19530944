"""The built-in OCP agent templates (docs/templates.md), shaped like OCP's own tasks.

Names, descriptions, timeouts and links follow OCP's published samples (``tests/data/ocp``). The
single-host templates act on ``stringMap.host_id`` (the task's ``hostId``); the batch templates
split every step PARALLEL over ``listMap.host_ids`` and put a "Wait node" (30 s) between
consecutive stages, as OCP does: a stage starts only once every host finished the one before.
``seriesId`` follows dagtask's own rule (reverse topological order, see :mod:`dagtask.expand`),
which only the Stop OCP agent sample happens to share.
"""

from __future__ import annotations

from collections.abc import Sequence

from dagtask.builtin import ocp_agent
from dagtask.builtin.ocp_agent import HOST_ID, HOST_IDS, Step
from dagtask.template import SplitMethod, TaskTemplate, TemplateBuilder

STOP_OCP_AGENT = "Stop OCP agent"
RESTART_OCP_AGENT = "Restart OCP agent"
BATCH_STOP_OCP_AGENT = "Batch stop OCP agent"
BATCH_RESTART_OCP_AGENT = "Batch restart OCP agent"


def _single_host(name: str, description: str, steps: Sequence[Step]) -> TaskTemplate:
    """A chain of ``steps`` acting on the host in ``stringMap.host_id``."""
    t = TemplateBuilder(name, host_arg=HOST_ID, description=description)
    previous: list[str] = []
    for step in steps:
        previous = [
            t.add(
                step.name,
                step.handler,
                description=step.description,
                timeout=step.timeout,
                after=previous,
            )
        ]
    return t.build()


def _batch(name: str, description: str, steps: Sequence[Step]) -> TaskTemplate:
    """``steps`` split PARALLEL over ``listMap.host_ids``, a Wait node between two stages."""
    # host_list_arg: the engine refuses a batch naming unknown hosts before the task exists.
    t = TemplateBuilder(name, host_list_arg=HOST_IDS, description=description)
    wait = ocp_agent.WAIT_NODE
    previous: list[str] = []
    for index, step in enumerate(steps):
        if index:
            # Template names must be unique; the instances carry OCP's repeated "Wait node".
            barrier = t.add(
                f"{wait.name} {index}",
                wait.handler,
                display_name=wait.name,
                description=wait.description,
                timeout=wait.timeout,
                after=previous,
            )
            previous = [barrier]
        previous = [
            t.add(
                step.name,
                step.handler,
                description=step.description,
                timeout=step.timeout,
                after=previous,
                split_key=HOST_IDS,
                split_method=SplitMethod.PARALLEL,
            )
        ]
    return t.build()


def stop_ocp_agent() -> TaskTemplate:
    """ "Stop OCP agent": Prepare (60 s) → Stop all processes (600 s) → Finish (60 s)."""
    return _single_host(
        STOP_OCP_AGENT,
        "Stop the OCP agent processes on one host (stringMap.host_id)",
        ocp_agent.STOP_OCP_AGENT_STEPS,
    )


def restart_ocp_agent() -> TaskTemplate:
    """ "Restart OCP agent": Prepare → Restart pos proxy → Stop all → Start all → Finish."""
    return _single_host(
        RESTART_OCP_AGENT,
        "Restart the OCP agent processes on one host (stringMap.host_id)",
        ocp_agent.RESTART_OCP_AGENT_STEPS,
    )


def batch_stop_ocp_agent() -> TaskTemplate:
    """ "Batch stop OCP agent": the stop steps on every host of ``listMap.host_ids``."""
    return _batch(
        BATCH_STOP_OCP_AGENT,
        "Stop the OCP agent processes on several hosts (listMap.host_ids)",
        ocp_agent.STOP_OCP_AGENT_STEPS,
    )


def batch_restart_ocp_agent() -> TaskTemplate:
    """ "Batch restart OCP agent": the restart steps on every host of ``listMap.host_ids``."""
    return _batch(
        BATCH_RESTART_OCP_AGENT,
        "Restart the OCP agent processes on several hosts (listMap.host_ids)",
        ocp_agent.RESTART_OCP_AGENT_STEPS,
    )


def ocp_agent_templates() -> list[TaskTemplate]:
    """The four OCP agent templates."""
    return [
        stop_ocp_agent(),
        restart_ocp_agent(),
        batch_stop_ocp_agent(),
        batch_restart_ocp_agent(),
    ]
