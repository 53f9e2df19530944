"""Console pages: ``python -m benchmarks.console [--db URL] [--tasks 10000] [--subtasks 1000]``.

What the operator console's pages (``dagtask.console``) cost the server on a full database: the
task list over ``--tasks`` tasks, and the detail of three tasks of ``--subtasks`` subtasks each
that ran to the end (so their history holds thousands of events). The issue's figure: each page
answers within 300 ms of server time. The figures are informative, like ``benchmarks.run``'s:
nothing here gates CI, and pytest never collects this module (no ``test_`` name).

Set-up, on a fresh database (a temp SQLite file, or a fresh schema of the ``--db`` PostgreSQL
database, dropped afterwards; another URL is used as it is):

* 70 % of ``--tasks`` small tasks, four templates in turn: one no-op step, a chain of three
  no-op steps, a chain of three whose middle step fails (its last step stays PENDING), one step
  that fails; so about 85 % of them end SUCCESSFUL and 15 % FAILED;
* three big tasks of ``--subtasks`` subtasks: **fan**, one root, ``--subtasks - 2`` parallel
  copies of one step (a split over a list argument, so each copy's context holds the list) and
  one fan-in, drawn as one group node unless expanded; **layered**, 10 layers of
  ``--subtasks / 10`` no-op steps, each below the first linked to 2 distinct steps of the layer
  above (``random.Random(42)``), every node drawn; **layered failed**, the same with the first
  step of the middle layer failing, so the task ends FAILED and its page offers a rollback;
* all of them run by an Engine with ``--workers`` worker threads; then the workers stop and the
  other 30 % of the small tasks are submitted, and stay RUNNING (their roots READY): these are
  the newest, so they fill the list's first pages.

Then the FastAPI app of ``dagtask.api.create_app`` is driven in-process by Starlette's
``TestClient`` (no network), signed in once as an ADMIN user. For each page: one request first,
not timed, in which the SQL statements and transactions of every thread are counted (the
``dagtask.store.prepared.observe_statements`` hooks of ``benchmarks.run.DbCalls``); then
``--repeat`` timed requests. Three figures per request: **server**, from a tiny ASGI wrapper around
the app (routing, the endpoint in Starlette's thread pool, rendering, the response handed to the
client), and **client**, ``perf_counter`` around ``client.get`` (adds the test client's own
work); and the process's CPU time over the request (``time.process_time``, every thread: the
endpoint's and the client's), a figure that other processes sharing the CPU do not inflate as
they do the wall times. No worker runs while pages are timed.

The set-up takes about 40 s on 2 cores with the defaults (SQLite). Output: one JSON line for
the set-up, one per page, then a table with the 300 ms target beside each page, judged on the
server time's p95. ``--profile`` then profiles the slowest page (by server p50) once with
cProfile, inside the endpoint's thread, and prints dagtask's functions by cumulative time, then
the top functions by cumulative and by own time. The exit code is 1 only when the set-up failed
or a page did not answer 200.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import io
import json
import logging
import os
import pstats
import random
import signal
import sqlite3
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from benchmarks.run import CALLS, ROOT, _check, _database, _machine, _percentile

if TYPE_CHECKING:  # imported in main(), after the arguments are parsed
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    from dagtask import Engine, TaskTemplate

NOOP = "dagtask.builtin.noop"
FAIL = "benchmarks.console.fail_on_purpose"
TARGET_MS = 300.0
"""The issue's figure: server time per page."""
FINISHED_SHARE = 0.7
"""Of ``--tasks``: run to the end; the others stay RUNNING."""
LAYERS = 10
SEED = 42
BIG_CONCURRENCY = 100
SPLIT_KEY = "items"
COPY_STEP = "copy"
WAIT_TIMEOUT = 900.0
"""A guard against a hung set-up, not a target."""
USER = "bench-admin"
PASSWORD = "console benchmark password"
SESSION_COOKIE = "dagtask_session"


def fail_on_purpose(ctx: object) -> None:
    """The handler of the failing steps."""
    raise RuntimeError("fails on purpose (benchmarks.console)")


# ---- set-up ------------------------------------------------------------------------------------


def _small_templates() -> list[TaskTemplate]:
    """The four small templates, in the order the tasks take them in turn."""
    from dagtask import TemplateBuilder

    one = TemplateBuilder("console bench: one step")
    one.add("Do it", NOOP)
    three = TemplateBuilder("console bench: three steps")
    three_fail = TemplateBuilder("console bench: three steps, the middle one fails")
    for builder, middle in ((three, NOOP), (three_fail, FAIL)):
        first = builder.add("Prepare", NOOP, timeout=60)
        second = builder.add("Act", middle, after=[first], timeout=600)
        builder.add("Finish", NOOP, after=[second], timeout=60)
    one_fail = TemplateBuilder("console bench: one step that fails")
    one_fail.add("Do it", FAIL)
    # 10 in 20 one step, 7 in 20 three steps, 2 in 20 fail in the middle, 1 in 20 fails.
    order = [one] * 10 + [three] * 7 + [three_fail] * 2 + [one_fail]
    built: dict[int, TaskTemplate] = {}
    return [built.setdefault(id(b), b.build()) for b in order]


def _fan(subtasks: int) -> tuple[TaskTemplate, list[str]]:
    """1 root -> ``subtasks - 2`` copies of one step -> 1 fan-in, and the split's list."""
    from dagtask import TemplateBuilder

    builder = TemplateBuilder("console bench: fan-out", concurrency=BIG_CONCURRENCY)
    root = builder.add("Prepare", NOOP)
    copies = builder.add(COPY_STEP, NOOP, after=[root], split_key=SPLIT_KEY)
    builder.add("Collect", NOOP, after=[copies])
    return builder.build(), [str(i) for i in range(1, subtasks - 1)]


def _layered(subtasks: int, *, failing: bool = False) -> TaskTemplate:
    """:data:`LAYERS` layers of ``subtasks / LAYERS`` no-op steps, each below the first linked
    to 2 distinct steps of the layer above, drawn with ``random.Random(SEED)``; ``failing``: the
    first step of the middle layer fails instead."""
    from dagtask import TemplateBuilder

    width = subtasks // LAYERS
    rng = random.Random(SEED)
    digits = len(str(width - 1))
    name = "console bench: layered" + (", one step fails" if failing else "")
    builder = TemplateBuilder(name, concurrency=BIG_CONCURRENCY)
    for layer in range(LAYERS):
        for i in range(width):
            ups = rng.sample(range(width), min(2, width)) if layer else []
            after = [f"L{layer - 1}-{u:0{digits}d}" for u in ups]
            handler = FAIL if failing and layer == LAYERS // 2 and i == 0 else NOOP
            builder.add(f"L{layer}-{i:0{digits}d}", handler, after=after)
    return builder.build()


@dataclass
class Fixture:
    """What the set-up built."""

    fan: int
    layered: int
    failed: int
    small: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def _wait_all(engine: Engine, ids: Sequence[int]) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT
    for task_id in ids:
        engine.wait_status(task_id, max(1.0, deadline - time.monotonic()))


def populate(engine: Engine, tasks: int, subtasks: int) -> Fixture:
    """Fill the database (see the module's docstring); the workers are stopped on return."""
    from dagtask import TaskStatus

    templates = _small_templates()
    fan_template, items = _fan(subtasks)
    layered_template = _layered(subtasks)
    failing_template = _layered(subtasks, failing=True)
    finished = round(tasks * FINISHED_SHARE)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    small = [engine.submit_id(templates[i % len(templates)]) for i in range(finished)]
    fan = engine.submit_id(fan_template, lists={SPLIT_KEY: items})
    layered = engine.submit_id(layered_template)
    failed = engine.submit_id(failing_template)
    seconds["submit_finished_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # Each failing step logs a WARNING: a few thousand lines of nothing new on stderr.
    attempts_log = logging.getLogger("dagtask.worker.attempts")
    level = attempts_log.level
    attempts_log.setLevel(logging.ERROR)
    engine.start()
    try:
        _wait_all(engine, [*small, fan, layered, failed])
    finally:
        engine.stop()
        attempts_log.setLevel(level)
    seconds["run_finished_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    running = [engine.submit_id(templates[i % len(templates)]) for i in range(tasks - finished)]
    seconds["submit_running_s"] = time.perf_counter() - t0

    fixture = Fixture(fan, layered, failed, small=small + running, seconds=seconds)
    statuses = {
        s.value: engine.list(statuses=[s], size=1).total_elements
        for s in (TaskStatus.RUNNING, TaskStatus.SUCCESSFUL, TaskStatus.FAILED)
    }
    fixture.facts["task_statuses"] = statuses
    fixture.facts["tasks_in_all"] = engine.list(size=1).total_elements
    for label, task_id in (("fan", fan), ("layered", layered), ("layered_failed", failed)):
        task = engine.get(task_id)
        if task_id == failed:
            if task.status is not TaskStatus.FAILED:
                raise RuntimeError(f"task {failed} ended {task.status.value}, not FAILED")
        else:
            _check(task)
        events = engine.history(task_id).events
        fixture.facts[label] = {
            "task_id": task_id,
            "status": task.status.value,
            "subtask_statuses": dict(Counter(s.status.value for s in task.subtasks)),
            "subtasks": len(task.subtasks),
            "links": sum(len(s.upstreams) for s in task.subtasks),
            "history_events": len(events),
            "event_kinds": dict(Counter(type(e).__name__ for e in events).most_common(6)),
        }
    return fixture


def add_user(engine: Engine) -> None:
    """An ADMIN user with :data:`PASSWORD`, hashed at the tests' cheap KDF cost."""
    from dagtask.store.users import UserStore
    from dagtask.users import Role, hash_password

    UserStore(engine.database).add(USER, hash_password(PASSWORD, _cheap()), frozenset({Role.ADMIN}))


def _cheap() -> Any:
    from dagtask.users import ScryptCost

    return ScryptCost(ln=4, r=8, p=1)


# ---- the app, timed --------------------------------------------------------------------------


class ServerTimer:
    """An ASGI wrapper that records how long the wrapped app took over each HTTP request: from
    the request's arrival to the app returning (the response's last body part sent)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.last_s = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.last_s = time.perf_counter() - t0


def build_app(engine: Engine) -> FastAPI:
    """The API and console around ``engine``, with rate limits and login lockouts off."""
    from dagtask.api import ApiSettings, RateLimit, create_app
    from dagtask.api.limits import LoginBackoff

    settings = ApiSettings(
        rate_limit=RateLimit(limit=0),
        server="console-bench",
        password_cost=_cheap(),
        login_backoff=LoginBackoff(account_failures=0, client_failures=0),
    )
    return create_app(engine, settings)


def sign_in(client: TestClient) -> None:
    response = client.post(
        "/login",
        data={"username": USER, "password": PASSWORD, "next": "/tasks"},
        follow_redirects=False,
    )
    if response.status_code != 303 or SESSION_COOKIE not in client.cookies:
        raise RuntimeError(f"sign-in failed: {response.status_code} {response.text[:200]}")


@dataclass(frozen=True)
class Page:
    label: str
    url: str
    what: str


def pages(fixture: Fixture, tasks: int) -> list[Page]:
    """The pages measured, in order."""
    last = max(1, -(-fixture.facts["tasks_in_all"] // 20))
    deep = min(400, last)
    fan, lay = fixture.fan, fixture.layered
    return [
        Page("tasks", "/tasks", f"task list, first page of {tasks:,} tasks (RUNNING ones)"),
        Page("tasks failed", "/tasks?status=FAILED", "task list filtered on FAILED"),
        Page(f"tasks page {deep}", f"/tasks?page={deep}", "task list, a deep page (finished)"),
        Page("tasks rows", "/tasks?fragment=rows", "the list's live-refresh fragment"),
        Page("task fan", f"/tasks/{fan}", "detail of the fan-out (copies drawn as one group)"),
        Page(
            "task fan expanded",
            f"/tasks/{fan}?expand={COPY_STEP}",
            "detail of the fan-out, its copies drawn one by one",
        ),
        Page("task layered", f"/tasks/{lay}", "detail of the layered task (every node drawn)"),
        Page(
            "task layered failed",
            f"/tasks/{fixture.failed}",
            "detail of the layered task with one failed step (rollback offered: its plan)",
        ),
        Page("task fan live", f"/tasks/{fan}?fragment=live", "the detail's live fragment"),
        Page("task layered live", f"/tasks/{lay}?fragment=live", "the detail's live fragment"),
        Page("timeline fan", f"/tasks/{fan}/timeline", "timeline page of the fan-out"),
        Page("timeline layered", f"/tasks/{lay}/timeline", "timeline page of the layered task"),
        Page("counts", "/counts", "RUNNING and FAILED counts (the header's badges)"),
    ]


def _ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(_percentile(values, 50), 2),
        "p95": round(_percentile(values, 95), 2),
        "max": round(max(values), 2),
    }


def measure(client: TestClient, timer: ServerTimer, page: Page, repeat: int) -> dict[str, Any]:
    """One counted request, then ``repeat`` timed ones."""
    before = {k: CALLS.total(k) for k in ("statements", "transactions")}
    CALLS.active = True
    try:
        first = client.get(page.url, follow_redirects=False)
    finally:
        CALLS.active = False
    counted = {k: CALLS.total(k) - v for k, v in before.items()}
    first_server_ms = timer.last_s * 1000
    if first.status_code != 200:
        raise RuntimeError(f"{page.url} answered {first.status_code}: {first.text[:300]}")
    server: list[float] = []
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        response = client.get(page.url, follow_redirects=False)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        server.append(timer.last_s * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{page.url} answered {response.status_code}")
    server_ms = _ms(server)
    return {
        "page": page.label,
        "url": page.url,
        "what": page.what,
        "status": first.status_code,
        "bytes": len(first.content),
        "server_ms": server_ms,
        "client_ms": _ms(wall),
        "cpu_ms": _ms(cpu),
        "first_request_server_ms": round(first_server_ms, 2),
        "statements": counted["statements"],
        "transactions": counted["transactions"],
        "repeat": repeat,
        "target_ms": TARGET_MS,
        "verdict": "PASS" if server_ms["p95"] <= TARGET_MS else "MISS",
    }


# ---- profile -----------------------------------------------------------------------------------


@contextmanager
def profiled_endpoints(profile: cProfile.Profile) -> Iterator[None]:
    """Run what FastAPI sends to Starlette's thread pool under ``profile`` while the block
    lasts: the plain-``def`` endpoints (every console page), and their sync dependencies.

    There a profiler enabled in this thread sees nothing, so the call handed to the pool is
    wrapped to profile itself in the thread it runs in (``fastapi.routing`` calls
    ``run_in_threadpool`` by its module-global name). Routing, the ASGI plumbing and the
    response sent back are not in the profile.
    """
    import fastapi.routing as routing

    original = routing.run_in_threadpool

    async def in_profile(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await original(functools.partial(profile.runcall, func), *args, **kwargs)

    routing.run_in_threadpool = in_profile  # type: ignore[assignment]
    try:
        yield
    finally:
        routing.run_in_threadpool = original  # type: ignore[assignment]


def profile_page(client: TestClient, page: Page, top: int = 15) -> str:
    """cProfile of one request of ``page``: the ``top`` functions by cumulative time, then by
    own time."""
    profile = cProfile.Profile()
    with profiled_endpoints(profile):
        response = client.get(page.url, follow_redirects=False)
    if response.status_code != 200:
        raise RuntimeError(f"{page.url} answered {response.status_code}")
    out = io.StringIO()
    try:
        stats = pstats.Stats(profile, stream=out)
    except TypeError:  # nothing was recorded
        return "(the profile is empty: the endpoint did not run in the wrapped pool call)\n"
    out.write(f"== {page.label} ({page.url}): dagtask's functions by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(f"{ROOT}/dagtask/", top)
    stats.strip_dirs()
    out.write(f"== {page.label}: top {top} by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(top)
    out.write(f"== {page.label}: top {top} by own time\n")
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# ---- report ------------------------------------------------------------------------------------


def _format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def table(lines: Sequence[dict[str, Any]]) -> str:
    """Per page: server p50 / p95 / max, CPU and client p50, statements, transactions, size,
    target and verdict."""
    rows = [("page", "server p50", "p95", "max", "cpu p50", "client p50", "stmts", "txns", "KiB")]
    rows[0] += ("target", "")
    for line in lines:
        s, c = line["server_ms"], line["client_ms"]
        rows.append(
            (
                line["page"],
                f"{s['p50']:.1f} ms",
                f"{s['p95']:.1f}",
                f"{s['max']:.1f}",
                f"{line['cpu_ms']['p50']:.1f}",
                f"{c['p50']:.1f}",
                str(line["statements"]),
                str(line["transactions"]),
                f"{line['bytes'] / 1024:.0f}",
                f"<= {TARGET_MS:g} ms",
                line["verdict"],
            )
        )
    return _format_table(rows)


def _db_facts(engine: Engine, where: str) -> dict[str, Any]:
    version = engine.database.engine.dialect.server_version_info or ()
    facts = {
        "dialect": engine.database.dialect,
        "server_version": ".".join(str(v) for v in version),
        "database": where,
    }
    if engine.database.dialect == "sqlite":
        facts["sqlite_library"] = sqlite3.sqlite_version
    return facts


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.console",
        description="Time the operator console's pages on a database of many tasks and three big "
        "ones; print one JSON line per page, then a table against the 300 ms target.",
    )
    parser.add_argument(
        "--db",
        help="database URL (default: a fresh temp SQLite file); with a PostgreSQL URL a fresh "
        "schema of that database, dropped afterwards; another URL is used as it is (it should "
        "be empty)",
    )
    parser.add_argument("--tasks", type=int, default=10_000, help="small tasks (default 10000)")
    parser.add_argument(
        "--subtasks",
        type=int,
        default=1000,
        help=f"subtasks of each big task (default 1000; a multiple of {LAYERS})",
    )
    parser.add_argument("--repeat", type=int, default=20, help="timed requests per page")
    parser.add_argument("--workers", type=int, default=8, help="worker threads of the set-up")
    parser.add_argument(
        "--profile", action="store_true", help="then profile the slowest page once (cProfile)"
    )
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.repeat < 1 or args.workers < 1:
        parser.error("--tasks, --repeat and --workers must be at least 1")
    if args.subtasks < 2 * LAYERS or args.subtasks % LAYERS:
        parser.error(f"--subtasks must be a multiple of {LAYERS}, at least {2 * LAYERS}")
    return args


def run(args: argparse.Namespace, url: str, where: str) -> int:
    from starlette.testclient import TestClient

    from dagtask import Engine

    engine = Engine(url, workers=args.workers)
    try:
        CALLS.attach(engine.database)
        t0 = time.perf_counter()
        fixture = populate(engine, args.tasks, args.subtasks)
        add_user(engine)
        fixture.seconds["setup_s"] = time.perf_counter() - t0
        db = _db_facts(engine, where)
        common = {
            "machine": {**_machine(), "sqlite_library": sqlite3.sqlite_version},
            "db": db,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        setup = {
            "setup": {k: round(v, 2) for k, v in fixture.seconds.items()},
            **fixture.facts,
            "params": {
                "tasks": args.tasks,
                "subtasks": args.subtasks,
                "workers": args.workers,
                "finished_share": FINISHED_SHARE,
                "layers": LAYERS,
                "seed": SEED,
            },
            **common,
        }
        print(json.dumps(setup), flush=True)
        app = build_app(engine)
        timer = ServerTimer(app)
        lines = []
        with TestClient(timer, base_url="http://console.bench") as client:
            sign_in(client)
            listed = pages(fixture, args.tasks)
            gc.collect()  # the set-up's garbage, not a page's
            for page in listed:
                line = measure(client, timer, page, args.repeat)
                line["loadavg_1min"] = round(os.getloadavg()[0], 2)
                print(json.dumps(line), flush=True)
                lines.append(line)
            print()
            print(table(lines))
            print(
                f"(server = the app's own wall time per request, from an ASGI wrapper; cpu = this "
                f"process's CPU time over the request, all threads, which other processes' load "
                f"does not inflate; client = perf_counter around client.get; {args.repeat} "
                f"requests per page after one counted one; verdict on server p95; targets are "
                f"informative)"
            )
            if args.profile:
                slowest = max(lines, key=lambda x: x["server_ms"]["p50"])
                page = next(p for p in listed if p.label == slowest["page"])
                print()
                print(profile_page(client, page))
    finally:
        engine.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Build the database, time the pages; return 1 if the set-up or a page failed."""
    args = _parse(argv)
    # Starlette 1.x asks for httpx2 in its test client; httpx 0.28 works as well.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    # Turn a SIGTERM into SystemExit so that the temp file or the fresh schema goes away.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with _database(args.db, as_is=False) as (url, where):
            return run(args, url, where)
    except Exception as exc:
        traceback.print_exc()
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
