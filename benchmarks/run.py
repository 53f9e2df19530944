"""Benchmark runner: ``python -m benchmarks.run [--db URL] [--workload NAME ...]``.

Each workload runs in its own subprocess (so its peak RSS is its own) on a fresh database: a temp
SQLite file, or a fresh schema of the ``--db`` PostgreSQL database. One JSON line per workload goes
to stdout, then a table comparing each figure with its target. The targets are informative: the
exit code is 0 whatever the figures (1 only when a workload could not run, its task did not
succeed, or it stalled).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
NOOP = "dagtask.builtin.noop"
SLEEP = "benchmarks.handlers.sleep_50ms"
SLEEP_SECONDS = 0.05
WAIT_TIMEOUT = 600.0
"""A guard against a hung engine, not a target: a workload that takes this long is an error."""
BIG_WAIT_TIMEOUT = 1800.0
"""The same guard for big100k (114 s when it was added; use the shell's timeout to stop sooner)."""
SETTLE_SECONDS = 0.5
STALL_CHECK_SECONDS = 10.0
STALL_SECONDS = 30.0
"""A task whose history does not grow for this long is reported as stalled (an engine bug)."""
POOLS = ("shared", "task", "processes")
CHILD_URL = "DAGTASK_BENCH_CHILD_URL"

Figures = dict[str, float]
Params = dict[str, Any]

if TYPE_CHECKING:  # dagtask is imported in the child processes only
    from dagtask import Engine, TaskInfo, TaskTemplate


@dataclass(frozen=True)
class Target:
    """A figure's target: ``figure <= value`` or ``figure >= value``."""

    figure: str
    op: str
    value: float

    def met(self, measured: float) -> bool:
        """Whether ``measured`` reaches the target."""
        return measured <= self.value if self.op == "<=" else measured >= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass(frozen=True)
class Workload:
    """A named benchmark: what it runs and the targets of its figures."""

    name: str
    run: Callable[[Engine, str], tuple[Figures, Params]]
    targets: tuple[Target, ...]
    workers: int | None = None
    """Fixed worker thread count, or None to use ``--workers``. With ``--pool processes`` it is
    the total over the processes, split between them."""
    default: bool = True
    """Whether it runs when no ``--workload`` is given."""
    server_targets: tuple[Target, ...] | None = None
    """The targets on PostgreSQL (MariaDB's figures are reported against them too), when they
    differ from ``targets``, which are SQLite's."""

    def targets_for(self, dialect: str | None) -> tuple[Target, ...]:
        """The targets of the figures measured on ``dialect``."""
        if dialect in (None, "sqlite") or self.server_targets is None:
            return self.targets
        return self.server_targets


# ---- statement and transaction counts (in the child process) -----------------------------------


class DbCalls:
    """Statements and transactions of this process's database engines, counted while active.

    SQLAlchemy event hooks: ``before_cursor_execute`` for statements (one ``executemany`` is one
    statement; on SQLite the explicit ``BEGIN [IMMEDIATE]`` is one too; a DBAPI ``commit()`` is
    not), ``begin`` for transactions (read-only ones included), ``commit`` and ``rollback``. Each
    engine object is hooked once, even when the Database uses it in two roles. Each thread
    counts into its own dict, so no increment is lost and none waits for a lock; the
    workload's own thread (submit and wait) is told apart from the others (the workers).
    """

    KINDS = ("statements", "begin_statements", "transactions", "commits", "rollbacks")

    def __init__(self) -> None:
        self.active = False
        self.main = threading.get_ident()
        self._local = threading.local()
        self._tallies: list[tuple[int, dict[tuple[str, str], int]]] = []
        self._guard = threading.Lock()
        self.engines: list[str] = []

    def attach(self, database: Any) -> None:
        """Hook every distinct SQLAlchemy engine of ``database`` (a dagtask ``Database``)."""
        import sqlalchemy as sa

        from dagtask.store.prepared import observe_statements

        found: dict[int, tuple[sa.Engine, list[str]]] = {}
        roles = ["engine", "hot_engine", "read_engine"]
        roles += [
            k for k, v in vars(database).items() if isinstance(v, sa.Engine) and k not in roles
        ]
        for role in roles:
            engine = getattr(database, role, None)
            if isinstance(engine, sa.Engine):
                found.setdefault(id(engine), (engine, []))[1].append(role)
        for engine, names in found.values():
            label = "+".join(names)
            self.engines.append(label)
            # Counted without taking the hot path off the driver (dagtask.store.prepared).
            observe_statements(engine, self._on_statement(label))
            for kind, event in (
                ("transactions", "begin"),
                ("commits", "commit"),
                ("rollbacks", "rollback"),
            ):
                sa.event.listen(engine, event, self._on_event(kind, label))

    def _tally(self) -> dict[tuple[str, str], int] | None:
        if not self.active or getattr(self._local, "paused", False):
            return None
        tally: dict[tuple[str, str], int] | None = getattr(self._local, "tally", None)
        if tally is None:
            tally = self._local.tally = {}
            with self._guard:
                self._tallies.append((threading.get_ident(), tally))
        return tally

    def _on_statement(self, label: str) -> Callable[..., None]:
        def hook(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            tally = self._tally()
            if tally is not None:
                key = ("statements", label)
                tally[key] = tally.get(key, 0) + 1
                if statement[:5].upper() == "BEGIN":
                    key = ("begin_statements", label)
                    tally[key] = tally.get(key, 0) + 1

        return hook

    def _on_event(self, kind: str, label: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            tally = self._tally()
            if tally is not None:
                tally[kind, label] = tally.get((kind, label), 0) + 1

        return hook

    @contextmanager
    def measuring(self) -> Iterator[None]:
        """Count inside this block (the workload's measured run) only.

        The garbage of the set-up (Alembic's migrations on a fresh database, the template) is
        collected first: otherwise a full collection lands inside the measured run, and which
        run pays for it depends on how much the set-up allocated (one more migration cost
        sleep100 40 ms of its 0.41 s).
        """
        gc.collect()
        self.active = True
        try:
            yield
        finally:
            self.active = False

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Do not count this thread's statements here (the runner's own stall probe)."""
        self._local.paused = True
        try:
            yield
        finally:
            self._local.paused = False

    def total(self, kind: str) -> int:
        with self._guard:
            tallies = [tally for _, tally in self._tallies]
        return sum(n for tally in tallies for (k, _), n in tally.items() if k == kind)

    def summary(self) -> dict[str, Any]:
        """Per kind: the total, and its split by thread (the workload's own thread, which
        submits and waits, or the others: the workers) and engine, e.g. ``other_threads
        read_engine``."""
        with self._guard:
            tallies = list(self._tallies)
        out: dict[str, Any] = {"engines_hooked": self.engines}
        for kind in self.KINDS:
            split: dict[str, int] = {}
            for ident, tally in tallies:
                who = "workload_thread" if ident == self.main else "other_threads"
                for (k, label), n in tally.items():
                    if k == kind:
                        split[f"{who} {label}"] = split.get(f"{who} {label}", 0) + n
            out[kind] = {"total": sum(split.values()), **dict(sorted(split.items()))}
        return out


CALLS = DbCalls()
"""This process's counter (hooked to the Engine's database by the child process)."""


# ---- helpers (run in the child process) --------------------------------------------------------


def _finish_status(engine: Engine, task_id: int, pool: str, guard: float = WAIT_TIMEOUT) -> None:
    """:func:`_finish` with the cheap wait (``Engine.wait_status``): nothing of the task is read
    back, as a caller that only needs the outcome does."""
    from dagtask import TaskTimeoutError

    if pool == "task":
        engine.run_task(task_id, guard)
        return
    if pool == "shared":
        engine.start()
    deadline = time.monotonic() + guard
    last_event, last_progress = 0, time.monotonic()
    while True:
        try:
            left = deadline - time.monotonic()
            engine.wait_status(task_id, max(0.0, min(STALL_CHECK_SECONDS, left)))
            return
        except TaskTimeoutError:
            if time.monotonic() >= deadline:
                raise
        # Only reached when the task is slow: one probe per STALL_CHECK_SECONDS, not counted.
        with CALLS.paused():
            newest = _newest_event(engine, task_id, last_event)
        if newest > last_event:
            last_event, last_progress = newest, time.monotonic()
        elif time.monotonic() - last_progress > STALL_SECONDS:
            counts = Counter(sub.status.value for sub in engine.get(task_id).subtasks)
            raise RuntimeError(
                f"task {task_id} stalled: no status change for {STALL_SECONDS:.0f} s; "
                f"its subtasks are {dict(counts)}"
            )


def _newest_event(engine: Engine, task_id: int, after: int) -> int:
    """The id of the task's newest history event (one indexed read, not the whole history)."""
    try:
        import sqlalchemy as sa

        from dagtask.store.schema import task_event

        query = sa.select(sa.func.max(task_event.c.id)).where(task_event.c.task_id == task_id)
        with engine.database.read() as conn:
            return int(conn.execute(query).scalar() or 0)
    except (ImportError, AttributeError):  # the store's layout changed: read the new events
        events = engine.events(task_id, after)
        return events[-1].id if events else after


def _start_and_settle(engine: Engine) -> None:
    """Start the background workers as an application would at boot, before any submit.

    The pause lets every thread make its first (empty) claim and go idle, so that start-up is
    not counted in a submit-to-done figure.
    """
    engine.start()
    time.sleep(SETTLE_SECONDS)


def _started(pool: str) -> str:
    """When the workers of a submit-to-done workload start, for its parameters."""
    if pool == "processes":
        return "worker processes started and registered before the first submit"
    if pool == "task":
        return "per task by Engine.run_task(), inside the timed span (stop included)"
    return f"{SETTLE_SECONDS} s before the first submit"


def _check(task: TaskInfo) -> None:
    """Refuse figures from a task that did not succeed in full."""
    from dagtask import SubtaskStatus, TaskStatus

    failed = [s.name for s in task.subtasks if s.status is not SubtaskStatus.SUCCESSFUL]
    if task.status is not TaskStatus.SUCCESSFUL or failed:
        raise RuntimeError(
            f"task {task.id} ended {task.status.value}; subtasks not SUCCESSFUL: {failed[:5]}"
        )


def _check_counts(engine: Engine, task_id: int) -> int:
    """:func:`_check` by counting in SQL (a 100k-subtask task is not read back): the task's
    subtask count, refusing figures unless the task and every subtask are SUCCESSFUL."""
    import sqlalchemy as sa

    from dagtask import TaskStatus
    from dagtask.store.schema import subtask

    query = (
        sa.select(subtask.c.status, sa.func.count())
        .where(subtask.c.task_id == task_id)
        .group_by(subtask.c.status)
    )
    with engine.database.read() as conn:
        counts = {str(status): int(n) for status, n in conn.execute(query)}
    status = engine.wait_status(task_id, 0)
    if status is not TaskStatus.SUCCESSFUL or set(counts) != {"SUCCESSFUL"}:
        raise RuntimeError(f"task {task_id} ended {status.value}; its subtasks are {counts}")
    return counts["SUCCESSFUL"]


def _percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed_run(engine: Engine, template: TaskTemplate, pool: str) -> tuple[float, float, int]:
    """Submit with no worker running, then time from starting the workers to the task's end.

    Returns (submit seconds, run seconds, subtask count).
    """
    with CALLS.measuring():
        t0 = time.perf_counter()
        task_id = engine.submit_id(template)
        submit_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        _finish_status(engine, task_id, pool)
        run_s = time.perf_counter() - t1
    done = engine.get(task_id, outputs=False)  # read back for the check, outside the figures
    _check(done)
    if pool == "processes":
        # The workers were running all along: the run is what the store recorded, from the
        # moment the task was created to its end (this process only polls for the end).
        assert done.finish_time is not None and done.create_time is not None
        run_s = (done.finish_time - done.create_time).total_seconds()
    return submit_s, run_s, len(done.subtasks)


# ---- workloads -----------------------------------------------------------------------------------

OCP3_STEPS = (
    ("Prepare stop OCP agent", 60),
    ("Stop all OCP agent processes", 600),
    ("Finish OCP agent operation", 60),
)
OCP3_TASKS = 200


def ocp3(engine: Engine, pool: str) -> tuple[Figures, Params]:
    """200 Stop-OCP-agent-shaped no-op tasks back to back (submit, wait, submit the next)."""
    from dagtask import TemplateBuilder

    builder = TemplateBuilder("Stop OCP agent (benchmark, no-op)")
    previous: list[str] = []
    for name, timeout in OCP3_STEPS:
        previous = [builder.add(name, NOOP, after=previous, timeout=timeout)]
    template = builder.build()
    if pool == "shared":
        _start_and_settle(engine)
    latencies: list[float] = []
    ids: list[int] = []
    with CALLS.measuring():
        start = time.perf_counter()
        for _ in range(OCP3_TASKS):
            t0 = time.perf_counter()
            # The cheap pair a caller that submits many tasks uses: nothing read back.
            task_id = engine.submit_id(template)
            _finish_status(engine, task_id, pool, guard=60)
            latencies.append((time.perf_counter() - t0) * 1000)
            ids.append(task_id)
        total = time.perf_counter() - start
    done = [engine.get(task_id) for task_id in ids]  # checked after the measurement
    recorded: list[float] = []
    for task in done:
        _check(task)
        assert task.finish_time is not None
        recorded.append((task.finish_time - task.create_time).total_seconds() * 1000)
    figures = {
        "tasks_per_s": OCP3_TASKS / total,
        "latency_ms_p50": _percentile(latencies, 50),
        "latency_ms_p99": _percentile(latencies, 99),
        "latency_ms_max": max(latencies),
        "recorded_ms_p50": _percentile(recorded, 50),
        "recorded_ms_p99": _percentile(recorded, 99),
    }
    params = {
        "tasks": OCP3_TASKS,
        "subtasks": OCP3_TASKS * len(OCP3_STEPS),
        "subtasks_per_task": len(OCP3_STEPS),
        "chain": [name for name, _ in OCP3_STEPS],
        "timeouts_s": [timeout for _, timeout in OCP3_STEPS],
        "handler": NOOP,
        "workers_started": _started(pool),
        "latency": "perf_counter from before submit_id() to wait_status() returning; "
        "recorded_ms = the task's stored finish_time - create_time",
    }
    return figures, params


CHAIN_LENGTH = 1000


def chain1k(engine: Engine, pool: str) -> tuple[Figures, Params]:
    """One task: a chain of 1,000 no-op subtasks."""
    from dagtask import TemplateBuilder

    builder = TemplateBuilder("benchmark chain1k")
    previous: list[str] = []
    for i in range(CHAIN_LENGTH):
        previous = [builder.add(f"link-{i:04d}", NOOP, after=previous)]
    submit_s, run_s, count = _timed_run(engine, builder.build(), pool)
    figures = {
        "subtasks_per_s": count / run_s,
        "per_link_ms": run_s / count * 1000,
        "run_s": run_s,
        "submit_s": submit_s,
    }
    return figures, {"subtasks": count, "shape": "chain", "handler": NOOP}


FAN_WIDTH = 1000


def fan1k(engine: Engine, pool: str) -> tuple[Figures, Params]:
    """One task: 1 -> 1,000 parallel no-op subtasks -> 1, task concurrency 1,000."""
    from dagtask import TemplateBuilder

    builder = TemplateBuilder("benchmark fan1k", concurrency=FAN_WIDTH)
    root = builder.add("fan-out", NOOP)
    middle = [builder.add(f"branch-{i:04d}", NOOP, after=[root]) for i in range(FAN_WIDTH)]
    builder.add("fan-in", NOOP, after=middle)
    submit_s, run_s, count = _timed_run(engine, builder.build(), pool)
    figures = {"subtasks_per_s": count / run_s, "run_s": run_s, "submit_s": submit_s}
    params = {
        "subtasks": count,
        "shape": "1 -> 1000 -> 1",
        "concurrency": FAN_WIDTH,
        "concurrency_note": "task concurrency 1000, so all 1000 branches are READY at once "
        "and the worker threads are the only limit",
        "handler": NOOP,
    }
    return figures, params


LAYERS = 100
WIDTH = 100
LATTICE_SEED = 42


def _lattice(name: str, layers: int) -> tuple[TaskTemplate, float]:
    """``layers`` x WIDTH no-op subtasks, each below the first layer linked to 2 distinct
    subtasks of the layer above drawn with ``random.Random(42)``; and the seconds it took."""
    from dagtask import TemplateBuilder

    rng = random.Random(LATTICE_SEED)
    digits = len(str(layers - 1))
    builder = TemplateBuilder(name, concurrency=WIDTH)
    t0 = time.perf_counter()
    for layer in range(layers):
        for i in range(WIDTH):
            ups = rng.sample(range(WIDTH), 2) if layer else []
            after = [f"n{layer - 1:0{digits}d}-{u:02d}" for u in ups]
            builder.add(f"n{layer:0{digits}d}-{i:02d}", NOOP, after=after)
    template = builder.build()
    return template, time.perf_counter() - t0


def lattice10k(engine: Engine, pool: str) -> tuple[Figures, Params]:
    """100 layers x 100 no-op subtasks, each linked to 2 random subtasks of the layer above."""
    template, build_s = _lattice("benchmark lattice10k", LAYERS)
    submit_s, run_s, count = _timed_run(engine, template, pool)
    figures = {
        "submit_s": submit_s,
        "run_s": run_s,
        "peak_rss_mb": _rss_mb(),
        "subtasks_per_s": count / run_s,
        "template_build_s": build_s,
    }
    params = {
        "subtasks": count,
        "edges": len(template.edges()),
        "layers": LAYERS,
        "width": WIDTH,
        "upstreams_per_subtask": 2,
        "seed": LATTICE_SEED,
        "concurrency": WIDTH,
        "handler": NOOP,
        "submit": "engine.submit_id() of the built template (its build is template_build_s)",
    }
    return figures, params


BIG_LAYERS = 1000


def big100k(engine: Engine, pool: str) -> tuple[Figures, Params]:
    """1,000 layers x 100 no-op subtasks (lattice10k's shape, ten times deeper), submit to done.

    The workers run before the submit, as in an application; ``run_s`` is submit to done.
    """
    template, build_s = _lattice("benchmark big100k", BIG_LAYERS)
    if pool == "shared":
        _start_and_settle(engine)
    with CALLS.measuring():
        t0 = time.perf_counter()
        task_id = engine.submit_id(template)
        submit_s = time.perf_counter() - t0
        _finish_status(engine, task_id, pool, guard=BIG_WAIT_TIMEOUT)
        run_s = time.perf_counter() - t0
    peak_rss_mb = _rss_mb()  # before the check below reads anything
    count = _check_counts(engine, task_id)
    figures = {
        "submit_s": submit_s,
        "run_s": run_s,
        "peak_rss_mb": peak_rss_mb,
        "subtasks_per_s": count / run_s,
        "template_build_s": build_s,
    }
    params = {
        "subtasks": count,
        "edges": len(template.edges()),
        "layers": BIG_LAYERS,
        "width": WIDTH,
        "upstreams_per_subtask": 2,
        "seed": LATTICE_SEED,
        "concurrency": WIDTH,
        "handler": NOOP,
        "workers_started": _started(pool),
        "submit": "engine.submit_id() of the built template (its build is template_build_s)",
        "run": "perf_counter from before submit_id() to wait_status() returning (submit included)",
    }
    return figures, params


SLEEP_JOBS = 100
SLEEP_WORKERS = 16


def sleep100(engine: Engine, pool: str) -> tuple[Figures, Params]:
    """100 independent subtasks sleeping 50 ms each on 16 worker threads."""
    from dagtask import TemplateBuilder

    builder = TemplateBuilder("benchmark sleep100", concurrency=SLEEP_JOBS)
    for i in range(SLEEP_JOBS):
        builder.add(f"sleep-{i:03d}", SLEEP)
    template = builder.build()
    if pool == "shared":
        _start_and_settle(engine)
    with CALLS.measuring():
        t0 = time.perf_counter()
        task_id = engine.submit_id(template)
        _finish_status(engine, task_id, pool)
        wall = time.perf_counter() - t0
    done = engine.get(task_id, outputs=False)
    _check(done)
    assert done.finish_time is not None
    ideal = SLEEP_JOBS * SLEEP_SECONDS / SLEEP_WORKERS
    waves = math.ceil(SLEEP_JOBS / SLEEP_WORKERS)
    figures = {
        "efficiency": ideal / wall,
        "wall_s": wall,
        "best_possible_wall_s": waves * SLEEP_SECONDS,
        "best_possible_efficiency": ideal / (waves * SLEEP_SECONDS),
        "recorded_wall_s": (done.finish_time - done.create_time).total_seconds(),
    }
    params = {
        "subtasks": SLEEP_JOBS,
        "sleep_s": SLEEP_SECONDS,
        "concurrency": SLEEP_JOBS,
        "handler": SLEEP,
        "workers_started": _started(pool),
        "efficiency": "(100 x 0.05 s / 16) / wall, wall = submit() to wait() returning; "
        "recorded_wall_s = the task's stored finish_time - create_time",
    }
    return figures, params


# The targets are the speed issue's (issue 12): SQLite first, then PostgreSQL (one worker process
# unless said; fan1k's with 2 worker processes, `--pool processes`).
WORKLOADS = {
    w.name: w
    for w in (
        Workload(
            "ocp3",
            ocp3,
            (Target("latency_ms_p50", "<=", 1),),
            server_targets=(Target("latency_ms_p50", "<=", 3),),
        ),
        Workload(
            "chain1k",
            chain1k,
            (Target("subtasks_per_s", ">=", 5000),),
            server_targets=(Target("subtasks_per_s", ">=", 2000),),
        ),
        Workload(
            "fan1k",
            fan1k,
            (Target("subtasks_per_s", ">=", 10000),),
            server_targets=(Target("subtasks_per_s", ">=", 8000),),
        ),
        Workload(
            "lattice10k",
            lattice10k,
            (Target("run_s", "<=", 1.5),),
            server_targets=(Target("run_s", "<=", 3),),
        ),
        Workload("sleep100", sleep100, (Target("efficiency", ">=", 0.88),), workers=SLEEP_WORKERS),
        Workload(
            "big100k",
            big100k,
            (
                Target("submit_s", "<=", 3),
                Target("run_s", "<=", 15),
                Target("peak_rss_mb", "<=", 400),
            ),
            default=False,
        ),
    )
}
DEFAULT_WORKLOADS = [w.name for w in WORKLOADS.values() if w.default]


# ---- child: one workload in this process ---------------------------------------------------------


@contextmanager
def _worker_processes(engine: Engine, url: str, slots: Sequence[int]) -> Iterator[None]:
    """One `dagtask worker` process on ``url`` per item of ``slots`` (its concurrency), all
    registered before this yields."""
    env = dict(os.environ, DAGTASK_DB_URL=url)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "dagtask", "worker"),
                *("--concurrency", str(concurrency), "--name", f"bench-{i}", "--poll", "0.05"),
            ],
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        for i, concurrency in enumerate(slots)
    ]
    count = len(procs)
    try:
        deadline = time.monotonic() + 60
        while sum(w.status == "ACTIVE" for w in engine.store.workers()) < count:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("the worker processes did not start")
            time.sleep(0.05)
        time.sleep(SETTLE_SECONDS)
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _split(total: int, parts: int) -> list[int]:
    """``total`` slots over ``parts`` processes, as evenly as possible (16 over 3: 6, 5, 5)."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def _child(name: str, url: str, workers: int, pool: str, processes: int) -> dict[str, Any]:
    """Run one workload and return its result (figures, parameters, database)."""
    from dagtask import Engine

    workload = WORKLOADS[name]
    # --workers is per process; a workload's fixed count (sleep100's 16) is the total.
    slots = _split(workers, processes) if workload.workers else [workers] * processes
    if min(slots) < 1:
        raise ValueError(
            f"{name} has {workers} worker slots in all: use at most that many processes"
        )
    rss_start = _rss_mb()
    engine = Engine(url, workers=0 if pool == "processes" else workers)
    CALLS.attach(engine.database)
    try:
        dialect = engine.database.dialect
        version = engine.database.engine.dialect.server_version_info or ()
        db = {"dialect": dialect, "server_version": ".".join(str(v) for v in version)}
        cpu = time.process_time()
        if pool == "processes":
            with _worker_processes(engine, url, slots):
                figures, params = workload.run(engine, pool)
        else:
            figures, params = workload.run(engine, pool)
        figures["workload_cpu_s"] = time.process_time() - cpu
    finally:
        engine.close()
    figures.setdefault("peak_rss_mb", _rss_mb())
    subtasks = params["subtasks"]
    figures["statements_per_subtask"] = CALLS.total("statements") / subtasks
    figures["transactions_per_subtask"] = CALLS.total("transactions") / subtasks
    calls = CALLS.summary()
    calls["counted"] = (
        "this process only (submit and wait): the worker processes' statements are not counted"
        if pool == "processes"
        else "this process (submit, wait and the worker threads) during the measured run"
    )
    params.update(workers=workers, pool=pool, rss_at_start_mb=round(rss_start, 1), db_calls=calls)
    if pool == "processes":
        params.update(worker_processes=processes, concurrency_per_process=slots)
    return {"figures": figures, "params": params, "db": db}


# ---- parent: spawn, aggregate, report ------------------------------------------------------------


def _machine() -> dict[str, Any]:
    import sqlalchemy

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "sqlalchemy": sqlalchemy.__version__,
        "platform": platform.platform(),
        "dagtask_commit": _commit(),
    }


def _commit() -> str:
    """The checked-out commit of this repository (``-dirty`` if files were changed)."""
    try:
        proc = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return proc.stdout.strip()


@contextmanager
def _database(db: str | None, as_is: bool) -> Iterator[tuple[str, str]]:
    """(URL, description) for one run: a fresh temp SQLite file, a fresh PostgreSQL schema in
    ``db`` (dropped afterwards), or ``db`` as it is."""
    import sqlalchemy as sa

    if db is None:
        folder = tempfile.mkdtemp(prefix="dagtask-bench-")
        try:
            yield f"sqlite:///{folder}/bench.db", "fresh temp SQLite file (deleted after)"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    url = sa.make_url(db)
    if as_is or url.get_backend_name() != "postgresql":
        yield db, "--db as it is"
        return
    # A schema of its own: the runner's workers cannot claim other users' subtasks, and
    # nothing is left behind in a shared database.
    schema = f"dagtask_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        try:
            fresh = url.update_query_dict({"options": f"-csearch_path={schema}"})
            yield fresh.render_as_string(hide_password=False), "fresh schema (dropped after)"
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    finally:
        admin.dispose()


def _spawn(
    name: str, db: str | None, as_is: bool, workers: int, pool: str, processes: int
) -> dict[str, Any]:
    """Run one workload in a fresh interpreter, on a fresh database (see :func:`_database`)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "benchmarks.run", "--child", name]
    command += ["--workers", str(workers), "--pool", pool, "--processes", str(processes)]
    with _database(db, as_is) as (url, where):
        env[CHILD_URL] = url  # not on the command line, where `ps` would show a password
        proc = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0 or "figures" not in result:
        reason = result.get("error", "no result (see stderr)")
        return {"error": f"workload process exited {proc.returncode}: {reason}"}
    result["db"]["database"] = where
    return result


def _rounded(figures: Figures) -> Figures:
    return {k: round(v, 4) for k, v in figures.items()}


def _combine(workload: Workload, runs: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    """One JSON line: median figures over the runs, parameters, database and targets."""
    line: dict[str, Any] = {"workload": workload.name}
    errors = [run["error"] for run in runs if "error" in run]
    if errors:
        line.update(error=errors[0], workers=workers)
        return line
    keys = runs[0]["figures"].keys()
    figures = {k: statistics.median(run["figures"][k] for run in runs) for k in keys}
    line["figures"] = _rounded(figures)
    dialect = runs[0]["db"]["dialect"]
    line["targets"] = {t.figure: str(t) for t in workload.targets_for(dialect)}
    line["params"] = runs[0]["params"]
    line["db"] = runs[0]["db"]
    line["repeat"] = len(runs)
    if len(runs) > 1:
        line["figures_note"] = "median of the runs"
        line["runs"] = [_rounded(run["figures"]) for run in runs]
    return line


def _table(lines: list[dict[str, Any]]) -> str:
    """Each target's figure and verdict; statements and transactions per subtask on the
    workload's first row (``*``: the submitting process only, with ``--pool processes``)."""
    rows = [("workload", "figure", "measured", "target", "", "stmts/subtask", "txns/subtask")]
    for line in lines:
        workload = WORKLOADS[line["workload"]]
        calls = ("-", "-")
        if "error" not in line:
            mark = "*" if line["params"].get("pool") == "processes" else ""
            figures = line["figures"]
            calls = (
                f"{figures['statements_per_subtask']:.3g}{mark}",
                f"{figures['transactions_per_subtask']:.3g}{mark}",
            )
        for target in workload.targets_for(line.get("db", {}).get("dialect")):
            if "error" in line:
                rows.append((workload.name, target.figure, "error", str(target), "-", *calls))
            else:
                value = line["figures"][target.figure]
                verdict = "PASS" if target.met(value) else "MISS"
                row = (workload.name, target.figure, f"{value:.4g}", str(target), verdict)
                rows.append((*row, *calls))
            calls = ("", "")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(t.rstrip() for t in text)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Run dagtask benchmarks; print one JSON line per workload and a table. "
        "Targets are informative: the exit code does not depend on the figures.",
    )
    parser.add_argument(
        "--db",
        help="database URL (default: a fresh temp SQLite file per run); with a PostgreSQL URL "
        "each run gets a fresh schema in that database, dropped afterwards",
    )
    parser.add_argument(
        "--db-as-is",
        action="store_true",
        help="use the --db database (and its current schema) as it is, existing tasks and all",
    )
    parser.add_argument(
        "--workload",
        nargs="+",
        choices=list(WORKLOADS),
        default=DEFAULT_WORKLOADS,
        metavar="NAME",
        help=f"workloads to run (default: {' '.join(DEFAULT_WORKLOADS)}; also: "
        f"{' '.join(w for w in WORKLOADS if w not in DEFAULT_WORKLOADS)}, which takes minutes)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=64,  # dagtask.config.DEFAULT_WORKERS (not imported: the parent stays light)
        help="worker threads (default 64, the Engine's; per process with --pool processes); "
        "sleep100 always uses 16 in all, split over the processes with --pool processes",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per workload; figures are their median"
    )
    parser.add_argument(
        "--pool",
        choices=POOLS,
        default="shared",
        help="shared: Engine.start() background workers (default); task: workers that claim "
        "only the benchmark's own task (Engine.run_task), for --db-as-is on a database others "
        "are using; processes: --processes separate `dagtask worker` processes (the "
        "many-workers setup), started before the first submit",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        metavar="N",
        help="with --pool processes: how many `dagtask worker` processes run the tasks, each "
        "with --workers slots (default 2)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1 or args.repeat < 1:
        parser.error("--workers and --repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected workloads; return 1 only if one of them could not run."""
    args = _parse(argv)
    if args.child:
        try:
            result = _child(
                args.child, os.environ[CHILD_URL], args.workers, args.pool, args.processes
            )
        except Exception as exc:
            traceback.print_exc()
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
            return 1
        print(json.dumps(result), flush=True)
        return 0
    # Turn a SIGTERM into SystemExit so that temp files, fresh schemas and children are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    machine = _machine()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    lines = []
    for name in args.workload:
        workload = WORKLOADS[name]
        workers = workload.workers or args.workers
        load = os.getloadavg()[0]
        runs = [
            _spawn(name, args.db, args.db_as_is, workers, args.pool, args.processes)
            for _ in range(args.repeat)
        ]
        line = _combine(workload, runs, workers)
        line.update(machine=machine, loadavg_1min_before=round(load, 2), date=date)
        print(json.dumps(line), flush=True)
        lines.append(line)
    print()
    print(_table(lines))
    print("(targets are informative; the exit code does not depend on them)")
    return 1 if any("error" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
