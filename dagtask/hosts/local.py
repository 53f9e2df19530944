"""The "local" connector: a host's OCP agent is a set of OS processes on this machine.

Each agent process records itself in ``<agent_home>/run/<name>.pid`` (like OCP's ocp_agentd,
ocp_mgragent and ocp_monagent). A record is trusted only while it names a live process whose
command line contains the agent home: a zombie counts as dead, and a pid that the kernel gave to
an unrelated process is a stale record, removed without signalling anybody. Needs Linux ``/proc``.

Each process logs to ``<agent_home>/log/<name>.log``. A file ``<agent_home>/FAIL_START`` makes
every start of that agent fail (see :mod:`dagtask.hosts.agent_stub`), for tests and demos.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from dagtask.errors import ArgumentError, HostError
from dagtask.handlers import CancellationToken, CancelledError
from dagtask.hosts.connector import AGENT_PROCESSES, AgentProcess, Connector, StopReport
from dagtask.models import HostInfo

POLL_SECONDS = 0.05
KILL_VERIFY_SECONDS = 5.0
"""How long SIGKILLed processes get to disappear before the stop is reported as failed."""
START_TIMEOUT_SECONDS = 30.0
"""How long a started agent process gets to write its pid file (Python start-up under load)."""
AGENT_STUB = str(Path(__file__).with_name("agent_stub.py"))

# Popen objects of the agent processes this interpreter started: polling them reaps our own
# children (so they do not linger as zombies) without stealing anybody else's exit status.
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


class _State(Enum):
    GONE = "gone"
    AGENT = "agent"
    FOREIGN = "foreign"
    EXITING = "exiting"
    """Live but with an empty command line: a process tearing down (or a kernel thread)."""


@dataclass(frozen=True)
class _Record:
    name: str
    path: Path
    pid: int  # 0 when the file does not hold a pid


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat, or None if there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain ") ".
    fields = data.rpartition(b")")[2].split()
    return fields[0].decode() if fields else None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _poll_child(pid: int) -> None:
    with _children_lock:
        child = _children.get(pid)
    if child is not None and child.poll() is not None:
        with _children_lock:
            _children.pop(pid, None)


def _reap_children() -> None:
    """Reap the agent processes this interpreter started that have exited meanwhile.

    A start that failed leaves exited children behind (no pid file names them any more); without
    this they would stay zombies for as long as the engine runs.
    """
    with _children_lock:
        pids = list(_children)
    for pid in pids:
        _poll_child(pid)


def _probe(pid: int, homes: frozenset[str]) -> _State:
    """Whether ``pid`` is a live agent process of the agent home(s) ``homes``."""
    if pid <= 0:
        return _State.GONE
    _poll_child(pid)
    state = _proc_state(pid)
    if state is None:
        return _State.GONE
    if state in ("Z", "X"):
        # Our own child started by a caller (not via start_agent): reap it. Someone else's
        # zombie (ChildProcessError) is dead all the same.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return _State.GONE
    cmdline = _cmdline(pid)
    if not cmdline:
        return _State.EXITING
    if homes.isdisjoint(cmdline):
        return _State.FOREIGN
    return _State.AGENT


def _homes(home: Path) -> frozenset[str]:
    return frozenset({str(home), str(home.resolve())})


def _read_pid(path: Path) -> int | None:
    """The pid in ``path``; 0 if the file holds something else, None if it is missing."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def _records(home: Path) -> list[_Record]:
    order = {name: index for index, name in enumerate(AGENT_PROCESSES)}
    records = []
    for path in (home / "run").glob("*.pid"):
        if not path.is_file():
            continue
        pid = _read_pid(path)
        if pid is not None:
            records.append(_Record(path.stem, path, pid))
    return sorted(records, key=lambda r: (order.get(r.name, len(order)), r.name))


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def agent_home(host: HostInfo) -> Path:
    """The host's agent home as an absolute path."""
    return Path(host.agent_home).expanduser().absolute()


def _spawn(home: Path, name: str, extra_args: tuple[str, ...]) -> subprocess.Popen[bytes]:
    try:
        (home / "run").mkdir(parents=True, exist_ok=True)
        (home / "log").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HostError(
            f"cannot prepare the agent home {home} ({exc.strerror}); fix the host's agent_home "
            "or the permissions of its folders"
        ) from exc
    # Run by file path, not with -m: -m would import the dagtask package first (the engine,
    # SQLAlchemy, pydantic: ~0.6 s per process). -P keeps the script's folder off sys.path.
    command = [sys.executable, "-P", AGENT_STUB, "--home", str(home)]
    command += ["--name", name, *extra_args]
    with open(home / "log" / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=home,
            start_new_session=True,  # a daemon: no signal from our terminal reaches it
        )
    with _children_lock:
        _children[proc.pid] = proc
    return proc


def _last_log_line(home: Path, name: str) -> str:
    """The last non-empty line of ``<home>/log/<name>.log`` ("" if there is none)."""
    try:
        with open(home / "log" / f"{name}.log", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))  # a tail is enough
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _await_ready(home: Path, name: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait until ``proc`` wrote its pid file, i.e. installed its signal handlers."""
    path = home / "run" / f"{name}.pid"
    while _read_pid(path) != proc.pid:
        code = proc.poll()
        if code is not None:
            log_file = home / "log" / f"{name}.log"
            tail = _last_log_line(home, name)  # a Python traceback ends with the error
            raise HostError(
                f"OCP agent process {name} exited with code {code} while starting; "
                f"see {log_file}: {tail or '(empty log)'}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise HostError(
                f"OCP agent process {name} (pid={proc.pid}) wrote no pid file to {path} within "
                f"{START_TIMEOUT_SECONDS:.0f} s and was killed; check that the machine is not "
                "overloaded and that the agent home is writable"
            )
        time.sleep(POLL_SECONDS)


def start_agent_process(home: Path, name: str, extra_args: tuple[str, ...] = ()) -> int:
    """Start one agent process under ``home`` and return its pid once it is ready.

    ``extra_args`` go to :mod:`dagtask.hosts.agent_stub` (e.g. ``--ignore-sigterm`` to simulate
    an agent that must be killed).
    """
    proc = _spawn(home, name, extra_args)
    _await_ready(home, name, proc, time.monotonic() + START_TIMEOUT_SECONDS)
    return proc.pid


def _signal(record: _Record, sig: signal.Signals, host: HostInfo) -> None:
    # A pid can only be reused after the process is gone and reaped; the window between the
    # caller's probe and this kill is too short to matter in practice.
    try:
        os.kill(record.pid, sig)
    except ProcessLookupError:
        pass  # it exited on its own meanwhile
    except PermissionError as exc:
        raise HostError(
            f"not allowed to send {sig.name} to OCP agent process {record.name} "
            f"(pid={record.pid}) of host {host.id}; run dagtask as the agent's user",
            target=str(host.id),
        ) from exc


class LocalConnector(Connector):
    """Agent processes on this machine, found through pid files and ``/proc``."""

    kind = "local"

    def __init__(self) -> None:
        if not Path("/proc/self/stat").exists():
            raise HostError(
                "the local connector needs Linux /proc to tell live agent processes from dead "
                "ones; run dagtask on Linux or use another connector"
            )

    def agent_processes(self, host: HostInfo) -> list[AgentProcess]:
        """The processes recorded under ``<agent_home>/run``, with whether each is alive."""
        _reap_children()
        homes = _homes(agent_home(host))
        return [
            AgentProcess(rec.pid, rec.name, _probe(rec.pid, homes) is _State.AGENT)
            for rec in _records(agent_home(host))
        ]

    def start_agent(self, host: HostInfo, *, log: logging.Logger) -> list[int]:
        """Start the agent processes that are not running; return all pids (in start order).

        Returns once every process wrote its pid file. If one fails to start, a
        :class:`HostError` quotes its log, raised only once every process started here is ready
        or gone (none is left half-started to race with the next start); the ones that started
        keep running, and starting again after the fix only starts what is missing.
        """
        _reap_children()
        home = agent_home(host)
        homes = _homes(home)
        records = {rec.name: rec for rec in _records(home)}
        pids: dict[str, int] = {}
        started: list[tuple[str, subprocess.Popen[bytes]]] = []
        for name in AGENT_PROCESSES:
            rec = records.get(name)
            if rec is not None and _probe(rec.pid, homes) is _State.AGENT:
                log.info("OCP agent process %s is already running, pid=%d", name, rec.pid)
                pids[name] = rec.pid
                continue
            if rec is not None:
                _remove(rec.path)  # stale: the new process writes a fresh one when ready
            log.info("Starting OCP agent process %s on host %d", name, host.id)
            started.append((name, _spawn(home, name, ())))
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        failures: list[HostError] = []
        for name, proc in started:
            try:
                _await_ready(home, name, proc, deadline)
            except HostError as exc:
                log.error("%s", exc)
                failures.append(exc)
                continue
            log.info("Started OCP agent process %s, pid=%d", name, proc.pid)
            pids[name] = proc.pid
        if failures:
            more = f" ({len(failures) - 1} more failed likewise)" if len(failures) > 1 else ""
            raise HostError(f"{failures[0]}{more}", target=str(host.id)) from failures[0]
        return [pids[name] for name in AGENT_PROCESSES]

    def restart_pos_proxy(self, host: HostInfo, *, log: logging.Logger) -> None:
        """The stand-in agent has no pos proxy process: check what starting it again needs.

        The agent home's ``run`` and ``log`` folders must exist (they are created) and be
        writable, and the agent launcher must be there; otherwise a :class:`HostError` stops the
        restart before it stops the agent. Changes nothing else, so it is idempotent.
        """
        home = agent_home(host)
        log.info(
            "OCP agent on host %d has no separate pos proxy; checking that agent home %s can "
            "start it again",
            host.id,
            home,
        )
        for folder in (home / "run", home / "log"):
            probe = folder / f".dagtask-probe-{os.getpid()}-{threading.get_ident()}"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise HostError(
                    f"the OCP agent of host {host.id} ({host.name}) could not be started again: "
                    f"cannot write to {folder} ({exc.strerror}); fix the agent home or its "
                    "permissions, then retry the subtask",
                    target=str(host.id),
                ) from exc
        if not Path(AGENT_STUB).is_file():
            raise HostError(
                f"the OCP agent launcher {AGENT_STUB} is missing, so the agent of host {host.id} "
                "could not be started again; reinstall dagtask",
                target=str(host.id),
            )
        log.info("Agent home %s is ready for a restart", home)

    def last_log_line(self, host: HostInfo, process: str) -> str:
        """The last line of ``<agent_home>/log/<process>.log``."""
        return _last_log_line(agent_home(host), process)

    def stop_agent(
        self,
        host: HostInfo,
        *,
        grace: float,
        token: CancellationToken | None,
        log: logging.Logger,
    ) -> StopReport:
        """SIGTERM, wait ``grace`` s, SIGKILL survivors, verify, remove the pid files."""
        if grace < 0:
            raise ArgumentError(f"the stop grace period must be >= 0 seconds, got {grace}")
        if token is not None:
            token.raise_if_cancelled()
        _reap_children()
        home = agent_home(host)
        homes = _homes(home)
        log.info("Getting all OCP agent processes on host %d", host.id)
        live: list[_Record] = []
        stale: list[str] = []
        for rec in _records(home):
            state = _probe(rec.pid, homes)
            if state is _State.AGENT:
                live.append(rec)
                continue
            why = (
                "is not running"
                if state is _State.GONE
                else "belongs to another program (the pid was reused); not touching it"
            )
            if rec.pid == 0:
                why = "holds no pid"
            log.info("Removing stale pid file %s: pid %d %s", rec.path, rec.pid, why)
            _remove(rec.path)
            stale.append(rec.name)
        if not live:
            log.info("No OCP agent process is running on host %d, nothing to stop", host.id)
            return StopReport(host.id, stale=tuple(stale))
        for rec in live:
            log.info("Stopping OCP agent process %s, pid=%d, signal=SIGTERM", rec.name, rec.pid)
            _signal(rec, signal.SIGTERM, host)
        try:
            remaining = _wait_gone(live, homes, grace, token)
        except CancelledError:
            _forget_gone(live, homes)
            reason = token.reason if token is not None else ""
            log.warning("Stop of the OCP agent on host %d interrupted: %s", host.id, reason)
            raise
        for rec in remaining:
            log.warning(
                "OCP agent process %s, pid=%d, still runs %.1f s after SIGTERM, signal=SIGKILL",
                rec.name,
                rec.pid,
                grace,
            )
            _signal(rec, signal.SIGKILL, host)
        survivors = _wait_gone(remaining, homes, KILL_VERIFY_SECONDS, None)
        _forget_gone(live, homes)
        if survivors:
            listed = ", ".join(f"{rec.name} (pid={rec.pid})" for rec in survivors)
            raise HostError(
                f"could not stop the OCP agent on host {host.id} ({host.name}): {listed} still "
                f"running {KILL_VERIFY_SECONDS:.0f} s after SIGKILL, probably stuck in the kernel "
                f"(state D); inspect them with `ps -o pid,stat,wchan,cmd -p "
                f"{','.join(str(rec.pid) for rec in survivors)}` and retry the subtask",
                target=str(host.id),
            )
        report = StopReport(
            host.id,
            terminated=tuple(rec.name for rec in live if rec not in remaining),
            killed=tuple(rec.name for rec in remaining),
            stale=tuple(stale),
        )
        log.info(report.summary())
        return report


def _wait_gone(
    records: list[_Record], homes: frozenset[str], seconds: float, token: CancellationToken | None
) -> list[_Record]:
    """Poll until every record's process is gone or ``seconds`` passed; return the survivors."""
    deadline = time.monotonic() + seconds
    remaining = [rec for rec in records if _running(rec, homes)]
    while remaining:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if token is not None:
            if token.wait(min(POLL_SECONDS, left)):
                token.raise_if_cancelled()
        else:
            time.sleep(min(POLL_SECONDS, left))
        remaining = [rec for rec in remaining if _running(rec, homes)]
    return remaining


def _running(record: _Record, homes: frozenset[str]) -> bool:
    # A signalled process loses its command line while it exits, before it becomes a zombie:
    # it is not gone yet.
    return _probe(record.pid, homes) in (_State.AGENT, _State.EXITING)


def _forget_gone(records: list[_Record], homes: frozenset[str]) -> None:
    """Remove the pid files of the processes that are gone."""
    for rec in records:
        if not _running(rec, homes) and _read_pid(rec.path) == rec.pid:
            _remove(rec.path)
