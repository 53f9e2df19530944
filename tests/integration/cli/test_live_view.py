"""The live view of a task run here (``run/retry/rerun ... --wait``, ``demo``) as a person sees it.

The rendering is checked on a fixed task snapshot with a recording rich console; the command
itself runs under tmux (a real terminal, 120x40), whose screen is captured and read; a run whose
stdout is a pipe must print plain timestamped lines without escapes; Ctrl-C under tmux must say
what it does and leave the store consistent.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from dagtask import Engine, live
from dagtask.context import TaskContext
from dagtask.models import SubtaskInfo, TaskInfo
from dagtask.states import Operation, SubtaskStatus, TaskStatus
from tests.integration.cli.support import CLI_TIMEOUT

STEPS = '''
import time
from pathlib import Path


def hello(ctx):
    ctx.log.info("hello from %s", ctx.subtask_name)


def slow(ctx):
    """Log a line every 0.1 s until the file stringMap.gate exists."""
    gate = Path(ctx.string_map["gate"])
    n = 0
    deadline = time.monotonic() + 120
    while not gate.exists():
        n += 1
        ctx.log.info("copying %s: chunk %d", ctx.get("item", "items"), n)
        if ctx.token.wait(0.1):
            ctx.token.raise_if_cancelled()
        if time.monotonic() > deadline:
            raise TimeoutError("the gate never opened")


def boom(ctx):
    ctx.log.info("checking the disk")
    raise RuntimeError("disk /data is full (97%)")
'''

FLOW = """
name: Live demo
concurrency: 4
subtasks:
  - {name: Prepare, handler: steps.hello}
  - name: Copy
    handler: steps.slow
    split_key: items
    split_method: PARALLEL
    upstreams: [Prepare]
    timeout: 120
  - {name: Check, handler: steps.boom, upstreams: [Prepare]}
  - {name: Finish, handler: steps.hello, upstreams: [Copy, Check]}
"""

QUICK = """
name: Quick
subtasks:
  - {name: One, handler: steps.hello}
  - {name: Two, handler: steps.boom, upstreams: [One]}
"""

COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|4[0-8]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")
"""An SGR sequence that sets a foreground or background colour (39/49, back to the default
colour, which tmux writes everywhere, are not colours)."""
ESCAPE = "\x1b"

needs_tmux = pytest.mark.usefixtures("tmux_installed")


# ---- the rendering, on a fixed snapshot ----------------------------------------------------------

T0 = datetime(2026, 1, 2, 3, 4, 5)


def sub(
    sid: int,
    name: str,
    status: SubtaskStatus,
    *,
    idx: int = -1,
    run_time: int = 1,
    started: float | None = None,
    took: float | None = None,
    message: str | None = None,
    operation: Operation = Operation.EXECUTE,
    series: int = 0,
) -> SubtaskInfo:
    """A subtask of the snapshot, started ``started`` s after T0 and ended ``took`` s later."""
    start = T0 + timedelta(seconds=started) if started is not None else None
    finish = start + timedelta(seconds=took) if start is not None and took is not None else None
    return SubtaskInfo(
        id=sid,
        task_id=7,
        name=name,
        description="",
        class_name="steps.x",
        operation=operation,
        status=status,
        series_id=series,
        run_time=run_time,
        timeout=60,
        retry_count=0,
        parallel=idx >= 0,
        parallel_idx=idx,
        prohibit_rollback=False,
        upstreams=[],
        downstreams=[],
        message=message,
        create_time=T0,
        start_time=start,
        finish_time=finish,
    )


def snapshot(status: TaskStatus = TaskStatus.RUNNING) -> TaskInfo:
    """A task in mid-flight: one done, a fan-out of three (one running on its 2nd try), a
    failure, one waiting."""
    subs = [
        sub(1, "Prepare", SubtaskStatus.SUCCESSFUL, started=0, took=1.5, series=3),
        sub(2, "Copy", SubtaskStatus.SUCCESSFUL, idx=0, started=2, took=4, series=2),
        sub(3, "Copy", SubtaskStatus.RUNNING, idx=1, run_time=2, started=3, series=2),
        sub(4, "Copy", SubtaskStatus.READY, idx=2, series=2),
        sub(5, "Check", SubtaskStatus.FAILED, started=2, took=0.2, series=2, message="disk full"),
        sub(6, "Finish", SubtaskStatus.PENDING, series=1),
    ]
    return TaskInfo(
        id=7,
        name="Live demo",
        template_id=1,
        status=status,
        operation=Operation.EXECUTE,
        creator="alice",
        executor="here",
        context=TaskContext(),
        prohibit_rollback=False,
        concurrency=4,
        create_time=T0,
        start_time=T0,
        subtasks=subs,
    )


def rendered(renderable: Any, *, color: bool = True, width: int = 100) -> tuple[str, str]:
    """(plain text, text with ANSI styles) of ``renderable`` on a ``width`` console."""
    console = Console(
        record=True,
        width=width,
        force_terminal=True,
        color_system="truecolor" if color else None,
        file=open("/dev/null", "w"),  # noqa: SIM115 - the recording is what we read
    )
    console.print(renderable)
    styled = console.export_text(clear=False, styles=True)
    return console.export_text(), styled


def rows_of(text: str) -> list[list[str]]:
    """The screen's lines split on runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line.strip()]


def test_the_view_shows_one_row_per_subtask_with_fan_out_copies_grouped() -> None:
    now = T0 + timedelta(seconds=15.25)  # the running copy started 12.25 s ago
    text, styled = rendered(
        live.render(snapshot(), now=now, elapsed=15.3, last_lines={3: "copying b: chunk 4"})
    )
    rows = rows_of(text)
    assert rows[0] == ["task 7 Live demo", "RUNNING", "15 s"]
    assert rows[1] == ["SUBTASK", "STATUS", "TRY", "TIME", "LAST LOG LINE / MESSAGE"]
    assert rows[2] == ["Prepare", "SUCCESSFUL", "1", "1.5 s"]
    assert rows[3] == ["Copy", "1/3 done", "1 successful, 1 running, 1 ready"]
    assert rows[4] == ["[0]", "SUCCESSFUL", "1", "4.0 s"]
    assert rows[5] == ["[1]", "RUNNING", "2", "12 s", "copying b: chunk 4"]
    assert rows[6] == ["[2]", "READY", "1", "-"]
    assert rows[7] == ["Check", "FAILED", "1", "0.2 s", "disk full"]
    assert rows[8] == ["Finish", "PENDING", "1", "-"]
    assert rows[9][0].startswith("█") and rows[9][-1].endswith("2/6 done")
    # Statuses are coloured: RUNNING yellow, FAILED red, SUCCESSFUL green.
    for status in ("RUNNING", "FAILED", "SUCCESSFUL"):
        assert re.search(COLOUR.pattern + status, styled), status

    later, _ = rendered(live.render(snapshot(), now=now + timedelta(seconds=50), elapsed=65))
    assert rows_of(later)[5][:4] == ["[1]", "RUNNING", "2", "1:02"]  # the clock ticks


def test_a_big_fan_out_shows_only_its_copies_not_done_when_rows_run_short() -> None:
    task = snapshot()
    text, _ = rendered(live.render(task, now=T0, elapsed=1, max_rows=5))
    names = [row[0] for row in rows_of(text)]
    assert "[0]" not in names and {"[1]", "[2]"} <= set(names)
    assert "(1 done, not shown)" in names


def test_the_summary_names_each_failure_and_the_commands_that_fit() -> None:
    task = snapshot(TaskStatus.FAILED)
    text, _ = rendered(live.summary(task, 83.0))
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    assert lines[0] == "Task 7 Live demo: FAILED in 1:23, 2 of 6 subtasks done"
    assert lines[1] == "  Check (subtask 5, try 1) failed: disk full"
    assert lines[2] == "Next:"
    assert [re.split(r"\s+#\s", line.strip())[0] for line in lines[3:]] == [
        "dagtask logs 7 5",
        "dagtask retry 7",
        "dagtask rollback 7 --plan",
        "dagtask timeline 7",
    ]

    done = snapshot(TaskStatus.SUCCESSFUL)
    done.subtasks[:] = [
        s.model_copy(update={"status": SubtaskStatus.SUCCESSFUL}) for s in done.subtasks
    ]
    text, _ = rendered(live.summary(done, 2.0, also=[live.Next("dagtask templates", "more")]))
    assert "SUCCESSFUL in 2.0 s, 6 of 6 subtasks done" in text
    commands = re.findall(r"^  (dagtask .+?)\s+# ", text, re.M)
    assert commands == ["dagtask show 7", "dagtask timeline 7", "dagtask templates"]


def test_log_lines_show_their_message_and_skip_the_engines_bookkeeping() -> None:
    chunk = (
        "2026-01-02 03:04:05.678  INFO 42 --- [dagtask-worker-1] steps : copying a: chunk 3\n"
        "2026-01-02 03:04:05.900  INFO 42 --- [dagtask-worker-1] dagtask.worker : "
        "Set state for subtask: 3, current state: RUNNING, new state: SUCCESSFUL\n"
    )
    assert live.log_message(chunk) == "copying a: chunk 3"
    assert live.log_message("") is None
    assert live.log_message("printed by a handler\n\n") == "printed by a handler"


def test_no_color_follows_the_option_and_the_environment() -> None:
    assert live.color_wanted(False, {})
    assert live.color_wanted(False, {"NO_COLOR": ""})  # empty means unset (no-color.org)
    assert not live.color_wanted(False, {"NO_COLOR": "1"})
    assert not live.color_wanted(True, {})


# ---- the real command under tmux -----------------------------------------------------------------


class Screen:
    """A tmux server of its own running one command in a 120x40 window."""

    def __init__(self, command: str, cwd: Path) -> None:
        self.socket = f"dagtask-test-{uuid.uuid4().hex[:8]}"
        self.cwd = cwd
        self._tmux("new-session", "-d", "-x", "120", "-y", "40", "-s", "t", command)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    def text(self, *, escapes: bool = False) -> str:
        """What the window shows now (with its SGR escapes if ``escapes``)."""
        return self._tmux("capture-pane", "-p", "-t", "t", *(["-e"] if escapes else []))

    def wait_for(self, check: Callable[[str], bool], what: str, seconds: float = 60) -> str:
        """The screen once ``check`` holds for it (fails after ``seconds``)."""
        deadline = time.monotonic() + seconds
        while True:
            screen = self.text()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {seconds} s waiting for {what}; screen:\n{screen}")
            time.sleep(0.1)

    def keys(self, *keys: str) -> None:
        """Type ``keys`` (tmux names, e.g. ``C-c``)."""
        self._tmux("send-keys", "-t", "t", *keys)

    def close(self) -> None:
        """Stop the tmux server and what runs in it."""
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with the handlers and the templates."""
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "flow.yaml").write_text(FLOW)
    (tmp_path / "quick.yaml").write_text(QUICK)
    return tmp_path


@pytest.fixture
def screens() -> Iterator[Callable[..., Screen]]:
    """Open Screens, each closed at the end of the test."""
    opened: list[Screen] = []

    def open_screen(args: list[str], cwd: Path, env: str = "") -> Screen:
        command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "dagtask", *args])
        # The shell stays a while after the command so that its last screen can be read.
        # COLUMNS and LINES (pytest may export them) would override the window's own size.
        screen = Screen(f"env -u COLUMNS -u LINES {env} {command}; echo EXIT=$?; sleep 120", cwd)
        opened.append(screen)
        return screen

    yield open_screen
    for screen in opened:
        screen.close()


def exited(screen: str) -> bool:
    return "EXIT=" in screen


@needs_tmux
def test_run_wait_on_a_terminal_shows_a_live_table_then_the_summary(
    project: Path, db_url: str, screens: Callable[..., Screen]
) -> None:
    gate = project / "gate"
    args = ["--db", db_url, "run", "flow.yaml", "--set", f"gate={gate}", "--list", "items=a,b"]
    screen = screens([*args, "--wait"], project)

    running = screen.wait_for(
        lambda s: (
            re.search(r"\[1\]\s+RUNNING\s+1\s+\S+ s\s+copying b: chunk \d+", s) is not None
            and re.search(r"\[0\]\s+RUNNING\s+1\s+\S+ s\s+copying a: chunk \d+", s) is not None
        ),
        "both copies running with their last log line",
    )
    print(running)  # the screen, for whoever reads the output
    assert re.search(r"^task 1 Live demo\s+RUNNING\s+\d", running, re.M)
    assert re.search(r"^SUBTASK\s+STATUS\s+TRY\s+TIME\s+LAST LOG LINE / MESSAGE", running, re.M)
    assert re.search(r"^Prepare\s+SUCCESSFUL\s+1\s", running, re.M)
    assert re.search(r"^Copy\s+0/2 done\s+2 running", running, re.M)
    assert re.search(
        r"^Check\s+FAILED\s+1\s+\S+ s\s+RuntimeError: disk /data is full", running, re.M
    )
    assert re.search(r"^Finish\s+PENDING\s+1\s+-", running, re.M)
    assert re.search(r"^█+░+ 1/5 done", running, re.M)
    styled = screen.text(escapes=True)
    assert COLOUR.search(styled), styled

    # The elapsed time of a running copy ticks.
    first = float(re.search(r"\[0\]\s+RUNNING\s+1\s+(\S+) s", running).group(1))  # type: ignore[union-attr]
    screen.wait_for(
        lambda s: (
            (m := re.search(r"\[0\]\s+RUNNING\s+1\s+(\S+) s", s)) is not None
            and float(m.group(1)) >= first + 1
        ),
        "the elapsed time to move on",
    )

    gate.touch()
    end = screen.wait_for(exited, "the command to end")
    print(end)
    assert "EXIT=1" in end
    assert re.search(r"^Copy\s+2/2 done\s+2 successful", end, re.M)
    assert re.search(
        r"^Task 1 Live demo: FAILED in [\d.:]+(?: s)?, 3 of 5 subtasks done$", end, re.M
    )
    assert re.search(r"^  Check \(subtask \d+, try 1\) failed: RuntimeError: disk /data", end, re.M)
    commands = re.findall(r"^  (dagtask .+?)\s+# ", end, re.M)
    assert [c.split()[1] for c in commands] == ["logs", "retry", "rollback", "timeline"]
    assert "dagtask rollback 1 --plan" in commands
    assert end.count("SUBTASK  ") == 1  # the view was redrawn in place, not scrolled
    assert "end subtask" not in end  # the worker's own log line would only repeat the view


@needs_tmux
@pytest.mark.parametrize(
    ("env", "option"), [("NO_COLOR=1", []), ("", ["--no-color"])], ids=["NO_COLOR", "--no-color"]
)
def test_no_color_gives_a_live_view_without_colour(
    project: Path, db_url: str, screens: Callable[..., Screen], env: str, option: list[str]
) -> None:
    screen = screens(["--db", db_url, *option, "run", "quick.yaml", "--wait"], project, env)
    end = screen.wait_for(exited, "the command to end")
    assert "EXIT=1" in end
    assert re.search(r"^Two\s+FAILED\s+1\s", end, re.M), end
    assert "Task 1 Quick: FAILED" in end
    styled = screen.text(escapes=True)
    assert not COLOUR.search(styled), styled


@needs_tmux
def test_ctrl_c_says_what_it_does_and_leaves_the_store_consistent(
    project: Path, db_url: str, screens: Callable[..., Screen]
) -> None:
    gate = project / "gate"  # never opened: the copies run until they are stopped
    args = ["--db", db_url, "run", "flow.yaml", "--set", f"gate={gate}", "--list", "items=a,b"]
    screen = screens([*args, "--wait"], project)
    screen.wait_for(lambda s: s.count("copying ") == 2, "both copies to run")

    screen.keys("C-c")
    said = screen.wait_for(lambda s: "Ctrl-C again" in s, "what the first Ctrl-C does")
    flat = " ".join(said.split())
    assert "Ctrl-C: this process stops working on task 1." in flat
    assert "Its 2 running subtasks get up to 10 s to finish, then are handed back" in flat
    assert "`dagtask worker` runs it, `dagtask show 1` follows it" in flat

    screen.keys("C-c")
    end = screen.wait_for(exited, "the command to exit")
    print(end)
    assert "EXIT=130" in end
    assert "handing back 2 running subtasks now" in " ".join(end.split())
    assert "task 1 is FAILED; go on with `dagtask retry 1`" in end

    with Engine(db_url) as engine:
        workers = engine.store.workers()
        task = engine.get(1)
    assert [w.status for w in workers] == ["STOPPED"]
    statuses = {(s.name, s.parallel_idx): s.status for s in task.subtasks}
    assert SubtaskStatus.RUNNING not in statuses.values()
    assert statuses[("Copy", 0)] is statuses[("Copy", 1)] is SubtaskStatus.FAILED
    copies = [s for s in task.subtasks if s.name == "Copy"]
    assert all("stopped by Ctrl-C" in (s.message or "") for s in copies), copies


@needs_tmux
def test_the_demo_ends_with_the_summary_and_what_to_try(
    tmp_path: Path, db_url: str, screens: Callable[..., Screen]
) -> None:
    screen = screens(["--db", db_url, "demo"], tmp_path)
    end = screen.wait_for(exited, "the demo to end", seconds=CLI_TIMEOUT)
    print(end)
    assert "EXIT=0" in end
    assert re.search(r"^Stop all OCP agent processes\s+SUCCESSFUL\s+1\s", end, re.M)
    assert re.search(
        r"^Task 1 Stop OCP agent: SUCCESSFUL in [\d.:]+(?: s)?, 3 of 3 subtasks done$", end, re.M
    )
    commands = re.findall(r"^  (dagtask .+?)\s+# ", end, re.M)
    assert commands[:2] == ["dagtask show 1", "dagtask timeline 1"]
    assert "dagtask templates" in commands
    assert '"subtasks"' not in end  # its JSON only with --json


# ---- not a terminal ------------------------------------------------------------------------------


def dagtask(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m dagtask ARGS`` with stdout and stderr on pipes."""
    environ = {k: v for k, v in os.environ.items() if k not in ("DAGTASK_DB_URL", "NO_COLOR")}
    return subprocess.run(
        [sys.executable, "-m", "dagtask", *args],
        cwd=cwd,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def test_on_a_pipe_it_prints_timestamped_lines_without_escapes(project: Path, db_url: str) -> None:
    ran = dagtask(["--db", db_url, "run", "quick.yaml", "--wait"], project)
    assert ran.returncode == 1, ran.stderr
    assert ESCAPE not in ran.stdout
    events = re.findall(r"^  \[\d\d:\d\d:\d\d\.\d{3}\] (.+)$", ran.stdout, re.M)
    assert "One: READY -> RUNNING" in events
    assert "One: RUNNING -> SUCCESSFUL" in events
    assert any(e.startswith("Two: RUNNING -> FAILED: RuntimeError: disk /data") for e in events)
    assert re.search(
        r"^Task 1 Quick: FAILED in [\d.:]+(?: s)?, 1 of 2 subtasks done$", ran.stdout, re.M
    )
    assert re.search(r"^  Two \(subtask \d+, try 1\) failed: RuntimeError", ran.stdout, re.M)
    assert re.search(r"^  dagtask retry 1\s+# ", ran.stdout, re.M)


def test_demo_json_puts_the_task_alone_on_stdout(tmp_path: Path, db_url: str) -> None:
    ran = dagtask(["--db", db_url, "demo", "--json"], tmp_path)
    assert ran.returncode == 0, ran.stderr
    task = json.loads(ran.stdout)
    assert (task["id"], task["status"]) == (1, "SUCCESSFUL")
    assert "Task 1 Stop OCP agent: SUCCESSFUL" in ran.stderr
    assert "Agent processes gone" in ran.stderr
