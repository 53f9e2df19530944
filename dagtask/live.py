"""Watching a task that this process runs: a live view on a terminal, plain lines elsewhere.

:func:`watch` runs the task's subtasks here (a :class:`~dagtask.worker.WorkerPool` limited to
the task) until the task ends, and shows it the way that fits where stdout goes:

* ``live``: a :class:`rich.live.Live` table redrawn about four times a second (one row per
  subtask, fan-out copies grouped under their spec name, a progress bar). Each redraw reads the
  task once and, if a subtask runs, the new log rows of one running subtask (round robin), so
  watching costs the database two cheap reads per quarter second whatever the task's size;
* ``plain``: one timestamped line per history event (stdout is a pipe or a file);
* ``quiet``: nothing (``--json``: only the final document goes to stdout).

Ctrl-C is handled here rather than by ``KeyboardInterrupt``, so that stopping is never cut in
half: the first one stops this process's work on the task (running handlers get
:data:`GRACE_SECONDS` to finish, the rest is handed back by each subtask's recovery policy), the
second one hands back what still runs at once; both record the hand-back and the worker's stop
before the process exits, so no subtask stays RUNNING waiting for a lease to run out.

The rendering (:func:`render`, :func:`summary`) is pure: it takes a task snapshot and the time,
so it is tested with a recording :class:`rich.console.Console`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Literal, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dagtask import logs
from dagtask.clock import aware
from dagtask.engine import Engine
from dagtask.errors import TaskTimeoutError
from dagtask.models import SubtaskInfo, TaskEvent, TaskInfo
from dagtask.secrets import mask_values, secret_values
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from dagtask.worker import WorkerPool

Mode = Literal["live", "plain", "quiet"]

REFRESH_SECONDS = 0.25
"""How often the view is redrawn (and the task read): about four times a second."""
GRACE_SECONDS = 10.0
"""After a Ctrl-C or the task's end: how long running handlers of this process may finish."""

STATUS_STYLES: Mapping[SubtaskStatus, str] = {
    SubtaskStatus.PENDING: "dim",
    SubtaskStatus.READY: "cyan",
    SubtaskStatus.RUNNING: "bold yellow",
    SubtaskStatus.CANCELING: "bold magenta",
    SubtaskStatus.SUCCESSFUL: "green",
    SubtaskStatus.FAILED: "bold red",
}
TASK_STYLES: Mapping[TaskStatus, str] = {
    TaskStatus.RUNNING: "bold yellow",
    TaskStatus.SUCCESSFUL: "bold green",
    TaskStatus.FAILED: "bold red",
}
ACTIVE = frozenset({SubtaskStatus.READY, SubtaskStatus.RUNNING, SubtaskStatus.CANCELING})
BAR_WIDTH = 30
ATTEMPTS_LOGGER = "dagtask.worker.attempts"
"""Where a worker logs each attempt it starts and ends."""
MAX_FAILURES = 5
"""Failed subtasks named in the summary; more are counted."""

_LOG_LINE = re.compile(r"^\S+ \S+\s+[A-Z]+ \d+ --- \[[^\]]*\] \S+ : (?P<message>.*)$")
"""The layout of :func:`dagtask.logs.line`: the message is what a person wants to see."""
_NOISE = re.compile(r"^#{12}\{|^Set state for subtask: ")
"""Attempt markers and status-change lines: the engine's bookkeeping, not the handler's news."""


# ---- the console ---------------------------------------------------------------------------------


def color_wanted(no_color: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to use colour: not with ``--no-color``, nor with ``NO_COLOR`` set to anything
    non-empty (https://no-color.org)."""
    env = os.environ if environ is None else environ
    return not no_color and not env.get("NO_COLOR")


def make_console(
    *, no_color: bool = False, file: TextIO | None = None, stderr: bool = False
) -> Console:
    """The console the CLI draws on (``file`` None: the current stdout, or stderr)."""
    return Console(
        file=file,
        stderr=stderr,
        no_color=not color_wanted(no_color),
        highlight=False,
        emoji=False,
        markup=False,
    )


def choose_mode(progress: bool, stream: TextIO | None = None) -> Mode:
    """``live`` when showing progress on a terminal, ``plain`` on a pipe or file, ``quiet``
    without progress (``--json``)."""
    if not progress:
        return "quiet"
    out = sys.stdout if stream is None else stream
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):  # a closed or exotic stream is not a terminal
        tty = False
    return "live" if tty else "plain"


# ---- rendering (pure) ----------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3:05``, ``1:02:03``."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}:{secs:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def label(sub: SubtaskInfo) -> str:
    """A subtask's name, with ``[idx]`` for a copy of a fan-out."""
    return f"{sub.name} [{sub.parallel_idx}]" if sub.parallel else sub.name


def log_message(text: str) -> str | None:
    """The last line of a log chunk worth showing (its message part), if any."""
    for raw in reversed(text.splitlines()):
        found = _LOG_LINE.match(raw.strip())
        message = (found.group("message") if found else raw).strip()
        if message and not _NOISE.match(message):
            return message
    return None


def is_done(task: TaskInfo, sub: SubtaskInfo) -> bool:
    """Whether the subtask is where the task wants it: SUCCESSFUL, or, in a rollback, back at
    PENDING (undone or never run)."""
    if task.operation is Operation.ROLLBACK:
        return sub.status is SubtaskStatus.PENDING
    return sub.status is SubtaskStatus.SUCCESSFUL


def _elapsed(sub: SubtaskInfo, now: datetime) -> str:
    if sub.start_time is None or sub.status in (SubtaskStatus.PENDING, SubtaskStatus.READY):
        return "-"
    end = now if sub.status in ACTIVE else sub.finish_time
    if end is None:
        return "-"
    return duration((aware(end) - aware(sub.start_time)).total_seconds())


def _groups(task: TaskInfo) -> list[tuple[str, list[SubtaskInfo]]]:
    """The subtasks in the order of ``dagtask show`` (roots first), each fan-out's copies
    together under their spec name."""
    groups: dict[str, list[SubtaskInfo]] = {}
    order: list[tuple[str, list[SubtaskInfo]]] = []
    for sub in sorted(task.subtasks, key=lambda s: (-s.series_id, s.id)):
        if not sub.parallel:
            order.append((sub.name, [sub]))
            continue
        if sub.name not in groups:
            groups[sub.name] = []
            order.append((sub.name, groups[sub.name]))
        groups[sub.name].append(sub)
    for _, subs in order:
        subs.sort(key=lambda s: (s.parallel_idx, s.id))
    return order


def _status_cell(sub: SubtaskInfo) -> Text:
    text = Text(sub.status.value, style=STATUS_STYLES.get(sub.status, ""))
    if sub.operation is not Operation.EXECUTE:
        text.append(f" {sub.operation.value}", style="dim")
    return text


def _note(sub: SubtaskInfo, last_lines: Mapping[int, str], secrets: Sequence[str]) -> Text:
    if sub.status in ACTIVE and sub.id in last_lines:
        return Text(last_lines[sub.id])
    message = " ".join(mask_values(sub.message or "", secrets).split())
    style = "red" if sub.status is SubtaskStatus.FAILED else "dim"
    return Text(message, style=style)


def _counts(subs: Sequence[SubtaskInfo]) -> str:
    seen: dict[SubtaskStatus, int] = {}
    for sub in subs:
        seen[sub.status] = seen.get(sub.status, 0) + 1
    return ", ".join(f"{n} {status.value.lower()}" for status, n in seen.items())


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> Text:
    """``█████░░░░░ 2/4 done``: readable without colour too."""
    filled = round(width * done / total) if total else width
    bar = Text("█" * filled, style="green")
    bar.append("░" * (width - filled), style="dim")
    bar.append(f" {done}/{total} done")
    return bar


def render(
    task: TaskInfo,
    *,
    now: datetime,
    elapsed: float,
    last_lines: Mapping[int, str] | None = None,
    max_rows: int | None = None,
) -> RenderableType:
    """The live view of ``task`` at ``now`` (aware or naive UTC), ``elapsed`` seconds into the
    watch; ``last_lines``: subtask id -> last log line; ``max_rows``: rows that fit (a big
    fan-out then shows only its copies that are not done)."""
    lines = last_lines or {}
    secrets = secret_values(task)
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", expand=False)
    table.add_column("SUBTASK", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("TRY", justify="right", no_wrap=True)
    table.add_column("TIME", justify="right", no_wrap=True)
    table.add_column("LAST LOG LINE / MESSAGE", no_wrap=True, overflow="ellipsis", ratio=1)
    groups = _groups(task)
    rows = sum(len(subs) + (1 if subs[0].parallel else 0) for _, subs in groups)
    collapse = max_rows is not None and rows > max_rows
    for name, subs in groups:
        if not subs[0].parallel:
            sub = subs[0]
            table.add_row(
                name,
                _status_cell(sub),
                str(sub.run_time),
                _elapsed(sub, now),
                _note(sub, lines, secrets),
            )
            continue
        done = sum(1 for sub in subs if is_done(task, sub))
        table.add_row(
            Text(name, style="bold"),
            Text(f"{done}/{len(subs)} done", style="dim"),
            "",
            "",
            Text(_counts(subs), style="dim"),
        )
        shown = [s for s in subs if not is_done(task, s)] if collapse else subs
        for sub in shown:
            table.add_row(
                f"  [{sub.parallel_idx}]",
                _status_cell(sub),
                str(sub.run_time),
                _elapsed(sub, now),
                _note(sub, lines, secrets),
            )
        if len(shown) < len(subs):
            table.add_row(Text(f"  ({len(subs) - len(shown)} done, not shown)", style="dim"))
    head = Text(f"task {task.id} {task.name}  ")
    head.append(task.status.value, style=TASK_STYLES.get(task.status, ""))
    if task.operation is not Operation.EXECUTE:
        head.append(f" ({task.operation.value})")
    head.append(f"  {duration(elapsed)}", style="dim")
    done = sum(1 for sub in task.subtasks if is_done(task, sub))
    return Group(head, table, progress_bar(done, len(task.subtasks)))


@dataclass(frozen=True)
class Next:
    """A command worth running next, and what it does."""

    command: str
    why: str


def next_commands(task: TaskInfo) -> list[Next]:
    """The commands that fit the task's end."""
    tid = task.id
    failed = [s for s in task.subtasks if s.status is SubtaskStatus.FAILED]
    steps: list[Next] = []
    if failed:
        first = failed[0]
        steps.append(Next(f"dagtask logs {tid} {first.id}", f"the log of {label(first)}"))
    if task.status is TaskStatus.FAILED:
        if task.operation is Operation.ROLLBACK:
            steps.append(Next(f"dagtask rollback {tid}", "run the failed rollback steps again"))
        else:
            steps.append(Next(f"dagtask retry {tid}", "run the failed subtasks again"))
            steps.append(Next(f"dagtask rollback {tid} --plan", "what a rollback would undo"))
    else:
        steps.append(Next(f"dagtask show {tid}", "the task and its subtasks"))
    steps.append(Next(f"dagtask timeline {tid}", "every attempt on a time axis"))
    return steps


def summary(task: TaskInfo, elapsed: float, *, also: Sequence[Next] = ()) -> RenderableType:
    """The end of a watch: status, duration, which subtasks failed and why, what to run next
    (the commands that fit, then ``also``)."""
    secrets = secret_values(task)
    done = sum(1 for sub in task.subtasks if is_done(task, sub))
    head = Text(f"Task {task.id} {task.name}: ")
    head.append(task.status.value, style=TASK_STYLES.get(task.status, ""))
    if task.operation is not Operation.EXECUTE:
        head.append(f" ({task.operation.value})")
    head.append(f" in {duration(elapsed)}, {done} of {len(task.subtasks)} subtasks done")
    parts: list[RenderableType] = [Text(""), head]
    failed = [s for s in task.subtasks if s.status is SubtaskStatus.FAILED]
    for sub in failed[:MAX_FAILURES]:
        why = " ".join(mask_values(sub.message or "no message", secrets).split())
        line = Text("  ")
        line.append(f"{label(sub)} (subtask {sub.id}, try {sub.run_time})", style="bold")
        line.append(" failed: ", style="red")
        line.append(why[:300])
        parts.append(line)
    if len(failed) > MAX_FAILURES:
        parts.append(Text(f"  ... and {len(failed) - MAX_FAILURES} more failed subtasks"))
    steps = [*next_commands(task), *also]
    width = max(len(step.command) for step in steps)
    parts.append(Text("Next:"))
    for step in steps:
        line = Text("  ")
        line.append(step.command.ljust(width), style="bold cyan")
        line.append(f"  # {step.why}", style="dim")
        parts.append(line)
    return Group(*parts)


# ---- Ctrl-C --------------------------------------------------------------------------------------


@dataclass
class Interrupts:
    """Counts SIGINTs instead of raising KeyboardInterrupt in the middle of a stop."""

    count: int = 0
    wake: threading.Event = field(default_factory=threading.Event)

    def __call__(self, _signum: int, _frame: FrameType | None) -> None:
        self.count += 1
        self.wake.set()
        if self.count >= 3:
            # A third Ctrl-C: the person wants out now, even if the database does not answer.
            raise KeyboardInterrupt

    def sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``, less if a Ctrl-C comes."""
        self.wake.wait(seconds)
        self.wake.clear()

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupts]:
        """Catch SIGINT here meanwhile (only the main thread may; elsewhere nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


# ---- the watch -----------------------------------------------------------------------------------


@dataclass
class _LastLines:
    """The last log line of the running subtasks, one subtask's new log rows per refresh."""

    engine: Engine
    task_id: int
    after: dict[int, int] = field(default_factory=dict)
    lines: dict[int, str] = field(default_factory=dict)
    turn: int = 0

    def refresh(self, task: TaskInfo) -> None:
        running = [s.id for s in task.subtasks if s.status is SubtaskStatus.RUNNING]
        if not running:
            return
        self.turn = (self.turn + 1) % len(running)
        sid = running[self.turn]
        text, last, _, _ = self.engine.store.log_since(self.task_id, sid, self.after.get(sid, 0))
        self.after[sid] = last
        message = log_message(text)
        if message is not None:
            self.lines[sid] = message


@dataclass
class Watch:
    """One watch of one task (see the module docstring); :meth:`run` returns the ended task."""

    engine: Engine
    task_id: int
    timeout: float | None = None
    mode: Mode = "plain"
    console: Console = field(default_factory=make_console)
    err: TextIO | None = None
    after: int = 0
    """plain: show the history events after this event id."""
    event_line: Callable[[TaskEvent], str] | None = None
    """plain: how one event is printed."""
    interrupts: Interrupts = field(default_factory=Interrupts)
    started: float = field(default_factory=time.monotonic)
    _pool: WorkerPool | None = None

    def run(self) -> TaskInfo:
        """Work on the task here until it ends; KeyboardInterrupt after a Ctrl-C (handled, and
        said), TaskTimeoutError once ``timeout`` has passed."""
        engine = self.engine
        self._pool = WorkerPool(
            engine.store,
            engine.services,
            size=max(1, engine.workers),
            name=engine.name,
            task_id=self.task_id,
            poll_interval=engine.poll_interval,
            lease_seconds=engine.lease_seconds,
        )
        with self.interrupts.installed(), self._attempts_shown_here():
            self._pool.start()
            task: TaskInfo | None = None
            try:
                task = self._loop()
            finally:
                self._stop(interrupted=task is None and self.interrupts.count > 0)
        if task is None:
            self._after_interrupt()
            raise KeyboardInterrupt
        return task

    @contextlib.contextmanager
    def _attempts_shown_here(self) -> Iterator[None]:
        """Keep the worker's one line per failed attempt (logging's last-resort output on
        stderr, when nothing configured logging) out of a view that shows the failure itself."""
        log = logging.getLogger(ATTEMPTS_LOGGER)
        root = logging.getLogger().handlers
        configured = log.handlers or any(not isinstance(h, logs.CaptureHandler) for h in root)
        if self.mode == "quiet" or configured:
            yield
            return
        # Not propagated (the capture handler on the root would print it as a last resort),
        # and a handler of its own, or logging's own last resort would.
        null = logging.NullHandler()
        log.addHandler(null)
        log.propagate = False
        try:
            yield
        finally:
            log.propagate = True
            log.removeHandler(null)

    @property
    def elapsed(self) -> float:
        """Seconds since the watch started."""
        return time.monotonic() - self.started

    def _timed_out(self) -> None:
        if self.timeout is not None and self.elapsed >= self.timeout:
            raise TaskTimeoutError(
                f"task {self.task_id} is still RUNNING after {self.timeout} s; "
                f"see its progress with `dagtask show {self.task_id}`"
            )

    def _loop(self) -> TaskInfo | None:
        """The task once it ended, or None after a Ctrl-C."""
        if self.mode == "live":
            return self._live()
        store = self.engine.store
        last = self.after
        while True:
            ended = store.task_status(self.task_id) is not TaskStatus.RUNNING
            if self.mode == "plain":
                for event in store.events(self.task_id, last):
                    last = event.id
                    if self.event_line is not None:
                        self.console.file.write(self.event_line(event) + "\n")
                self.console.file.flush()
            if ended:
                return self.engine.get(self.task_id)
            if self.interrupts.count:
                return None
            self._timed_out()
            self.interrupts.sleep(REFRESH_SECONDS)

    def _live(self) -> TaskInfo | None:
        logs = _LastLines(self.engine, self.task_id)

        def frame(task: TaskInfo) -> RenderableType:
            rows = max(3, self.console.size.height - 6)
            return render(
                task,
                now=datetime.now(UTC),
                elapsed=self.elapsed,
                last_lines=logs.lines,
                max_rows=rows,
            )

        task = self.engine.get(self.task_id)
        with Live(
            frame(task), console=self.console, auto_refresh=False, vertical_overflow="crop"
        ) as live:
            while True:
                task = self.engine.get(self.task_id)
                if task.status is not TaskStatus.RUNNING:
                    live.update(frame(task), refresh=True)
                    return task
                logs.refresh(task)
                live.update(frame(task), refresh=True)
                if self.interrupts.count:
                    return None
                self._timed_out()
                self.interrupts.sleep(REFRESH_SECONDS)

    def _say(self, text: str) -> None:
        out = self.err if self.err is not None else sys.stderr
        print(text, file=out, flush=True)

    def _running_here(self) -> list[tuple[int, int]]:
        pool = self._pool
        if pool is None:
            return []
        with pool.cond:
            return [a.key for a in pool.live.values() if not a.ended]

    def _stop(self, *, interrupted: bool) -> None:
        """Stop the pool, recording the hand-back and the worker's stop; a (further) Ctrl-C
        meanwhile hands back what still runs at once."""
        pool = self._pool
        if pool is None:
            return
        tid = self.task_id
        if interrupted:
            running = len(self._running_here())
            if running:
                what = (
                    f"  Its {running} running subtask{'s' if running != 1 else ''} get up to "
                    f"{GRACE_SECONDS:.0f} s to finish, then are handed back by their recovery\n"
                    "  policy (on_worker_lost RETRY: READY again for another worker; "
                    "FAIL, the default: FAILED)."
                )
            else:
                what = "  None of its subtasks is running."
            self._say(
                f"\nCtrl-C: this process stops working on task {tid}.\n{what}\n"
                "  The task goes on with other workers, or stays RUNNING until one runs.\n"
                f"  Next: `dagtask worker` runs it, `dagtask show {tid}` follows it. "
                "Ctrl-C again: hand back now and exit."
            )
        stopper = threading.Thread(
            target=pool.stop, args=(GRACE_SECONDS,), name="dagtask-stop", daemon=True
        )
        # The Ctrl-C that hurries the stop: the second one, or any that comes during a stop
        # that has another cause (the task ended, the timeout passed, an error).
        hurry_at = 2 if interrupted else self.interrupts.count + 1
        stopper.start()
        hurried = False
        while stopper.is_alive():
            if self.interrupts.count >= hurry_at and not hurried:
                hurried = True
                self._hurry(pool)
            self.interrupts.sleep(0.05)
            stopper.join(timeout=0.05)
        self._pool = None

    def _hurry(self, pool: WorkerPool) -> None:
        keys = self._running_here()
        self._say(
            f"Ctrl-C again: handing back {len(keys)} running subtask"
            f"{'s' if len(keys) != 1 else ''} now, then exiting\n"
            f"  (a third Ctrl-C exits without recording it; after its lease of "
            f"{pool.lease_seconds} s other workers recover them)"
        )
        if keys:
            pool.fence_keys(keys, f"worker {pool.name} was stopped by Ctrl-C before it ended")

    def _after_interrupt(self) -> None:
        """Where the task stands once this process let go of it."""
        task = self.engine.get(self.task_id)
        tid = task.id
        if task.status is TaskStatus.RUNNING:
            waiting = sum(1 for s in task.subtasks if s.status in ACTIVE)
            self._say(
                f"task {tid} is still RUNNING ({waiting} subtasks READY or running elsewhere): "
                f"run `dagtask worker` to go on, `dagtask show {tid}` to see it"
            )
        else:
            hint = f"`dagtask retry {tid}`" if task.status is TaskStatus.FAILED else ""
            then = f"; go on with {hint}" if hint else ""
            self._say(f"task {tid} is {task.status.value}{then}; see it with `dagtask show {tid}`")


def watch(
    engine: Engine,
    task_id: int,
    timeout: float | None = None,
    *,
    mode: Mode,
    console: Console | None = None,
    after: int = 0,
    event_line: Callable[[TaskEvent], str] | None = None,
) -> TaskInfo:
    """Run the task here until it ends, showing it in ``mode`` (see :class:`Watch`)."""
    return Watch(
        engine,
        task_id,
        timeout,
        mode=mode,
        console=console or make_console(),
        after=after,
        event_line=event_line,
    ).run()
