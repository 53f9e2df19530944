"""The "ssh" connector: a host's OCP agent on a remote machine, operated over SSH.

It does over SSH what :mod:`dagtask.hosts.local` does on this machine: list the agent's processes
(through the agent kind's pid files or status command, :mod:`dagtask.hosts.kinds`), SIGTERM them,
wait the grace period, SIGKILL survivors, verify and remove the records; start what is missing and
wait until it runs. Every remote step is one short shell command on a pooled connection
(:mod:`dagtask.hosts.ssh`); a cancel or a timeout stops the remote command's process group.
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dagtask.errors import ArgumentError, HostError
from dagtask.handlers import CancellationToken, CancelledError
from dagtask.hosts import ssh
from dagtask.hosts.access import describe
from dagtask.hosts.connector import AgentProcess, Connector, StopReport
from dagtask.hosts.hostkeys import PinKey
from dagtask.hosts.kinds import AgentKind, agent_kind
from dagtask.models import HostInfo

FAST_POLL_SECONDS = 0.02
FAST_POLLS = 25
POLL_SECONDS = 0.2
"""Remote waits look every 20 ms for the first half second (a process usually ends or starts
within it), then every 200 ms, so that a long grace period spawns few processes on the host."""


def _rounds(seconds: float) -> int:
    """How many looks of a remote wait loop (:func:`_sleep_step`) cover ``seconds``."""
    fast = FAST_POLLS * FAST_POLL_SECONDS
    if seconds <= fast:
        return max(0, math.ceil(seconds / FAST_POLL_SECONDS))
    return FAST_POLLS + math.ceil((seconds - fast) / POLL_SECONDS)


def _sleep_step() -> str:
    """The shell step of a remote wait loop counting looks in ``$i``."""
    return (
        f"d={FAST_POLL_SECONDS}; [ $i -ge {FAST_POLLS} ] && d={POLL_SECONDS}; sleep $d; i=$((i+1))"
    )


KILL_VERIFY_SECONDS = 5.0
START_TIMEOUT_SECONDS = 30.0
LISTING = "listing the agent processes"
STEP_TIMEOUT_SECONDS = 60.0
"""The longest one remote inspection command may take."""

_ALIVE = """alive() {
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  case "$st" in Z|X|'') return 1;; esac
}"""
"""Whether a pid is a live process (a zombie is not); a signalled one counts until it is gone."""

# One function per record: prints "NAME PID STATE", STATE one of agent, gone, foreign, exiting,
# nopid (the file holds no pid). Nothing for a missing pid file.
_PROBE = r"""probe() {
  [ -f "$2" ] || return 0
  probe_pid "$1" "$(tr -dc 0-9 < "$2" 2>/dev/null)" "$3"
}
probe_pid() {
  pid=$2
  [ -n "$pid" ] || { echo "$1 0 nopid"; return 0; }
  [ "$pid" != 0 ] || return 0
  [ -r "/proc/$pid/stat" ] || { echo "$1 $pid gone"; return 0; }
  st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
  case "$st" in Z|X|'') echo "$1 $pid gone"; return 0;; esac
  cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)
  [ -n "$cmd" ] || { echo "$1 $pid exiting"; return 0; }
  case "$cmd" in *"$3"*) echo "$1 $pid agent";; *) echo "$1 $pid foreign";; esac
}
"""


@dataclass(frozen=True)
class _Record:
    name: str
    pid: int
    state: str


class SshConnector(Connector):
    """Agent processes on a remote host, reached over SSH."""

    kind = "ssh"

    def __init__(
        self,
        pool: ssh.SshPool | None = None,
        *,
        find: ssh.FindHost | None = None,
        pin: PinKey | None = None,
    ) -> None:
        self.pool = pool or ssh.default_pool()
        self.find = find
        self.pin = pin

    # ---- plumbing ------------------------------------------------------------------------------

    def connection(self, host: HostInfo) -> ssh.SshConnection:
        """A live, verified connection to ``host`` from the pool."""
        return self.pool.get(host, find=self.find, pin=self.pin)

    def sh(
        self,
        host: HostInfo,
        script: str,
        *,
        what: str,
        timeout: float = STEP_TIMEOUT_SECONDS,
        token: CancellationToken | None = None,
    ) -> ssh.CommandResult:
        """Run a shell script on ``host`` (``what`` it does, for messages: "listing the agent
        processes"). The pool hands out only live connections: one lost midway is closed by
        the failing command and replaced by the next one."""
        return self.connection(host).run(script, timeout=timeout, token=token, label=what)

    def _kind(self, host: HostInfo) -> AgentKind:
        try:
            return agent_kind(host.agent_kind)
        except ArgumentError as exc:
            raise HostError(f"host {host.id} ({host.name}): {exc}", target=str(host.id)) from None

    def _probe_calls(self, kind: AgentKind, home: str) -> str:
        """Shell lines that print "NAME PID STATE" for each recorded process (after _PROBE)."""
        if kind.pid_file is not None:
            return "".join(
                f"probe {shlex.quote(p)} {kind.render(kind.pid_file, home, p)} "
                f"{shlex.quote(home)}\n"
                for p in kind.processes
            )
        # The status command's pid must be a live process; it need not name the home.
        assert kind.status is not None
        return "".join(
            f"probe_pid {shlex.quote(p)} "
            f"\"$({kind.render(kind.status, home, p)} | tr -dc 0-9)\" ''\n"
            for p in kind.processes
        )

    def _parse(self, kind: AgentKind, stdout: str) -> list[_Record]:
        records = []
        for line in stdout.splitlines():
            parts = line.split()
            if len(parts) < 2 or parts[0] not in kind.processes:
                continue
            pid = int(parts[1]) if parts[1].isdigit() else 0
            records.append(_Record(parts[0], pid, parts[2] if len(parts) > 2 else "gone"))
        order = {name: i for i, name in enumerate(kind.processes)}
        return sorted(records, key=lambda r: order[r.name])

    def _records(self, host: HostInfo, token: CancellationToken | None = None) -> list[_Record]:
        kind = self._kind(host)
        calls = self._probe_calls(kind, host.agent_home)
        result = self.sh(host, _PROBE + calls, what=LISTING, token=token)
        if not result.ok:
            raise HostError(
                f"cannot list the agent processes on host {host.id} ({host.name}): {_tail(result)}",
                target=str(host.id),
            )
        return self._parse(kind, result.stdout)

    def _remove_records(self, host: HostInfo, names: list[str]) -> None:
        kind = self._kind(host)
        if kind.pid_file is None or not names:
            return
        files = " ".join(kind.render(kind.pid_file, host.agent_home, n) for n in names)
        self.sh(host, f"rm -f {files}", what="removing the pid files of stopped processes")

    def _signal_and_wait(
        self,
        host: HostInfo,
        records: list[_Record],
        signal: str,
        seconds: float,
        token: CancellationToken | None,
        forget: Sequence[_Record] = (),
    ) -> list[_Record]:
        """Send ``signal`` to ``records`` (TERM: the kind's stop command, if it has one), wait
        on the host until they are gone or ``seconds`` passed, remove the records of the gone
        ones and of ``forget``: one remote command. Returns the survivors."""
        kind = self._kind(host)
        home = host.agent_home
        pids = " ".join(str(r.pid) for r in records)
        if signal == "TERM" and kind.stop is not None:
            send = "; ".join(f"{kind.render(kind.stop, home, r.name)} 2>&1" for r in records)
        else:
            send = f"kill -{signal} {pids} 2>&1"
        rounds = _rounds(seconds)
        script = [
            _ALIVE,
            f"{send}; true",
            "i=0; while :; do left=''; "
            f'for p in {pids}; do alive $p && left="$left $p"; done; '
            f'[ -z "$left" ] && break; [ $i -ge {rounds} ] && break; '
            f"{_sleep_step()}; done",
        ]
        if kind.pid_file is not None:
            for r in [*records, *forget]:
                path = kind.render(kind.pid_file, home, r.name)
                script.append(
                    f'alive {r.pid} || {{ [ "$(tr -dc 0-9 < {path} 2>/dev/null)" = '
                    f"{r.pid} ] && rm -f {path}; }}"
                    if r in records
                    else f"rm -f {path}"
                )
        script.append('echo "left:$left"')
        what = f"sending SIG{signal} to the agent processes and waiting for them to end"
        result = self.sh(
            host, "\n".join(script), what=what, timeout=seconds + STEP_TIMEOUT_SECONDS, token=token
        )
        if "Operation not permitted" in result.stdout + result.stderr:
            raise HostError(
                f"not allowed to send SIG{signal} to the OCP agent of host {host.id} "
                f"({host.name}); log in as the agent's user (--ssh-user)",
                target=str(host.id),
            )
        line = next((x for x in result.stdout.splitlines() if x.startswith("left:")), None)
        if line is None:
            raise HostError(
                f"could not {what} on host {host.id} ({host.name}): {_tail(result)}",
                target=str(host.id),
            )
        left = {int(p) for p in line[len("left:") :].split()}
        return [r for r in records if r.pid in left]

    # ---- the Connector interface ---------------------------------------------------------------

    def agent_processes(self, host: HostInfo) -> list[AgentProcess]:
        """The recorded agent processes of ``host``, with whether each is really alive."""
        return [AgentProcess(r.pid, r.name, r.state == "agent") for r in self._records(host)]

    def stop_agent(
        self,
        host: HostInfo,
        *,
        grace: float,
        token: CancellationToken | None,
        log: logging.Logger,
    ) -> StopReport:
        """SIGTERM (or the kind's stop command), wait ``grace``, SIGKILL survivors, verify."""
        if grace < 0:
            raise ArgumentError(f"the stop grace period must be >= 0 seconds, got {grace}")
        if token is not None:
            token.raise_if_cancelled()
        log.info("Getting all OCP agent processes on host %d (%s)", host.id, describe(host))
        records = self._records(host, token)
        live = [r for r in records if r.state == "agent"]
        stale = [r for r in records if r.state != "agent"]
        for r in stale:
            why = {"nopid": "holds no pid", "foreign": "belongs to another program"}
            log.info(
                "Removing stale record of %s: pid %d %s",
                r.name,
                r.pid,
                why.get(r.state, "is not running"),
            )
        if not live:
            self._remove_records(host, [r.name for r in stale])
            log.info("No OCP agent process is running on host %d, nothing to stop", host.id)
            return StopReport(host.id, stale=tuple(r.name for r in stale))
        for r in live:
            log.info("Stopping OCP agent process %s, pid=%d, signal=SIGTERM", r.name, r.pid)
        try:
            remaining = self._signal_and_wait(host, live, "TERM", grace, token, forget=stale)
        except CancelledError:
            log.warning(
                "Stop of the OCP agent on host %d interrupted: %s", host.id, token and token.reason
            )
            raise
        survivors: list[_Record] = []
        if remaining:
            for r in remaining:
                log.warning(
                    "OCP agent process %s, pid=%d, still runs %.1f s after SIGTERM, signal=SIGKILL",
                    r.name,
                    r.pid,
                    grace,
                )
            survivors = self._signal_and_wait(host, remaining, "KILL", KILL_VERIFY_SECONDS, None)
        if survivors:
            listed = ", ".join(f"{r.name} (pid={r.pid})" for r in survivors)
            raise HostError(
                f"could not stop the OCP agent on host {host.id} ({host.name}): {listed} still "
                f"running {KILL_VERIFY_SECONDS:.0f} s after SIGKILL; inspect them on the host "
                "and retry the subtask",
                target=str(host.id),
            )
        report = StopReport(
            host.id,
            terminated=tuple(r.name for r in live if r not in remaining),
            killed=tuple(r.name for r in remaining),
            stale=tuple(r.name for r in stale),
        )
        log.info(report.summary())
        return report

    def start_agent(self, host: HostInfo, *, log: logging.Logger) -> list[int]:
        """Start the processes that are not running; return every pid once all run."""
        kind = self._kind(host)
        home = host.agent_home
        running = {r.name: r.pid for r in self._records(host) if r.state == "agent"}
        missing = [p for p in kind.processes if p not in running]
        for name in kind.processes:
            if name in running:
                log.info("OCP agent process %s is already running, pid=%d", name, running[name])
        if not missing:
            return [running[p] for p in kind.processes]
        # One remote command: launch what is missing, then wait there until every process
        # runs, a launched one died, or the start timeout passed.
        parts = []
        for name in missing:
            log.info("Starting OCP agent process %s on host %d", name, host.id)
            start = kind.render(kind.start, home, name)
            if kind.status is None:
                log_file = kind.render(kind.log_file, home, name)
                parts.append(
                    f"{{ setsid nohup {start} >> {log_file} 2>&1 < /dev/null & }}; "
                    f'launched="$launched {shlex.quote(name)}:$!"'
                )
            else:
                parts.append(f"(\n{start}\n) || exit $?")  # the command may end with &
        quoted = shlex.quote(home)
        rounds = _rounds(START_TIMEOUT_SECONDS)
        script = "\n".join(
            [
                _PROBE,
                _ALIVE,
                f"mkdir -p {quoted}/run {quoted}/log && cd {quoted} || exit 1",
                "launched=''",
                *parts,
                "i=0; while :; do",
                f"  out=$({self._probe_calls(kind, home).strip()}\n)",
                "  n=$(printf '%s\\n' \"$out\" | grep -c ' agent$')",
                f'  [ "$n" -ge {len(kind.processes)} ] && break',
                "  dead=''; for l in $launched; do alive ${l#*:} || dead=\"$dead ${l%%:*}\"; done",
                '  [ -n "$dead" ] && break',
                f"  [ $i -ge {rounds} ] && break; {_sleep_step()}",
                "done",
                'printf \'%s\\n\' "$out"; echo "dead:$dead"',
            ]
        )
        result = self.sh(
            host,
            script,
            what="starting the agent processes",
            timeout=START_TIMEOUT_SECONDS + STEP_TIMEOUT_SECONDS,
        )
        dead_line = next((x for x in result.stdout.splitlines() if x.startswith("dead:")), None)
        if not result.ok or dead_line is None:
            raise HostError(
                f"could not start the OCP agent on host {host.id} ({host.name}): {_tail(result)}",
                target=str(host.id),
            )
        running = {r.name: r.pid for r in self._parse(kind, result.stdout) if r.state == "agent"}
        absent = [p for p in kind.processes if p not in running]
        if absent:
            dead = dead_line[len("dead:") :].split()
            name = dead[0] if dead else absent[0]
            tail = self.last_log_line(host, name) or "(nothing logged)"
            why = (
                "exited while starting"
                if dead
                else f"is not running {START_TIMEOUT_SECONDS:.0f} s after its start"
            )
            raise HostError(
                f"OCP agent process {name} of host {host.id} ({host.name}) {why}; its last log "
                f"line: {tail}",
                target=str(host.id),
            )
        for name in missing:
            log.info("Started OCP agent process %s, pid=%d", name, running[name])
        return [running[p] for p in kind.processes]

    def restart_pos_proxy(self, host: HostInfo, *, log: logging.Logger) -> None:
        """Check over SSH that the agent can be started again (folders writable, programs
        there) before a restart stops it; changes nothing."""
        kind = self._kind(host)
        home = shlex.quote(host.agent_home)
        log.info("Checking that the OCP agent of host %d can be started again", host.id)
        if kind.status is not None:
            return
        checks = [f"mkdir -p {home}/run {home}/log", f"test -w {home}/run", f"test -w {home}/log"]
        programs = [kind.render(kind.start, host.agent_home, p).split()[0] for p in kind.processes]
        checks += [
            f"test -x {prog} || {{ echo 'missing program' {prog}; exit 1; }}" for prog in programs
        ]
        result = self.sh(host, " && ".join(checks), what="checking the agent home")
        if not result.ok:
            raise HostError(
                f"the OCP agent of host {host.id} ({host.name}) could not be started again: "
                f"{_tail(result) or 'its run/log folders are not writable'}; fix the agent home "
                "on the host, then retry the subtask",
                target=str(host.id),
            )
        log.info("Agent home %s on host %d is ready for a restart", host.agent_home, host.id)

    def last_log_line(self, host: HostInfo, process: str) -> str:
        """The last line the process logged on the host ("" if none)."""
        kind = self._kind(host)
        try:
            result = self.sh(
                host,
                kind.render(kind.last_log, host.agent_home, process) + " 2>/dev/null",
                what="reading the agent's log",
            )
        except HostError:
            return ""
        lines = result.stdout.strip().splitlines()
        return lines[-1].strip() if lines else ""


def _tail(result: ssh.CommandResult) -> str:
    text = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return text[-1] if text else f"exit status {result.exit_status}"


STUB_SOURCE = Path(__file__).with_name("agent_stub.py")


def install_agent_stub(
    connector: SshConnector, host: HostInfo, *, python: str = "python3"
) -> list[str]:
    """Install dagtask's stand-in OCP agent on a remote host: ``{home}/bin/<process>`` for each
    process of the host's kind, so that the agent templates have real processes to stop and
    start (tests, demos, trying dagtask out). Returns the installed paths."""
    kind = connector._kind(host)
    home = host.agent_home
    conn = connector.connection(host)
    setup = f"mkdir -p {shlex.quote(home)}/bin {shlex.quote(home)}/run {shlex.quote(home)}/log"
    result = conn.run(setup)
    if not result.ok:
        raise HostError(f"cannot create {home} on host {host.id}: {_tail(result)}")
    body = STUB_SOURCE.read_bytes()
    script = f"#!/usr/bin/env {python}\n".encode() + body
    paths = []
    for name in kind.processes:
        path = f"{home}/bin/{name}"
        conn.upload(script, path, mode=0o755)
        paths.append(path)
    return paths
