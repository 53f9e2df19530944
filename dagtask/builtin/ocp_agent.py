"""The handlers of the built-in OCP agent templates (docs/templates.md), under OCP's class names.

Stop OCP agent: Prepare stop -> Stop all processes -> Finish. Restart OCP agent: Prepare restart
-> Restart pos proxy -> Stop all processes -> Start all processes -> Finish. The batch templates
split every step PARALLEL over ``listMap.host_ids`` with a :class:`WaitNode` between stages; every
handler reads its host with ``ctx.get("host_id")``. Every step is idempotent, and every step that
changes something undoes it in its rollback, so rolling a task back leaves the agent as it was.

Context keys (stringMap):

``host_id``
    The host (a batch copy reads its element of ``listMap.host_ids`` instead).
``stop_grace_seconds``
    Optional: how long the agent processes get between SIGTERM and SIGKILL (default 10).
``start_settle_seconds``
    Optional: how long started processes must stay alive to count as started (default 0.5).
``ocp_agent_origin_status``
    Written by Prepare: the agent status before the operation, which its rollback restores.
``ocp_agent_stopped`` / ``ocp_agent_started``
    Written by Stop all / Start all: "true" if the step stopped (started) processes, which tells
    its rollback whether there is anything to undo.
``ocp_agent_operation``
    Written by Prepare (``STOP`` or ``RESTART``): tells the shared Finish step its final status.

A batch copy writes the per-host keys above with a ``_<host_id>`` suffix, so that the copies'
outputs still merge at the next Wait node (one key with different values would be error 20002).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

from dagtask.errors import ArgumentError, HostError
from dagtask.handlers import Handler, HandlerResult, RunContext
from dagtask.hosts.connector import AGENT_PROCESSES
from dagtask.hosts.inventory import AgentStatus, HostStatus, parse_agent_status
from dagtask.models import HostInfo

HOST_ID = "host_id"
HOST_IDS = "host_ids"
STOP_GRACE_SECONDS = "stop_grace_seconds"
START_SETTLE_SECONDS = "start_settle_seconds"
ORIGIN_STATUS = "ocp_agent_origin_status"
STOPPED = "ocp_agent_stopped"
STARTED = "ocp_agent_started"
OPERATION = "ocp_agent_operation"
DEFAULT_STOP_GRACE_SECONDS = 10.0
DEFAULT_START_SETTLE_SECONDS = 0.5

BUSY_STATUSES = frozenset({AgentStatus.STARTING, AgentStatus.RESTARTING})
"""Agent statuses that belong to another running operation: a stop must not barge in."""

FINAL_STATUS = {
    "STOP": AgentStatus.STOPPED,
    "START": AgentStatus.ONLINE,
    "RESTART": AgentStatus.ONLINE,
}
"""The agent status Finish sets, by ``ocp_agent_operation``."""

TRANSITIONAL_STATUS = {
    "STOP": AgentStatus.STOPPING,
    "START": AgentStatus.STARTING,
    "RESTART": AgentStatus.RESTARTING,
}
"""The status Prepare sets while the operation runs (and Finish's rollback puts back)."""


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


def host_key(ctx: RunContext, key: str, host_id: int) -> str:
    """``key``, or ``key_<host_id>`` in a parallel copy (see the module docstring)."""
    return f"{key}_{host_id}" if ctx.context.parallel else key


def origin_key(ctx: RunContext, host_id: int) -> str:
    """The stringMap key under which Prepare records the agent status before the operation."""
    return host_key(ctx, ORIGIN_STATUS, host_id)


def _seconds(ctx: RunContext, key: str, default: float) -> float:
    raw = ctx.string_map.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ArgumentError(
            f"stringMap.{key} must be a number of seconds >= 0, got {raw!r}; e.g. --set {key}=30",
            target=key,
        )
    return value


def stop_grace(ctx: RunContext) -> float:
    """``stringMap.stop_grace_seconds`` as seconds, or :data:`DEFAULT_STOP_GRACE_SECONDS`."""
    return _seconds(ctx, STOP_GRACE_SECONDS, DEFAULT_STOP_GRACE_SECONDS)


def start_settle(ctx: RunContext) -> float:
    """``stringMap.start_settle_seconds`` as seconds, or :data:`DEFAULT_START_SETTLE_SECONDS`."""
    return _seconds(ctx, START_SETTLE_SECONDS, DEFAULT_START_SETTLE_SECONDS)


def _update_agent_status(
    ctx: RunContext, host_id: int, new: AgentStatus, expected: AgentStatus | None = None
) -> AgentStatus:
    ctx.log.info("Updating OCP agent status, hostId=%d, status=%s", host_id, new)
    previous = ctx.services.hosts.set_agent_status(host_id, new, expected)
    ctx.log.info("Updated OCP agent status, hostId=%d, from %s to %s", host_id, previous, new)
    return previous


def _running_status(ctx: RunContext, host: HostInfo) -> AgentStatus:
    """What the processes say: ONLINE if all run, STOPPED if none does, OFFLINE in between."""
    alive = {p.name for p in ctx.services.connector(host).agent_processes(host) if p.alive}
    if alive >= set(AGENT_PROCESSES):
        return AgentStatus.ONLINE
    return AgentStatus.OFFLINE if alive else AgentStatus.STOPPED


def _start_and_verify(ctx: RunContext, host: HostInfo) -> bool:
    """Start the agent's missing processes and check they stay up; whether any was started."""
    connector = ctx.services.connector(host)
    before = {p.pid for p in connector.agent_processes(host) if p.alive}
    ctx.log.info("Starting all OCP agent processes: hostId=%d", host.id)
    try:
        pids = connector.start_agent(host, log=ctx.log)
    except HostError as exc:
        raise HostError(
            f"could not start the OCP agent on host {host.id} ({host.name}): {exc}; fix the "
            "cause on the host, then run this step again (retry it, or roll back again)",
            target=str(host.id),
        ) from exc
    started = [pid for pid in pids if pid not in before]
    if not started:
        ctx.log.info("All OCP agent processes of host %d were already running", host.id)
        return False
    # A process that passed its start-up but crashes right after would otherwise count as
    # started: give it a moment, then look again.
    settle = start_settle(ctx)
    if ctx.token.wait(settle):
        ctx.token.raise_if_cancelled()
    alive = {p.pid for p in connector.agent_processes(host) if p.alive}
    for name, pid in zip(AGENT_PROCESSES, pids, strict=True):
        if pid not in alive:
            tail = connector.last_log_line(host, name) or "(nothing logged)"
            raise HostError(
                f"OCP agent process {name} (pid={pid}) of host {host.id} ({host.name}) died "
                f"within {settle:g} s of starting; its last log line: {tail}; fix the cause on "
                "the host, then run this step again (retry it, or roll back again)",
                target=str(host.id),
            )
    ctx.log.info("Started all OCP agent processes of host %d, pids=%s", host.id, pids)
    return True


class _PrepareOcpAgentOperation(Handler):
    """Check that the agent may be operated on, record its status, mark it transitional."""

    operation: ClassVar[str]
    verb: ClassVar[str]
    gerund: ClassVar[str]
    busy: ClassVar[frozenset[AgentStatus]]
    busy_reason: ClassVar[str]

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Mark the agent transitional; output its previous status under ``origin_key``."""
        tag = type(self).__name__
        ctx.token.raise_if_cancelled()
        ctx.log.info("[%s] begin", tag)
        host_id = host_id_of(ctx)
        _check_unique_in_batch(ctx, host_id)
        host = ctx.services.hosts.get(host_id)
        if host.status != HostStatus.ONLINE:
            raise HostError(
                f"host {host_id} ({host.name}) is {host.status}, so its OCP agent cannot be "
                f"{self.verb}; set the host ONLINE in the inventory once it is reachable, then "
                "retry",
                target=str(host_id),
            )
        current = parse_agent_status(host.agent_status)
        ctx.log.info(
            "Checking OCP agent status for %s: hostId=%d, status=%s",
            self.gerund,
            host_id,
            current,
        )
        if current in self.busy:
            raise HostError(
                f"the OCP agent of host {host_id} ({host.name}) is {current}: {self.busy_reason}; "
                "wait for that task to end (or roll it back), then retry this subtask",
                target=str(host_id),
            )
        # Conditional: if another operation changed the status since we read it, fail instead
        # of recording a wrong origin.
        _update_agent_status(ctx, host_id, TRANSITIONAL_STATUS[self.operation], expected=current)
        ctx.log.info("[%s] end", tag)
        return {origin_key(ctx, host_id): current.value, OPERATION: self.operation}

    def rollback(self, ctx: RunContext) -> HandlerResult:
        """Put back the agent status recorded by :meth:`execute` (if it is still transitional)."""
        tag = type(self).__name__
        ctx.log.info("[%s] rollback begin", tag)
        host_id = host_id_of(ctx)
        marker = TRANSITIONAL_STATUS[self.operation]
        current = ctx.services.hosts.agent_status(host_id)
        if current is not marker:
            ctx.log.info(
                "OCP agent status of host %d is %s, not %s: nothing to restore",
                host_id,
                current,
                marker,
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
        _update_agent_status(ctx, host_id, origin, expected=marker)
        ctx.log.info("[%s] rollback end", tag)
        return None


def _check_unique_in_batch(ctx: RunContext, host_id: int) -> None:
    """Two copies of one batch step on the same host would race each other: refuse that."""
    if not ctx.context.parallel:
        return
    ids = ctx.list_map.get(HOST_IDS, [])
    if sum(1 for raw in ids if raw.strip() == str(host_id)) > 1:
        raise ArgumentError(
            f"listMap.{HOST_IDS} names host {host_id} more than once ({', '.join(ids)}); "
            "submit the batch with each host once",
            target=HOST_IDS,
        )


class PrepareStopOcpAgentTask(_PrepareOcpAgentOperation):
    """Check that the agent may be stopped, remember its status, and mark it STOPPING."""

    operation = "STOP"
    verb = "stopped"
    gerund = "stopping"
    busy = BUSY_STATUSES
    busy_reason = "another operation is starting or restarting it"


class PrepareRestartOcpAgentTask(_PrepareOcpAgentOperation):
    """Check that the agent may be restarted, remember its status, and mark it RESTARTING.

    A RESTARTING agent is accepted: it is what a failed restart leaves behind, and another
    restart is exactly what repairs it.
    """

    operation = "RESTART"
    verb = "restarted"
    gerund = "restarting"
    busy = frozenset({AgentStatus.STARTING, AgentStatus.STOPPING})
    busy_reason = "another operation is starting or stopping it"


class RestartPosProxyTask(Handler):
    """OCP's "Restart pos proxy": the connector's pre-restart step (see the connector's doc).

    For the local connector this checks that the agent home can start the agent again, so a
    restart that would leave the agent down fails before the agent is stopped.
    """

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Ask the host's connector to restart the pos proxy; idempotent."""
        tag = type(self).__name__
        ctx.token.raise_if_cancelled()
        ctx.log.info("[%s] begin", tag)
        host = ctx.services.hosts.get(host_id_of(ctx))
        ctx.services.connector(host).restart_pos_proxy(host, log=ctx.log)
        ctx.log.info("[%s] end", tag)
        return None


class StopAllOcpAgentProcessesTask(Handler):
    """Stop every OCP agent process of the host: SIGTERM, grace period, SIGKILL, verify."""

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Stop the processes (a stopped agent is a success); record whether any was running."""
        tag = type(self).__name__
        ctx.token.raise_if_cancelled()
        ctx.log.info("[%s] begin", tag)
        host_id = host_id_of(ctx)
        grace = stop_grace(ctx)
        host = ctx.services.hosts.get(host_id)
        ctx.log.info("Stopping all OCP agent processes: hostId=%d, grace=%.1fs", host_id, grace)
        connector = ctx.services.connector(host)
        report = connector.stop_agent(host, grace=grace, token=ctx.token, log=ctx.log)
        ctx.log.info("[%s] end", tag)
        return {host_key(ctx, STOPPED, host_id): "false" if report.already_stopped else "true"}

    def retry(self, ctx: RunContext) -> HandlerResult:
        """Just stop again (idempotent): the default rollback first would start the agent."""
        return self.execute(ctx)

    def rollback(self, ctx: RunContext) -> HandlerResult:
        """Start the agent again if this step stopped it (or, with no record, if it ran before)."""
        tag = type(self).__name__
        ctx.log.info("[%s] rollback begin", tag)
        host_id = host_id_of(ctx)
        stopped = ctx.string_map.get(host_key(ctx, STOPPED, host_id))
        if stopped is None:
            # The step failed or was cancelled part-way: it may have stopped some processes.
            # Prepare's record of the status before the task says whether the agent ran.
            origin = ctx.string_map.get(origin_key(ctx, host_id))
            stopped = "true" if origin == AgentStatus.ONLINE else "false"
            ctx.log.info(
                "No record of what the stop did on host %d; status before the task: %s",
                host_id,
                origin or "unknown",
            )
        if stopped != "true":
            ctx.log.info(
                "This step stopped no OCP agent process on host %d: nothing to undo", host_id
            )
            return None
        _start_and_verify(ctx, ctx.services.hosts.get(host_id))
        ctx.log.info("[%s] rollback end", tag)
        return None


class StartAllOcpAgentProcessesTask(Handler):
    """Start every OCP agent process of the host and check that each stays alive."""

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Start what is not running (idempotent); record whether anything was started."""
        tag = type(self).__name__
        ctx.token.raise_if_cancelled()
        ctx.log.info("[%s] begin", tag)
        host_id = host_id_of(ctx)
        started = _start_and_verify(ctx, ctx.services.hosts.get(host_id))
        ctx.log.info("[%s] end", tag)
        return {host_key(ctx, STARTED, host_id): "true" if started else "false"}

    def retry(self, ctx: RunContext) -> HandlerResult:
        """Just start again: only the missing processes are started."""
        return self.execute(ctx)

    def rollback(self, ctx: RunContext) -> HandlerResult:
        """Stop the agent if this step started it (or, with no record, whatever it left)."""
        tag = type(self).__name__
        ctx.log.info("[%s] rollback begin", tag)
        host_id = host_id_of(ctx)
        if ctx.string_map.get(host_key(ctx, STARTED, host_id)) == "false":
            ctx.log.info(
                "This step started no OCP agent process on host %d: nothing to undo", host_id
            )
            return None
        # No record means a failed attempt, which may have started some processes before one
        # failed; the stop before this step left none running, so stop all.
        host = ctx.services.hosts.get(host_id)
        connector = ctx.services.connector(host)
        connector.stop_agent(host, grace=stop_grace(ctx), token=ctx.token, log=ctx.log)
        ctx.log.info("[%s] rollback end", tag)
        return None


class WaitNode(Handler):
    """OCP's "Wait node": a barrier between the stages of a batch; it does nothing itself."""

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Log that every upstream copy has finished."""
        ctx.log.info("[WaitNode] every upstream subtask is done; the next stage may start")
        return None


class FinishOcpAgentOperationTask(Handler):
    """Mark the agent with the final status of the operation (STOPPED, or ONLINE if it runs)."""

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Set the final agent status; idempotent."""
        tag = type(self).__name__
        ctx.token.raise_if_cancelled()
        ctx.log.info("[%s] begin", tag)
        host_id = host_id_of(ctx)
        current = ctx.services.hosts.agent_status(host_id)
        final = FINAL_STATUS[_operation(ctx, current)]
        if final is AgentStatus.ONLINE:
            # After a skipped or undone start the agent is not running: say so, not ONLINE.
            observed = _running_status(ctx, ctx.services.hosts.get(host_id))
            if observed is not final:
                ctx.log.warning(
                    "Not every OCP agent process of host %d is running; marking it %s",
                    host_id,
                    observed,
                )
                final = observed
        if current is final:
            ctx.log.info("OCP agent status of host %d is already %s", host_id, final)
        else:
            _update_agent_status(ctx, host_id, final)
        ctx.log.info("[%s] end", tag)
        return None

    def rollback(self, ctx: RunContext) -> HandlerResult:
        """Put back the transitional status, so that Prepare's rollback restores the origin."""
        host_id = host_id_of(ctx)
        current = ctx.services.hosts.agent_status(host_id)
        operation = _operation(ctx, current)
        if current is FINAL_STATUS[operation]:
            _update_agent_status(ctx, host_id, TRANSITIONAL_STATUS[operation], expected=current)
        else:
            ctx.log.info("OCP agent status of host %d is %s: nothing to undo", host_id, current)
        return None


def _operation(ctx: RunContext, current: AgentStatus) -> str:
    operation = ctx.string_map.get(OPERATION)
    if operation is None:
        # Run without Prepare's output (e.g. a hand-made task): infer from the status.
        return "START" if current in BUSY_STATUSES else "STOP"
    if operation not in FINAL_STATUS:
        raise ArgumentError(
            f"stringMap.{OPERATION}={operation!r} is not an OCP agent operation; "
            f"use one of {', '.join(FINAL_STATUS)}",
            target=OPERATION,
        )
    return operation


class Step(NamedTuple):
    """One subtask of a built-in template: name, description, timeout (s) and handler class."""

    name: str
    description: str
    timeout: int
    handler: type[Handler]


PREPARE_STOP = Step("Prepare stop OCP agent", "Prepare stop OCP agent", 60, PrepareStopOcpAgentTask)
PREPARE_RESTART = Step(
    "Prepare restart OCP agent", "Prepare restart OCP agent", 60, PrepareRestartOcpAgentTask
)
RESTART_POS_PROXY = Step("Restart pos proxy", "Restart pos proxy", 60, RestartPosProxyTask)
STOP_ALL = Step(
    "Stop all OCP agent processes",
    "Stop all OCP agent processes",
    600,
    StopAllOcpAgentProcessesTask,
)
START_ALL = Step(
    "Start all OCP agent processes",
    "Start all OCP agent processes",
    600,
    StartAllOcpAgentProcessesTask,
)
FINISH = Step(
    "Finish OCP agent operation", "Finish OCP agent operation", 60, FinishOcpAgentOperationTask
)
WAIT_NODE = Step("Wait node", "Wait node", 30, WaitNode)
"""The barrier between consecutive stages of a batch template."""

STOP_OCP_AGENT_STEPS = (PREPARE_STOP, STOP_ALL, FINISH)
"""The "Stop OCP agent" chain, in order (each step's upstream is the one before)."""
RESTART_OCP_AGENT_STEPS = (PREPARE_RESTART, RESTART_POS_PROXY, STOP_ALL, START_ALL, FINISH)
"""The "Restart OCP agent" chain, in order."""
