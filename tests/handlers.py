"""Handlers the tests submit (importable as ``tests.handlers.<name>``).

``record`` writes every run into :data:`JOURNAL` so a test can check what ran, when and how often.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from dagtask import RunContext, TaskContext

JOURNAL: dict[int, list[tuple[str, str, float]]] = defaultdict(list)
"""task id -> [(subtask name, "start" | "end", monotonic time)]"""
_lock = threading.Lock()


def _note(ctx: RunContext, phase: str) -> None:
    with _lock:
        JOURNAL[ctx.task_id].append((ctx.subtask_name, phase, time.monotonic()))


def record(ctx: RunContext) -> dict[str, str]:
    """Record the run; fail when this subtask's name is in ``stringMap.fail`` (comma list)."""
    _note(ctx, "start")
    _note(ctx, "end")
    if ctx.subtask_name in ctx.string_map.get("fail", "").split(","):
        raise RuntimeError(f"injected failure in {ctx.subtask_name}")
    return {f"ran_{ctx.subtask_name}": "yes"}


def flaky(ctx: RunContext) -> None:
    """Fail while ``runTime <= stringMap.fail_times``, then succeed."""
    _note(ctx, "start")
    if ctx.run_time <= int(ctx.string_map.get("fail_times", "0")):
        raise RuntimeError(f"attempt {ctx.run_time} fails on purpose")


def sleep_ignoring_token(ctx: RunContext) -> None:
    """Sleep ``stringMap.seconds`` without looking at the cancellation token."""
    time.sleep(float(ctx.string_map.get("seconds", "3")))


def sleep_with_token(ctx: RunContext) -> None:
    """Sleep ``stringMap.seconds`` but stop as soon as the token is set."""
    if ctx.token.wait(float(ctx.string_map.get("seconds", "30"))):
        ctx.token.raise_if_cancelled()


def hold(ctx: RunContext) -> None:
    """Note start and end around a short sleep, to observe how many run at once."""
    _note(ctx, "start")
    time.sleep(0.05)
    _note(ctx, "end")


def emit(ctx: RunContext) -> TaskContext:
    """Write ``stringMap.key = stringMap.value`` (per subtask name) into the output."""
    return ctx.output(**{ctx.string_map.get("key", "k"): ctx.subtask_name})


def chatty(ctx: RunContext) -> None:
    """Log a line through the handler logger."""
    ctx.log.info("hello from %s", ctx.subtask_name)


ROLLED_BACK: dict[int, list[str]] = defaultdict(list)
"""task id -> names of subtasks whose rollback ran, in order."""


class Undoable:
    """Executes like ``record``; its rollback is recorded and fails when named in
    ``stringMap.fail_rollback``."""

    def execute(self, ctx: RunContext) -> dict[str, str]:
        return record(ctx)

    def rollback(self, ctx: RunContext) -> None:
        with _lock:
            ROLLED_BACK[ctx.task_id].append(ctx.subtask_name)
        if ctx.subtask_name in ctx.string_map.get("fail_rollback", "").split(","):
            raise RuntimeError(f"rollback of {ctx.subtask_name} fails on purpose")


class Guarded(Undoable):
    """Like :class:`Undoable`, but its class forbids rollback."""

    prohibit_rollback = True


def run_child(ctx: RunContext) -> None:
    """Run a child process that sleeps; writes its pid to ``stringMap.pid_file`` first."""
    import sys

    script = (
        "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
        "print('child started', flush=True); time.sleep(60)"
    )
    ctx.run([sys.executable, "-c", script, ctx.string_map["pid_file"]])


def ledger(ctx: RunContext) -> None:
    """Append ``<subtask id> <runTime> start|end <pid>`` lines to the file ``stringMap.ledger``
    (one ``O_APPEND`` write each, so lines of concurrent worker processes never mix), sleeping
    ``stringMap.sleep_ms`` in between (cut short, and no ``end``, if the attempt is cancelled)."""
    import os

    path = ctx.string_map["ledger"]

    def note(phase: str) -> None:
        line = f"{ctx.subtask_id} {ctx.run_time} {phase} {os.getpid()}\n".encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    note("start")
    if ctx.token.wait(int(ctx.string_map.get("sleep_ms", "0")) / 1000):
        ctx.token.raise_if_cancelled()
    note("end")


TOKEN_SEEN: dict[int, list[tuple[str, float]]] = defaultdict(list)
"""subtask id -> [("start" | "token", monotonic time)]: when a handler started and when it saw
its cancellation token set."""


def wait_for_token(ctx: RunContext) -> None:
    """Wait up to ``stringMap.seconds`` for the token; note when it started and saw it."""
    with _lock:
        TOKEN_SEEN[ctx.subtask_id].append(("start", time.monotonic()))
    if ctx.token.wait(float(ctx.string_map.get("seconds", "30"))):
        with _lock:
            TOKEN_SEEN[ctx.subtask_id].append(("token", time.monotonic()))
        ctx.token.raise_if_cancelled()


def raise_base(ctx: RunContext) -> None:
    """Raise the BaseException named by ``stringMap[<subtask name>]`` (SystemExit, ...)."""
    import builtins

    name = ctx.string_map.get(ctx.subtask_name, "")
    if name == "parser.error":
        import argparse

        argparse.ArgumentParser(prog="handler").error("bad option")  # raises SystemExit(2)
    if name:
        raise getattr(builtins, name)("raised on purpose")


def log_lines(ctx: RunContext) -> None:
    """Log ``stringMap.lines`` numbered lines, ``stringMap.gap_ms`` apart."""
    for n in range(int(ctx.string_map.get("lines", "10"))):
        ctx.log.info("line %03d", n)
        time.sleep(int(ctx.string_map.get("gap_ms", "0")) / 1000)


def ticker(ctx: RunContext) -> None:
    """Append ``tick <subtask id> <runTime> <pid> <wall time>`` to ``stringMap.ledger`` every
    20 ms while the token is not set (the time is taken when the token was checked), for
    ``stringMap.seconds``; a line ``start`` first."""
    import os

    path = ctx.string_map["ledger"]

    def note(phase: str, when: float) -> None:
        line = f"{phase} {ctx.subtask_id} {ctx.run_time} {os.getpid()} {when:.6f}\n".encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    note("start", time.time())
    end = time.monotonic() + float(ctx.string_map.get("seconds", "10"))
    while time.monotonic() < end:
        checked = time.time()
        if ctx.token.cancelled:
            return
        note("tick", checked)
        time.sleep(0.02)


SCRIPTED: dict[tuple[int, int], list[float]] = defaultdict(list)
"""(subtask id, runTime) -> monotonic start times of the ``scripted`` handler (one per run)."""
SCRIPTED_TOKEN: dict[tuple[int, int], float] = {}
"""(subtask id, runTime) -> when a ``hang`` run saw its token set."""


def scripted(ctx: RunContext) -> None:
    """Behave as ``stringMap[<subtask name>]`` says: ok, fail, exit (SystemExit), hang (until
    the token is set), slow (0.3 s, stopping early at the token)."""
    key = (ctx.subtask_id, ctx.run_time)
    with _lock:
        SCRIPTED[key].append(time.monotonic())
    mode = ctx.string_map.get(ctx.subtask_name, "ok")
    if mode == "fail":
        raise RuntimeError("scripted failure")
    if mode == "exit":
        raise SystemExit(3)
    if mode in ("hang", "slow") and ctx.token.wait(30 if mode == "hang" else 0.3):
        with _lock:
            SCRIPTED_TOKEN[key] = time.monotonic()
        ctx.token.raise_if_cancelled()


SEEN_LISTS: dict[tuple[int, str], list[str]] = {}
"""(task id, subtask name) -> listMap.hosts as ``change_lists_in_place`` found it."""


def change_lists_in_place(ctx: RunContext) -> None:
    """Note ``listMap.hosts`` as given, then append this subtask's name to it in place (a
    handler that treats its context as its own)."""
    hosts = ctx.list_map.setdefault("hosts", [])
    with _lock:
        SEEN_LISTS[(ctx.task_id, ctx.subtask_name)] = list(hosts)
    hosts.append(ctx.subtask_name)
