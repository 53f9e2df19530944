"""Optional peer benchmark: dagtask's workloads run through DBOS Transact (the ``dbos`` package).

Usage, in a venv of its own (``setup_dbos_venv.sh``; this file never imports dagtask)::

    python benchmarks/peers/dbos_bench.py [--db sqlite|URL] [--workload NAME ...] [--repeat N]

Each run is a fresh interpreter on a fresh DBOS system database: a temp SQLite file (the default)
or a scratch PostgreSQL database ``dbos_bench_<hex>``, dropped after. One JSON line per workload
(medians of the runs), then a table. Exit code 1 only when a workload could not run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dbos import DBOS, DBOSConfig, Queue

Figures = dict[str, float]
Params = dict[str, Any]

# The shapes of benchmarks/run.py.
OCP3_STEPS: tuple[str, ...] = ("Prepare stop OCP agent", "Stop all OCP agent processes")
OCP3_STEPS += ("Finish OCP agent operation",)
OCP3_TASKS = 200
CHAIN_LENGTH = 1000
FAN_WIDTH = 1000
LAYERS, WIDTH, LATTICE_SEED = 100, 100, 42
SLEEP_JOBS, SLEEP_WORKERS, SLEEP_SECONDS = 100, 16, 0.05

SETTLE_SECONDS = 1.5
"""Idle time after DBOS.launch() and register_queue(), before the clock starts: DBOS's queue
manager looks for new queues once a second and then starts the queue's worker thread."""
TIMEOUT = 900.0
"""Seconds a run may take (``--timeout``): a guard against a hung run, not a target."""
CHILD_URL, CHILD_PRAGMAS = "DBOS_BENCH_CHILD_URL", "DBOS_BENCH_SQLITE_PRAGMAS"
DAGTASK_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")
"""dagtask's SQLite settings (dagtask/store/db.py). DBOS as shipped keeps SQLite's defaults
(rollback journal, synchronous=FULL): ``--sqlite-pragmas dagtask`` applies these instead."""
POLL = float(os.environ.get("DBOS_BENCH_POLL", "0.01"))
"""Queue polling and handle ``get_result`` polling interval, seconds (``--poll``). DBOS's default
for both is 1.0 s, which would dominate every figure."""
RUN = "perf_counter from before start_workflow() to get_result() returning (submit included)"
FANOUT = (
    "DBOS queue: the parent workflow enqueues each step with Queue.enqueue() (each a durable "
    "child workflow), then waits on every handle's get_result()"
)
HEADLINES = {
    "ocp3": ("latency_ms_p50", "latency_ms_p99", "tasks_per_s"),
    "chain1k": ("subtasks_per_s", "per_link_ms"),
    "fan1k": ("subtasks_per_s", "run_s"),
    "lattice10k": ("run_s", "subtasks_per_s"),
    "sleep100": ("efficiency", "wall_s"),
}
QUEUES: dict[str, Queue] = {}
"""This process's queues, by name (a workflow enqueues on them)."""
LATTICE_DONE: set[tuple[int, int]] = set()
LATTICE_LOCK = threading.Lock()
CALLS = {"statements": 0, "transactions": 0, "active": 0}
"""SQLAlchemy ``before_cursor_execute`` and ``begin`` events of every engine in this process
while ``active``, all threads included (as benchmarks/run.py counts dagtask's workers)."""
CALLS_LOCK = threading.Lock()


# ---- DBOS functions (registered at import, before DBOS() is built) ------------------------------


@DBOS.step()
def noop(i: int = 0) -> int:
    """The no-op handler (as dagtask.builtin.noop); returns its argument, to be checked."""
    return i


OCP3_FUNCS = [DBOS.step(name=name)(lambda: None) for name in OCP3_STEPS]  # names as dagtask's


@DBOS.step()
def sleep_50ms(i: int) -> int:
    time.sleep(SLEEP_SECONDS)
    return i


@DBOS.step()
def lattice_node(layer: int, i: int, ups: list[int]) -> int:
    """A lattice step: fails if one of its upstreams has not finished (checks the ordering)."""
    with LATTICE_LOCK:
        if missing := [u for u in ups if (layer - 1, u) not in LATTICE_DONE]:
            raise RuntimeError(f"n{layer}-{i} ran before its upstreams {missing}")
        LATTICE_DONE.add((layer, i))
    return i


@DBOS.workflow()
def ocp3_wf() -> int:
    for step in OCP3_FUNCS:
        step()
    return len(OCP3_FUNCS)


@DBOS.workflow()
def chain_wf(length: int) -> int:
    return sum(1 for i in range(length) if noop(i) == i)


def _gather(queue_name: str, calls: Sequence[tuple[Callable[..., int], tuple[Any, ...]]]) -> int:
    """DBOS's durable fan-out: enqueue every call on the queue, then wait for each handle."""
    queue = QUEUES[queue_name]
    handles = [queue.enqueue(func, *args) for func, args in calls]
    return sum(1 for h in handles if h.get_result(polling_interval_sec=POLL) is not None)


@DBOS.workflow()
def fan_wf(width: int) -> int:
    noop()
    done = _gather("fan", [(noop, (i,)) for i in range(width)])
    noop()
    return done + 2


@DBOS.workflow()
def lattice_wf(layers: int, width: int) -> int:
    rng = random.Random(LATTICE_SEED)  # deterministic, so a replay draws the same edges
    done = 0
    for layer in range(layers):
        ups = [rng.sample(range(width), 2) if layer else [] for _ in range(width)]
        # The whole layer ends before the next one is enqueued.
        done += _gather("lattice", [(lattice_node, (layer, i, ups[i])) for i in range(width)])
    return done


@DBOS.workflow()
def sleep_wf(jobs: int) -> int:
    return _gather("sleep", [(sleep_50ms, (i,)) for i in range(jobs)])


def _instrument(sqlite_pragmas: bool) -> None:
    """Count CALLS; with ``sqlite_pragmas``, run dagtask's pragmas on each new connection of
    every pool in this process (DBOS's engine included: DBOS has no setting for them)."""
    import sqlalchemy as sa

    def hook(kind: str) -> Callable[..., None]:
        def count(*_: Any) -> None:
            if CALLS["active"]:
                with CALLS_LOCK:
                    CALLS[kind] += 1

        return count

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        for pragma in DAGTASK_PRAGMAS:
            dbapi_conn.execute(pragma)

    sa.event.listen(sa.Engine, "before_cursor_execute", hook("statements"))
    sa.event.listen(sa.Engine, "begin", hook("transactions"))
    if sqlite_pragmas:
        sa.event.listen(sa.pool.Pool, "connect", on_connect)


def _percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (as benchmarks/run.py)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _rss_mb() -> float:  # peak RSS so far (Linux reports KiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _queue(name: str, concurrency: int) -> None:
    QUEUES[name] = DBOS.register_queue(
        name, worker_concurrency=concurrency, polling_interval_sec=POLL
    )
    time.sleep(SETTLE_SECONDS)


def _timed(want: int, func: Callable[..., int], *args: Any) -> tuple[float, float]:
    """Start the workflow, wait for it, check that ``want`` steps returned: (start_workflow s,
    start to done s). The database calls meanwhile are counted."""
    CALLS["active"] = 1
    t0 = time.perf_counter()
    handle = DBOS.start_workflow(func, *args)
    submit_s = time.perf_counter() - t0
    result = handle.get_result(polling_interval_sec=POLL)
    run_s = time.perf_counter() - t0
    CALLS["active"] = 0
    if result != want:
        raise RuntimeError(f"{func.__name__}: {result} of {want} steps returned")
    return submit_s, run_s


# ---- workloads ----------------------------------------------------------------------------------


def ocp3() -> tuple[Figures, Params]:
    time.sleep(SETTLE_SECONDS)
    latencies: list[float] = []
    CALLS["active"] = 1
    start = time.perf_counter()
    for _ in range(OCP3_TASKS):
        t0 = time.perf_counter()
        handle = DBOS.start_workflow(ocp3_wf)
        if handle.get_result() != len(OCP3_STEPS):
            raise RuntimeError(f"ocp3: workflow {handle.get_workflow_id()} skipped steps")
        latencies.append((time.perf_counter() - t0) * 1000)
    total = time.perf_counter() - start
    CALLS["active"] = 0
    figures = {"tasks_per_s": OCP3_TASKS / total, "latency_ms_max": max(latencies)}
    for pct in (50, 99):
        figures[f"latency_ms_p{pct}"] = _percentile(latencies, pct)
    params: Params = {"tasks": OCP3_TASKS, "subtasks": OCP3_TASKS * len(OCP3_STEPS)}
    params.update(chain=list(OCP3_STEPS), shape="a workflow calling 3 @DBOS.step no-ops")
    params["submit"] = "DBOS.start_workflow() on DBOS's in-process executor (no queue)"
    params["timeouts"] = "none (DBOS step timeouts exist only for async steps)"
    params["latency"] = f"{RUN}, per workflow"
    return figures, params


def chain1k() -> tuple[Figures, Params]:
    time.sleep(SETTLE_SECONDS)
    submit_s, run_s = _timed(CHAIN_LENGTH, chain_wf, CHAIN_LENGTH)
    figures = {"subtasks_per_s": CHAIN_LENGTH / run_s, "per_link_ms": run_s / CHAIN_LENGTH * 1e3}
    figures.update(run_s=run_s, submit_s=submit_s)
    shape = "one workflow calling 1000 @DBOS.step no-ops one after another"
    return figures, {"subtasks": CHAIN_LENGTH, "shape": shape, "run": RUN}


def fan1k() -> tuple[Figures, Params]:
    _queue("fan", FAN_WIDTH)
    count = FAN_WIDTH + 2
    submit_s, run_s = _timed(count, fan_wf, FAN_WIDTH)
    figures = {"subtasks_per_s": count / run_s, "run_s": run_s, "submit_s": submit_s}
    params: Params = {"subtasks": count, "shape": "1 -> 1000 -> 1", "concurrency": FAN_WIDTH}
    params.update(fanout=FANOUT, run=RUN)
    params["concurrency_note"] = (
        "queue worker_concurrency 1000; DBOS runs each dequeued step on a thread of its own "
        "executor (no fixed worker thread count)"
    )
    return figures, params


def lattice10k() -> tuple[Figures, Params]:
    _queue("lattice", WIDTH)
    count = LAYERS * WIDTH
    submit_s, run_s = _timed(count, lattice_wf, LAYERS, WIDTH)
    figures = {"submit_s": submit_s, "run_s": run_s, "peak_rss_mb": _rss_mb()}
    figures["subtasks_per_s"] = count / run_s
    params: Params = {"subtasks": count, "edges": (LAYERS - 1) * WIDTH * 2, "layers": LAYERS}
    params.update(width=WIDTH, upstreams_per_subtask=2, seed=LATTICE_SEED, concurrency=WIDTH)
    params["dependencies"] = (
        "layer by layer: the workflow enqueues a layer's 100 steps and waits for them all before "
        "the next layer (a barrier: stricter than the DAG's edges); each step is given its 2 "
        "upstreams (random.Random(42), rng.sample(range(100), 2)) and fails if one is not done"
    )
    params.update(fanout=FANOUT, run=RUN)
    return figures, params


def sleep100() -> tuple[Figures, Params]:
    _queue("sleep", SLEEP_WORKERS)
    _, wall = _timed(SLEEP_JOBS, sleep_wf, SLEEP_JOBS)
    ideal = SLEEP_JOBS * SLEEP_SECONDS / SLEEP_WORKERS
    best = math.ceil(SLEEP_JOBS / SLEEP_WORKERS) * SLEEP_SECONDS
    figures = {"efficiency": ideal / wall, "wall_s": wall, "best_possible_wall_s": best}
    figures["best_possible_efficiency"] = ideal / best
    params: Params = {"subtasks": SLEEP_JOBS, "sleep_s": SLEEP_SECONDS, "workers": SLEEP_WORKERS}
    params["fanout"] = FANOUT + "; queue worker_concurrency 16; steps call time.sleep(0.05)"
    params["efficiency"] = f"(100 x 0.05 s / 16) / wall, wall = {RUN}"
    return figures, params


WORKLOADS: dict[str, Callable[[], tuple[Figures, Params]]] = {
    w.__name__: w for w in (ocp3, chain1k, fan1k, lattice10k, sleep100)
}


def _child(name: str, url: str, pragmas: str) -> dict[str, Any]:
    """Launch DBOS on ``url``, run one workload, shut DBOS down."""
    sqlite = url.startswith("sqlite")
    config: DBOSConfig = {"name": "dagtask-peer-bench", "system_database_url": url}
    config["log_level"], config["application_version"] = "WARNING", "bench"
    rss_start = _rss_mb()
    _instrument(sqlite and pragmas == "dagtask")
    DBOS(config=config)
    DBOS.launch()
    try:
        cpu = time.process_time()
        figures, params = WORKLOADS[name]()
        figures["workload_cpu_s"] = time.process_time() - cpu
    finally:
        DBOS.destroy(destroy_registry=True)
    figures.setdefault("peak_rss_mb", _rss_mb())
    for kind in ("statements", "transactions"):
        figures[f"{kind}_per_subtask"] = CALLS[kind] / params["subtasks"]
    params["db_calls"] = "SQLAlchemy statement / begin events, all threads, measured span"
    if sqlite:
        shipped = "DBOS as shipped (SQLite defaults)"
        params["sqlite_pragmas"] = list(DAGTASK_PRAGMAS) if pragmas == "dagtask" else shipped
    params.update(poll_s=POLL, rss_at_start_mb=round(rss_start, 1))
    return {"figures": figures, "params": params}


# ---- parent: fresh database, spawn, aggregate, report -------------------------------------------


@contextmanager
def _database(db: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(URL, description) of a fresh system database, deleted or dropped afterwards."""
    if db == "sqlite":
        folder = tempfile.mkdtemp(prefix="dbos-bench-")
        try:
            where = {"dialect": "sqlite", "database": "fresh temp SQLite file (deleted after)"}
            yield f"sqlite:///{folder}/dbos.sqlite", where
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    import sqlalchemy as sa

    url = sa.make_url(db)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"--db must be 'sqlite' or a PostgreSQL URL, not {url.drivername}")
    name = f"dbos_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            version = conn.exec_driver_sql("SHOW server_version").scalar()
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            fresh = url.set(database=name).render_as_string(hide_password=False)
            where = {"dialect": "postgresql", "server_version": str(version)}
            yield fresh, {**where, "database": f"fresh database {name} (dropped after)"}
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def _spawn(name: str, db: str, pragmas: str) -> dict[str, Any]:
    """One run of ``name`` in a fresh interpreter on a fresh database (or an error)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name]
    env = dict(os.environ, DBOS_BENCH_POLL=str(POLL), **{CHILD_PRAGMAS: pragmas})
    try:
        with _database(db) as (url, where):
            env[CHILD_URL] = url  # not on the command line, where `ps` would show a password
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {TIMEOUT:.0f} s"}
    except Exception as exc:  # e.g. the scratch database could not be made: report, go on
        return {"error": f"database setup: {type(exc).__name__}: {exc}"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0 or "figures" not in result:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        reason = result.get("error", "no result")
        return {"error": f"workload process exited {proc.returncode}: {reason} [{tail}]"}
    result["db"] = where
    return result


def _combine(name: str, runs: list[dict[str, Any]], version: str) -> dict[str, Any]:
    """One JSON line: the median of each figure over the runs, parameters and database."""
    line: dict[str, Any] = {"peer": "dbos", "version": version, "workload": name}
    errors = [run["error"] for run in runs if "error" in run]
    if errors:
        return {**line, "error": errors[0]}
    keys = runs[0]["figures"].keys()
    medians = {k: statistics.median(run["figures"][k] for run in runs) for k in keys}
    line["figures"] = {k: round(v, 4) for k, v in medians.items()}
    line.update(params=runs[0]["params"], db=runs[0]["db"], repeat=len(runs))
    if len(runs) > 1:
        line["runs"] = [{k: round(v, 4) for k, v in r["figures"].items()} for r in runs]
    return line


def _dagtask_figures(path: str | None) -> dict[str, Figures]:
    """Figures per workload from a saved ``python -m benchmarks.run`` output (its JSON lines)."""
    if path is None:
        return {}
    lines = [json.loads(t) for t in Path(path).read_text().splitlines() if t.startswith("{")]
    return {line["workload"]: line["figures"] for line in lines if "figures" in line}


def _table(lines: list[dict[str, Any]], dagtask: dict[str, Figures]) -> str:
    rows: list[tuple[str, ...]] = [
        ("workload", "figure", "dbos", *(("dagtask",) if dagtask else ()))
    ]
    for line in lines:
        for figure in HEADLINES[line["workload"]]:
            value = "error" if "error" in line else f"{line['figures'][figure]:.4g}"
            row: tuple[str, ...] = (line["workload"], figure, value)
            if dagtask:
                theirs = dagtask.get(line["workload"], {}).get(figure)
                row += ("-" if theirs is None else f"{theirs:.4g}",)
            rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    text = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(t.rstrip() for t in text)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/peers/dbos_bench.py",
        description="dagtask's benchmark workloads run through DBOS Transact (optional peer "
        "figures): one JSON line per workload, then a table.",
    )
    parser.add_argument(
        "--db", default="sqlite",
        help="'sqlite' (default: a fresh temp file per run) or a PostgreSQL URL: each run then "
        "gets a scratch database dbos_bench_<hex> on that server, dropped after",
    )  # fmt: skip
    parser.add_argument(
        "--workload", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS),
        metavar="NAME", help=f"workloads (default: all: {' '.join(WORKLOADS)})",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="runs per workload (median)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="s per run (900)")
    parser.add_argument(
        "--sqlite-pragmas", choices=("dbos", "dagtask"), default="dbos",
        help="dbos: DBOS's SQLite settings as shipped (default); dagtask: dagtask's "
        "(journal_mode=WAL, synchronous=NORMAL), for a like-for-like storage setting",
    )  # fmt: skip
    parser.add_argument(
        "--poll", type=float, default=POLL,
        help=f"queue and get_result polling interval, s (default {POLL}; DBOS's is 1.0)",
    )  # fmt: skip
    parser.add_argument(
        "--compare", metavar="FILE",
        help="saved output of `python -m benchmarks.run`, shown beside DBOS's figures",
    )  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.poll <= 0:
        parser.error("--repeat must be at least 1 and --poll positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected workloads; return 1 only if one of them could not run."""
    global POLL, TIMEOUT
    args = _parse(argv)
    if args.child:
        try:
            result = _child(args.child, os.environ[CHILD_URL], os.environ[CHILD_PRAGMAS])
        except Exception as exc:
            traceback.print_exc()
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
            return 1
        print(json.dumps(result), flush=True)
        return 0
    POLL, TIMEOUT = args.poll, args.timeout
    # A SIGTERM (e.g. from `timeout`) becomes SystemExit: temp files and scratch databases go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    version = importlib.metadata.version("dbos")
    machine = {"cores": os.cpu_count(), "python": sys.version.split()[0]}
    lines = []
    for name in args.workload:
        load = os.getloadavg()[0]
        runs = [_spawn(name, args.db, args.sqlite_pragmas) for _ in range(args.repeat)]
        line = _combine(name, runs, version)
        line.update(machine=machine, loadavg_1min_before=round(load, 2))
        print(json.dumps(line), flush=True)
        lines.append(line)
    print()
    print(_table(lines, _dagtask_figures(args.compare)))
    return 1 if any("error" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
