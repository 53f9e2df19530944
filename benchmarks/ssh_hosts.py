"""Batch stop over SSH hosts: ``python -m benchmarks.ssh_hosts [--hosts 5 20] [--repeat 3]``.

What a "Batch stop OCP agent" over N hosts costs when the hosts are reached over SSH, against
the same batch over N local hosts (the local connector). For each N, one lab of N real sshd
servers on loopback (``tests.ssh.sshd.SshLab``: 127.0.0.11, .12, ...) serves every repeat. Each
repeat gets a fresh temp folder and a fresh SQLite engine, and times four batch stops from
``submit()`` to ``wait()`` returning:

* **ssh cold**: the agents were started over SSH, then the process-wide connection pool was
  closed, so each host pays its SSH connect (TCP, key exchange, key authentication) in the run;
* **ssh warm**: right after, the agents are started again over the pooled connections and the
  batch runs again on them (no connect);
* **local** and **local 2nd**: the same two batches (first task of a fresh engine, then a second
  one after restarting the agents) on N local hosts, as the baseline of cold and of warm.

Each run is checked: the task ends SUCCESSFUL with every subtask SUCCESSFUL, and no agent pid is
alive any more (``/proc/<pid>``). One JSON line per (N, connector) goes to stdout, then a table;
its lines do not start with ``{``. The exit code is 1 only when a run could not be done. Like
``benchmarks.run``, nothing here gates CI, and pytest never collects it (no ``test_`` name).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.run import _check, _machine

if TYPE_CHECKING:  # imported in main(), after the arguments are parsed
    from dagtask import Engine, TaskInfo
    from dagtask.models import HostInfo
    from tests.ssh.sshd import SshLab

TEMPLATE = "Batch stop OCP agent"
STEPS = {
    "prepare": "Prepare stop OCP agent",
    "stop": "Stop all OCP agent processes",
    "finish": "Finish OCP agent operation",
}
"""The batch's stages (each split over the hosts), by the short name the JSON uses."""
WAIT_NODE = "Wait node"
"""The barrier between two stages: its handler only logs, nothing waits a fixed time."""
WAIT_TIMEOUT = 300.0
"""A guard against a hung run, not a target."""
SETTLE_SECONDS = 0.5
"""Between starting the workers and the first submit (as ``benchmarks.run`` does)."""
POLL_INTERVAL = 0.05
MAX_HOSTS = 239
"""``SshLab`` serves at most this many hosts (127.0.0.11 .. 127.0.0.249)."""
PROBES = 5
"""Commands timed on a warm connection per host, for ``command_ms``."""
CONNECTORS = ("local", "local 2nd", "ssh cold", "ssh warm")
BASELINE = {"ssh cold": "local", "ssh warm": "local 2nd"}
"""Which local row an SSH row's per-host overhead is taken against (the same place in its
engine's life: first task, or the second after an agent restart)."""
LOG = logging.getLogger("benchmarks.ssh_hosts")


@dataclass
class Run:
    """One timed batch stop."""

    wall_s: float
    """``submit()`` to ``wait()`` returning."""
    connects: int
    """SSH connections the process-wide pool opened during the run."""
    stages: dict[str, float]
    """Per stage (``prepare``, ``wait_1``, ``stop``, ``wait_2``, ``finish``): last finish minus
    first start over its copies, in seconds."""
    timeline_ms: dict[str, tuple[float, float]]
    """Per stage: (first start, last finish) in ms after the task's ``create_time``."""


@dataclass
class Probe:
    """What one SSH round costs outside a task, measured after the two SSH runs."""

    connect_ms: list[float] = field(default_factory=list)
    """One fresh pooled connection per host, opened one after the other."""
    command_ms: list[float] = field(default_factory=list)
    """``true`` on a warm pooled connection, :data:`PROBES` per host."""


# ---- one run ----------------------------------------------------------------------------------


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def _stages(task: TaskInfo) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Each stage's span (seconds) and its place on the task's timeline (ms after creation)."""
    groups: dict[str, list[Any]] = {}
    waits = sorted(
        (s for s in task.subtasks if s.name == WAIT_NODE),
        key=lambda s: s.start_time or task.create_time,
    )
    for short, name in STEPS.items():
        groups[short] = [s for s in task.subtasks if s.name == name]
    for i, sub in enumerate(waits, 1):
        groups[f"wait_{i}"] = [sub]
    spans: dict[str, float] = {}
    timeline: dict[str, tuple[float, float]] = {}
    order = ["prepare", "wait_1", "stop", "wait_2", "finish"]
    for short in sorted(groups, key=lambda k: order.index(k) if k in order else len(order)):
        subs = groups[short]
        starts = [s.start_time for s in subs if s.start_time is not None]
        finishes = [s.finish_time for s in subs if s.finish_time is not None]
        if not starts or not finishes:
            continue
        first, last = min(starts), max(finishes)
        spans[short] = _seconds(last, first)
        timeline[short] = (
            round(_seconds(first, task.create_time) * 1000, 1),
            round(_seconds(last, task.create_time) * 1000, 1),
        )
    return spans, timeline


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    from tests.processes import is_running

    return is_running(pid)


def _batch_stop(engine: Engine, hosts: Sequence[HostInfo], pids: Sequence[int]) -> Run:
    """Time one "Batch stop OCP agent" over ``hosts``; check it stopped every pid in ``pids``."""
    from dagtask.hosts.ssh import default_pool

    pool = default_pool()
    before = pool.connects
    t0 = time.perf_counter()
    task = engine.submit(TEMPLATE, lists={"host_ids": [str(h.id) for h in hosts]})
    engine.wait_status(task.id, WAIT_TIMEOUT)
    wall = time.perf_counter() - t0
    connects = pool.connects - before
    done = engine.get(task.id)
    _check(done)
    left = [pid for pid in pids if _alive(pid)]
    if left:
        raise RuntimeError(f"task {task.id} ended SUCCESSFUL but agent pids {left} still run")
    spans, timeline = _stages(done)
    return Run(wall, connects, spans, timeline)


def _start_agents(engine: Engine, hosts: Sequence[HostInfo], *, install: bool) -> list[int]:
    """Start every host's agent (installing the stand-in over SSH first if ``install``); mark
    it ONLINE, as a running agent is; every pid."""
    from dagtask.hosts.inventory import AgentStatus
    from tests.ssh.support import start_remote_agent

    pids: list[int] = []
    for host in hosts:
        if install:
            started = start_remote_agent(engine, host)
        else:
            started = engine.services.connector(host).start_agent(host, log=LOG)
        if len(started) != 3 or not all(map(_alive, started)):
            raise RuntimeError(f"the agent of host {host.name} did not start: pids {started}")
        pids += started
        engine.hosts.set_agent_status(host.id, AgentStatus.ONLINE)
    return pids


def _engine(folder: Path, workers: int) -> Engine:
    """A fresh SQLite engine in ``folder`` with its workers started and settled."""
    from dagtask import Engine

    engine = Engine(f"sqlite:///{folder}/bench.db", workers=workers, poll_interval=POLL_INTERVAL)
    engine.start()
    time.sleep(SETTLE_SECONDS)
    return engine


def _in_fresh_folder(fn: Callable[[Path], Any]) -> Any:
    """Run ``fn(folder)`` in a fresh temp folder; afterwards SIGKILL every process with an
    argument under it (agents left by a failed run), close the SSH pool, remove the folder."""
    from dagtask.hosts.ssh import default_pool
    from tests.processes import kill_processes_under

    folder = Path(tempfile.mkdtemp(prefix="dagtask-bench-ssh-"))
    folder.chmod(0o755)
    try:
        return fn(folder)
    finally:
        kill_processes_under(folder)
        default_pool().close()
        shutil.rmtree(folder, ignore_errors=True)


def _probe(engine: Engine, hosts: Sequence[HostInfo]) -> Probe:
    """Time a fresh connect to each host, then :data:`PROBES` ``true`` commands on it."""
    from dagtask.hosts.ssh import default_pool

    pool = default_pool()
    pool.close()
    probe = Probe()
    for host in hosts:
        t0 = time.perf_counter()
        conn = pool.get(host)
        probe.connect_ms.append((time.perf_counter() - t0) * 1000)
        for _ in range(PROBES):
            t0 = time.perf_counter()
            result = conn.run("true")
            probe.command_ms.append((time.perf_counter() - t0) * 1000)
            if not result.ok:
                raise RuntimeError(f"`true` failed on host {host.name}: {result.stderr}")
    return probe


def _home_for(folder: Path, index: int, user: str | None) -> Path:
    """The agent home of host ``index``; made beforehand and given to ``user`` when the SSH
    login is not this process's user (it could not create it in the temp folder)."""
    home = folder / f"agent-{index}"
    if user is not None:
        entry = pwd.getpwnam(user)
        home.mkdir()
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return home


def ssh_repeat(lab: SshLab, workers: int, user: str | None = None) -> tuple[Run, Run, Probe]:
    """One repeat over the lab's hosts: the cold run, the warm run, and the probe; logged in
    as ``user`` (default: the lab's user) with the lab's key."""
    from dagtask.hosts.ssh import default_pool
    from tests.ssh.support import add_ssh_host

    login: dict[str, Any] = {} if user is None else {"user": user}

    def body(folder: Path) -> tuple[Run, Run, Probe]:
        engine = _engine(folder, workers)
        try:
            hosts = [
                add_ssh_host(
                    engine, lab, server, _home_for(folder, i, user), name=f"ssh-{i}", **login
                )
                for i, server in enumerate(lab.servers, 1)
            ]
            pids = _start_agents(engine, hosts, install=True)
            default_pool().close()  # cold: every host connects inside the run
            cold = _batch_stop(engine, hosts, pids)
            pids = _start_agents(engine, hosts, install=False)  # on the pooled connections
            warm = _batch_stop(engine, hosts, pids)
            return cold, warm, _probe(engine, hosts)
        finally:
            engine.close()

    result: tuple[Run, Run, Probe] = _in_fresh_folder(body)
    return result


def local_repeat(count: int, workers: int) -> tuple[Run, Run]:
    """One repeat over ``count`` local hosts: the first batch stop, and the second one after
    restarting the agents."""

    def body(folder: Path) -> tuple[Run, Run]:
        engine = _engine(folder, workers)
        try:
            hosts = [
                engine.hosts.add(f"local-{i}", "127.0.0.1", str(folder / f"agent-{i}"))
                for i in range(1, count + 1)
            ]
            first = _batch_stop(engine, hosts, _start_agents(engine, hosts, install=False))
            second = _batch_stop(engine, hosts, _start_agents(engine, hosts, install=False))
            return first, second
        finally:
            engine.close()

    result: tuple[Run, Run] = _in_fresh_folder(body)
    return result


# ---- aggregate and report ---------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _summary(count: int, connector: str, runs: Sequence[Run]) -> dict[str, Any]:
    """One JSON line's figures: medians over the runs, and every run."""
    stage_names = list(dict.fromkeys(k for run in runs for k in run.stages))
    return {
        "hosts": count,
        "connector": connector,
        "figures": {
            "wall_s": round(_median([r.wall_s for r in runs]), 4),
            "connects": _median([r.connects for r in runs]),
            "stages_s": {
                k: round(_median([r.stages[k] for r in runs if k in r.stages]), 4)
                for k in stage_names
            },
        },
        "runs": [asdict(run) for run in runs],
    }


def _format_table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart (as ``benchmarks.run`` prints)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _table(lines: Sequence[dict[str, Any]]) -> str:
    """N, connector, median wall, per-host overhead against the local baseline, connections,
    and the span of the "Stop all OCP agent processes" stage."""
    rows = [("N", "connector", "wall s", "overhead ms/host", "connects", "stop stage s")]
    walls = {(x["hosts"], x["connector"]): x["figures"]["wall_s"] for x in lines}
    for line in lines:
        count, connector, figures = line["hosts"], line["connector"], line["figures"]
        base = walls.get((count, BASELINE.get(connector, "")))
        overhead = "-" if base is None else f"{(figures['wall_s'] - base) / count * 1000:.1f}"
        stop = figures["stages_s"].get("stop")
        rows.append(
            (
                str(count),
                connector,
                f"{figures['wall_s']:.3f}",
                overhead,
                f"{figures['connects']:g}",
                "-" if stop is None else f"{stop:.3f}",
            )
        )
    return _format_table(rows)


def _probe_line(count: int, probes: Sequence[Probe]) -> dict[str, Any]:
    connect = [ms for p in probes for ms in p.connect_ms]
    command = [ms for p in probes for ms in p.command_ms]
    return {
        "hosts": count,
        "connector": "ssh probe",
        "figures": {
            "connect_ms_median": round(_median(connect), 2),
            "connect_ms_max": round(max(connect), 2),
            "command_ms_median": round(_median(command), 2),
            "command_ms_max": round(max(command), 2),
        },
        "params": {
            "connect": "a fresh pooled connection per host, one after the other, no task running",
            "command": f"`true` on the warm connection, {PROBES} per host",
        },
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ssh_hosts",
        description=f'Time "{TEMPLATE}" over N hosts reached over SSH (real sshd servers on '
        "loopback, cold and warm connection pool) against N local hosts; print one JSON line "
        "per host count and connector, then a table.",
    )
    parser.add_argument(
        "--hosts",
        type=int,
        nargs="+",
        default=[5, 20],
        metavar="N",
        help=f"host counts to run (default: 5 20; at most {MAX_HOSTS})",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per host count; figures are their median"
    )
    parser.add_argument("--workers", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument(
        "--ssh-user",
        metavar="NAME",
        help="log in to the lab's servers as this local user, with the lab's key (default: the "
        "lab's user, root when run as root); every remote command starts that user's login "
        "shell, so its shell startup files are part of the figures",
    )
    args = parser.parse_args(argv)
    if args.workers < 1 or args.repeat < 1:
        parser.error("--workers and --repeat must be at least 1")
    if not all(0 < n <= MAX_HOSTS for n in args.hosts):
        parser.error(f"every --hosts count must be 1..{MAX_HOSTS}")
    if args.ssh_user is not None:
        try:
            pwd.getpwnam(args.ssh_user)
        except KeyError:
            parser.error(f"--ssh-user {args.ssh_user}: no such local user")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every host count; return 1 if a run could not be done."""
    args = _parse(argv)
    # Turn a SIGTERM into SystemExit so that the sshd servers and the temp folders go away.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from tests.ssh.sshd import SshLab, find_sshd

    if find_sshd() is None:
        print("sshd is not installed: apt-get install openssh-server", file=sys.stderr)
        return 1
    machine = _machine()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    lines: list[dict[str, Any]] = []
    failed = False
    for count in args.hosts:
        load = os.getloadavg()[0]
        runs: dict[str, list[Run]] = {name: [] for name in CONNECTORS}
        probes: list[Probe] = []
        try:
            # No password user: the lab would reset the password of the test suite's user.
            with SshLab(count, password_user=False) as lab:
                login = args.ssh_user or lab.user
                for _ in range(args.repeat):
                    cold, warm, probe = ssh_repeat(lab, args.workers, args.ssh_user)
                    runs["ssh cold"].append(cold)
                    runs["ssh warm"].append(warm)
                    probes.append(probe)
                    first, second = local_repeat(count, args.workers)
                    runs["local"].append(first)
                    runs["local 2nd"].append(second)
        except Exception as exc:
            traceback.print_exc()
            print(json.dumps({"hosts": count, "error": f"{type(exc).__name__}: {exc}"}))
            failed = True
            continue
        params = {
            "template": TEMPLATE,
            "workers": args.workers,
            "poll_interval": POLL_INTERVAL,
            "repeat": args.repeat,
            "db": "fresh temp SQLite file per repeat",
            "ssh_user": login,
            "wall": "submit() to wait_status() returning; workers started "
            f"{SETTLE_SECONDS} s before the first submit",
        }
        extra = {"machine": machine, "loadavg_1min_before": round(load, 2), "date": date}
        for name in CONNECTORS:
            line = {**_summary(count, name, runs[name]), "params": params}
            print(json.dumps({**line, **extra}), flush=True)
            lines.append(line)
        print(json.dumps({**_probe_line(count, probes), **extra}), flush=True)
        lines.append(_probe_line(count, probes))
    timed = [line for line in lines if line["connector"] in CONNECTORS]
    if timed:
        print()
        print(_table(timed))
        for line in lines:
            if line["connector"] == "ssh probe":
                f = line["figures"]
                print(
                    f"N={line['hosts']}: one SSH connect {f['connect_ms_median']:.1f} ms "
                    f"(max {f['connect_ms_max']:.1f}), one command on a warm connection "
                    f"{f['command_ms_median']:.1f} ms (max {f['command_ms_max']:.1f}), medians"
                )
        print(
            "overhead ms/host = (ssh wall - local wall) / N; cold against local, warm against "
            "local 2nd (the second batch of an engine)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
