"""The handlers of the built-in "Stop OCP agent" template (SPEC §8), under OCP's class names.

Prepare stop OCP agent (60 s) -> Stop all OCP agent processes (600 s) -> Finish OCP agent
operation (60 s). The same three steps, split PARALLEL over ``listMap.host_ids``, make the batch
template; every handler reads its host with ``ctx.get("host_id")``.

Context keys (stringMap):

``host_id``
    The host (a batch copy reads its element of ``listMap.host_ids`` instead).
``stop_grace_seconds``
    Optional: how long the agent processes get between SIGTERM and SIGKILL (default 10).
``ocp_agent_origin_status``
    Written by Prepare: the agent status before the stop, which its rollback restores. A batch
    copy writes ``ocp_agent_origin_status_<host_id>``, so that the copies' outputs still merge.
``ocp_agent_operation``
    Written by Prepare (``STOP``): tells the shared Finish step which final status to set.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from dagtask.errors import ArgumentError, HostError
from dagtask.handlers import Handler, HandlerResult, RunContext
from dagtask.hosts.inventory import AgentStatus, HostStatus, parse_agent_status

HOST_ID = "host_id"
STOP_GRACE_SECONDS = "stop_grace_seconds"
ORIGIN_STATUS = "ocp_agent_origin_status"
OPERATION = "ocp_agent_operation"
DEFAULT_STOP_GRACE_SECONDS = 10.0

STOP_OCP_AGENT = "Stop OCP agent"
PREPARE_STOP_NAME = "Prepare stop OCP agent"
PREPARE_STOP_DESCRIPTION = "Prepare stop OCP agent"
PREPARE_STOP_TIMEOUT = 60
STOP_ALL_NAME = "Stop all OCP agent processes"
STOP_ALL_DESCRIPTION = "Stop all OCP agent processes"
STOP_ALL_TIMEOUT = 600
FINISH_NAME = "Finish OCP agent operation"
FINISH_DESCRIPTION = "Finish OCP agent operation"
FINISH_TIMEOUT = 60

BUSY_STATUSES = frozenset({AgentStatus.STARTING, AgentStatus.RESTARTING})
"""Agent statuses that belong to another running operation: a stop must not barge in."""

FINAL_STATUS = {
    "STOP": AgentStatus.STOPPED,
    "START": AgentStatus.ONLINE,
    "RESTART": AgentStatus.ONLINE,
}
"""The agent status Finish sets, by ``ocp_agent_operation``."""


def host_id_of(ctx: RunContext) -> int:
    """The host this subtask (or this parallel copy) works on."""
    raw = ctx.get(HOST_ID)
    try:
        return int(raw)
    except ValueError:
        raise ArgumentError(
            f"host id {raw!r} is not a number; submit the task with the numeric id of a host "
            "(see `dagtask hosts list`)",
            target=HOST_ID,
        ) from None


def origin_key(ctx: RunContext, host_id: int) -> str:
    """The stringMap key under which Prepare records the agent status before the stop."""
    # Parallel copies' outputs are merged at the next barrier, and one key with different
    # values there is error 20002: each host of a batch gets its own key.
    return f"{ORIGIN_STATUS}_{host_id}" if ctx.context.parallel else ORIGIN_STATUS


def stop_grace(ctx: RunContext) -> float:
    """``stringMap.stop_grace_seconds`` as seconds, or :data:`DEFAULT_STOP_GRACE_SECONDS`."""
    raw = ctx.string_map.get(STOP_GRACE_SECONDS)
    if raw is None:
        return DEFAULT_STOP_GRACE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ArgumentError(
            f"stringMap.{STOP_GRACE_SECONDS} must be a number of seconds >= 0, got {raw!r}; "
            f"e.g. --set {STOP_GRACE_SECONDS}=30",
            target=STOP_GRACE_SECONDS,
        )
    return value


def _update_agent_status(
    ctx: RunContext, host_id: int, new: AgentStatus, expected: AgentStatus | None = None
) -> AgentStatus:
    ctx.log.info("Updating OCP agent status, hostId=%d, status=%s", host_id, new)
    previous = ctx.services.hosts.set_agent_status(host_id, new, expected)
    ctx.log.info("Updated OCP agent status, hostId=%d, from %s to %s", host_id, previous, new)
    return previous


class PrepareStopOcpAgentTask(Handler):
    """Check that the agent may be stopped, remember its status, and mark it STOPPING."""

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Mark the agent STOPPING; output its previous status under ``origin_key``."""
        tag = type(self).__name__
        ctx.token.raise_if_cancelled()
        ctx.log.info("[%s] begin", tag)
        host_id = host_id_of(ctx)
        host = ctx.services.hosts.get(host_id)
        if host.status != HostStatus.ONLINE:
            raise HostError(
                f"host {host_id} ({host.name}) is {host.status}, so its OCP agent cannot be "
                "stopped; set the host ONLINE in the inventory once it is reachable, then retry",
                target=str(host_id),
            )
        current = parse_agent_status(host.agent_status)
        ctx.log.info(
            "Checking OCP agent status for stopping: hostId=%d, status=%s", host_id, current
        )
        if current in BUSY_STATUSES:
            raise HostError(
                f"the OCP agent of host {host_id} ({host.name}) is {current}: another operation "
                "is starting or restarting it; wait for that task to end (or roll it back), "
                "then retry this subtask",
                target=str(host_id),
            )
        # Conditional: if another operation changed the status since we read it, fail instead
        # of recording a wrong origin.
        _update_agent_status(ctx, host_id, AgentStatus.STOPPING, expected=current)
        ctx.log.info("[%s] end", tag)
        return {origin_key(ctx, host_id): current.value, OPERATION: "STOP"}

    def rollback(self, ctx: RunContext) -> HandlerResult:
        """Put back the agent status recorded by :meth:`execute` (if it is still STOPPING)."""
        tag = type(self).__name__
        ctx.log.info("[%s] rollback begin", tag)
        host_id = host_id_of(ctx)
        current = ctx.services.hosts.agent_status(host_id)
        if current is not AgentStatus.STOPPING:
            ctx.log.info(
                "OCP agent status of host %d is %s, not STOPPING: nothing to restore",
                host_id,
                current,
            )
            return None
        recorded = ctx.string_map.get(origin_key(ctx, host_id))
        if recorded is not None:
            origin = parse_agent_status(recorded)
        else:
            # No record (e.g. the rollback before a retry of a failed attempt): the processes
            # themselves are the best evidence of what the status should be.
            host = ctx.services.hosts.get(host_id)
            processes = ctx.services.connector(host).agent_processes(host)
            running = any(process.alive for process in processes)
            origin = AgentStatus.ONLINE if running else AgentStatus.STOPPED
            ctx.log.info(
                "No recorded OCP agent status for host %d; processes say %s", host_id, origin
            )
        _update_agent_status(ctx, host_id, origin, expected=AgentStatus.STOPPING)
        ctx.log.info("[%s] rollback end", tag)
        return None


class StopAllOcpAgentProcessesTask(Handler):
    """Stop every OCP agent process of the host: SIGTERM, grace period, SIGKILL, verify."""

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Stop the processes; an agent that is already stopped is a success."""
        tag = type(self).__name__
        ctx.token.raise_if_cancelled()
        ctx.log.info("[%s] begin", tag)
        host_id = host_id_of(ctx)
        grace = stop_grace(ctx)
        host = ctx.services.hosts.get(host_id)
        ctx.log.info("Stopping all OCP agent processes: hostId=%d, grace=%.1fs", host_id, grace)
        connector = ctx.services.connector(host)
        connector.stop_agent(host, grace=grace, token=ctx.token, log=ctx.log)
        ctx.log.info("[%s] end", tag)
        return None


class FinishOcpAgentOperationTask(Handler):
    """Mark the agent with the final status of the operation (STOPPED after a stop)."""

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Set the final agent status; idempotent."""
        tag = type(self).__name__
        ctx.token.raise_if_cancelled()
        ctx.log.info("[%s] begin", tag)
        host_id = host_id_of(ctx)
        current = ctx.services.hosts.agent_status(host_id)
        operation = ctx.string_map.get(OPERATION)
        if operation is None:
            # Run without Prepare's output (e.g. a hand-made task): infer from the status.
            operation = "START" if current in BUSY_STATUSES else "STOP"
        final = FINAL_STATUS.get(operation)
        if final is None:
            raise ArgumentError(
                f"stringMap.{OPERATION}={operation!r} is not an OCP agent operation; "
                f"use one of {', '.join(FINAL_STATUS)}",
                target=OPERATION,
            )
        if current is final:
            ctx.log.info("OCP agent status of host %d is already %s", host_id, final)
        else:
            _update_agent_status(ctx, host_id, final)
        ctx.log.info("[%s] end", tag)
        return None

    def rollback(self, ctx: RunContext) -> HandlerResult:
        """Nothing to undo: Prepare's rollback restores the status the agent had before."""
        return None


class Step(NamedTuple):
    """One subtask of a built-in template: name, description, timeout (s) and handler class."""

    name: str
    description: str
    timeout: int
    handler: type[Handler]


STOP_OCP_AGENT_STEPS = (
    Step(
        PREPARE_STOP_NAME, PREPARE_STOP_DESCRIPTION, PREPARE_STOP_TIMEOUT, PrepareStopOcpAgentTask
    ),
    Step(STOP_ALL_NAME, STOP_ALL_DESCRIPTION, STOP_ALL_TIMEOUT, StopAllOcpAgentProcessesTask),
    Step(FINISH_NAME, FINISH_DESCRIPTION, FINISH_TIMEOUT, FinishOcpAgentOperationTask),
)
"""The "Stop OCP agent" chain, in order (each step's upstream is the one before)."""
