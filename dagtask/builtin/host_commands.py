"""The generic host templates: "Run command on hosts" and "Check hosts" (docs/hosts.md).

Both fan out PARALLEL over ``listMap.host_ids``, one copy per host, each with its own log; the
task's ``concurrency`` bounds how many hosts run at once, and one unreachable host fails only its
own copy (after its connect timeout) while the others finish.

Context keys (stringMap):

``command``
    "Run command on hosts": the shell command line to run on every host (``sh -c``).
``command_timeout_seconds``
    Optional: stop the command (its whole process group) after this many seconds; the step's
    own timeout (600 s) applies anyway.

Each copy writes ``exit_status_<host_id>`` (Run command) or ``agent_status_<host_id>`` (Check
hosts) into its output, so that the outputs of all hosts merge at the end.
"""

from __future__ import annotations

import math

from dagtask.builtin.ocp_agent import HOST_IDS
from dagtask.errors import ArgumentError, HostError
from dagtask.handlers import Handler, HandlerResult, RunContext
from dagtask.hosts.check import check_host
from dagtask.template import SplitMethod, TaskTemplate, TemplateBuilder

RUN_COMMAND_ON_HOSTS = "Run command on hosts"
CHECK_HOSTS = "Check hosts"
COMMAND = "command"
COMMAND_TIMEOUT = "command_timeout_seconds"
STEP_TIMEOUT = 600


def _host_id(ctx: RunContext) -> int:
    raw = ctx.get("host_id", HOST_IDS)
    try:
        return int(raw)
    except ValueError:
        raise ArgumentError(
            f"host id {raw!r} is not a number; submit listMap.host_ids with numeric host ids "
            "(see `dagtask hosts list`)",
            target=HOST_IDS,
        ) from None


class RunCommandOnHostTask(Handler):
    """Run ``stringMap.command`` on this copy's host; its output streams into the log."""

    prohibit_rollback = True
    """A command cannot be undone; rolling the task back skips this step."""

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Run the command; a non-zero exit status fails this host's copy."""
        command = ctx.string_map.get(COMMAND, "").strip()
        if not command:
            raise ArgumentError(
                "stringMap.command is empty; submit the command to run, e.g. "
                "--set command='uptime'",
                target=COMMAND,
            )
        timeout = _timeout(ctx)
        host = ctx.host(_host_id(ctx))
        result = host.run(command, timeout=timeout, check=False)
        if not result.ok:
            raise HostError(
                f"the command exited with status {result.exit_status} on host {host.host.id} "
                f"({host.host.name}); its output is in this subtask's log",
                target=str(host.host.id),
            )
        return {f"exit_status_{host.host.id}": str(result.exit_status)}


def _timeout(ctx: RunContext) -> float | None:
    raw = ctx.string_map.get(COMMAND_TIMEOUT)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ArgumentError(
            f"stringMap.{COMMAND_TIMEOUT} must be a number of seconds > 0, got {raw!r}",
            target=COMMAND_TIMEOUT,
        )
    return value


class CheckHostTask(Handler):
    """Reach this copy's host, verify it, record its OS and its agent's real status."""

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Check the host; an unreachable or unverifiable host fails this copy."""
        ctx.token.raise_if_cancelled()
        host = ctx.services.hosts.get(_host_id(ctx))
        ctx.log.info("Checking host %d (%s, %s)", host.id, host.name, host.inner_ip)
        report = check_host(ctx.services, host)
        if report.error:
            raise HostError(report.error, target=str(host.id))
        ctx.log.info("Host %d runs %s", host.id, report.os_info)
        ctx.log.info(
            "OCP agent of host %d: %s (running: %s)",
            host.id,
            report.agent_status,
            ", ".join(report.processes) or "none",
        )
        return {f"agent_status_{host.id}": report.agent_status.split()[0]}


def _fan_out(name: str, description: str, step: str, handler: type[Handler]) -> TaskTemplate:
    t = TemplateBuilder(name, host_list_arg=HOST_IDS, description=description)
    t.add(
        step,
        handler,
        description=description,
        timeout=STEP_TIMEOUT,
        split_key=HOST_IDS,
        split_method=SplitMethod.PARALLEL,
    )
    return t.build()


def run_command_on_hosts() -> TaskTemplate:
    """ "Run command on hosts": ``stringMap.command`` on every host of ``listMap.host_ids``."""
    return _fan_out(
        RUN_COMMAND_ON_HOSTS,
        "Run stringMap.command on every host of listMap.host_ids",
        "Run command",
        RunCommandOnHostTask,
    )


def check_hosts() -> TaskTemplate:
    """ "Check hosts": reach, verify and inspect every host of ``listMap.host_ids``."""
    return _fan_out(
        CHECK_HOSTS,
        "Reach every host of listMap.host_ids, verify it, record its OS and agent status",
        "Check host",
        CheckHostTask,
    )
