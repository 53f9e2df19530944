"""The ``dagtask`` command line, run as a real program and in-process through ``main()``.

Subprocesses (``python -m dagtask``) cover what needs a process of its own: the demo, a template
file whose handlers live next to it, the agent processes of ``hosts add --start-agent``, and the
foreground worker. The rest calls :func:`dagtask.cli.main` directly, which is much quicker.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dagtask.cli import build_parser, main
from dagtask.store.db import head_revision
from tests.integration.cli.support import CLI_TIMEOUT


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rpartition(b")")[2].split()[0] not in (b"Z", b"X")


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _no_agent_left_behind(tmp_path: Path) -> Iterator[None]:
    """Kill any agent process a test left running under its tmp agent homes."""
    yield
    for pid_file in tmp_path.rglob("run/*.pid"):
        text = pid_file.read_text().strip()
        if not text.isdigit():
            continue
        pid = int(text)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(tmp_path).encode() in cmdline:
            os.kill(pid, signal.SIGKILL)


def json_out(result: tuple[int, str, str]) -> Any:
    code, out, err = result
    assert code == 0, err
    return json.loads(out)


def found_int(pattern: str, text: str) -> int:
    """The integer captured by ``pattern`` (multi-line) in ``text``."""
    match = re.search(pattern, text, re.M)
    assert match, text
    return int(match.group(1))


def add_host(dt: Callable[..., tuple[int, str, str]], tmp_path: Path, name: str = "web-1") -> int:
    code, out, err = dt(
        "hosts", "add", "--name", name, "--ip", "127.0.0.1", "--agent-home", str(tmp_path / name)
    )
    assert code == 0, err
    return found_int(r"^host (\d+) added", out)


# ---- demo ----------------------------------------------------------------------------------------


def parse_demo(result: subprocess.CompletedProcess[str]) -> tuple[list[int], int, dict[str, Any]]:
    """The agent pids (on stderr with --json), the task id and the task JSON (stdout)."""
    pids = [int(pid) for pid in re.findall(r"^\s+ocp_\w+ pid=(\d+)$", result.stderr, re.M)]
    task = json.loads(result.stdout)
    return pids, int(task["id"]), task


def test_demo_stops_a_real_agent_and_can_run_again(
    cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    first = cli("demo", "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    pids, task_id, task = parse_demo(first)
    assert len(pids) == 3
    assert not [pid for pid in pids if pid_alive(pid)]
    assert "Agent processes gone" in first.stderr
    # Live progress: one line per subtask status change, in execution order.
    progress = re.findall(r"^  \[\d\d:\d\d:\d\d\.\d{3}\] (.+)$", first.stderr, re.M)
    expected = [
        "Prepare stop OCP agent: READY -> RUNNING",
        "Prepare stop OCP agent: RUNNING -> SUCCESSFUL",
        "Stop all OCP agent processes: READY -> RUNNING",
        "Stop all OCP agent processes: RUNNING -> SUCCESSFUL",
        "Finish OCP agent operation: RUNNING -> SUCCESSFUL",
    ]
    positions = [progress.index(line) for line in expected]
    assert positions == sorted(positions), progress
    assert f"Task {task_id} Stop OCP agent: SUCCESSFUL" in first.stderr
    assert task["id"] == task_id
    assert task["status"] == "SUCCESSFUL"
    assert [sub["status"] for sub in task["subtasks"]] == ["SUCCESSFUL"] * 3
    # By default the demo cleans up its agent home.
    assert not (tmp_path / "dagtask-demo" / "demo-host").exists()

    second = cli("demo", "--keep-agent-home", "--json")
    assert second.returncode == 0, second.stdout + second.stderr
    pids2, task_id2, task2 = parse_demo(second)
    assert task_id2 == task_id + 1
    assert task2["hostId"] == task["hostId"]  # the demo host is reused
    assert set(pids2).isdisjoint(pids)
    assert not [pid for pid in pids2 if pid_alive(pid)]
    home = tmp_path / "dagtask-demo" / "demo-host"
    assert (home / "log" / "ocp_agentd.log").exists()
    assert not list((home / "run").glob("*.pid"))

    hosts = json.loads(cli("hosts", "list", "--json").stdout)
    assert [(h["name"], h["agent_status"]) for h in hosts] == [("demo-host", "STOPPED")]
    assert Path(hosts[0]["agent_home"]).resolve() == home.resolve()  # stored absolute


# ---- run -----------------------------------------------------------------------------------------

OPS = """
from pathlib import Path

from dagtask import Handler


class Greet(Handler):
    def execute(self, ctx):
        ctx.log.info("greeting %s", ctx.string_map["who"])
        return {"greeting": "hello " + ctx.string_map["who"]}


def count_item(ctx):
    item = ctx.get("item", "items")
    return {"seen_" + item: str(len(item))}


class Summarize(Handler):
    def execute(self, ctx):
        seen = sorted(key for key in ctx.string_map if key.startswith("seen_"))
        summary = ctx.string_map["greeting"] + "; " + ",".join(seen)
        ctx.log.info("summary: %s", summary)
        Path(ctx.string_map["out"]).write_text(summary)
        return {"summary": summary}
"""

FLOW = """
name: Greet and count
concurrency: 4
subtasks:
  - name: Greet
    handler: mypkg.ops.Greet
    timeout: 30
  - name: Count item
    handler: mypkg.ops.count_item
    split_key: items
    split_method: PARALLEL
    upstreams: [Greet]
  - name: Summarize
    handler: mypkg.ops.Summarize
    upstreams: [Count item]
"""


def test_run_a_yaml_file_whose_handlers_live_next_to_it(
    cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    flows = tmp_path / "flows"
    (flows / "mypkg").mkdir(parents=True)
    (flows / "mypkg" / "__init__.py").write_text("")
    (flows / "mypkg" / "ops.py").write_text(OPS)
    (flows / "greet.yaml").write_text(FLOW)
    out = tmp_path / "summary.txt"

    ran = cli(
        "run",
        "flows/greet.yaml",
        "--set",
        "who=world",
        "--set",
        f"out={out}",
        "--list",
        "items=a,bb",
        "--wait",
        "--timeout",
        "60",
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Summarize: RUNNING -> SUCCESSFUL" in ran.stdout
    assert out.read_text() == "hello world; seen_a,seen_bb"
    task_id = found_int(r"^task (\d+) ", ran.stdout)

    task = json.loads(cli("show", str(task_id), "--json").stdout)
    assert task["name"] == "Greet and count"
    assert task["status"] == "SUCCESSFUL"
    assert task["context"]["stringMap"]["who"] == "world"
    assert task["context"]["listMap"] == {"items": ["a", "bb"]}
    subs = {(sub["name"], sub["parallelIdx"]): sub for sub in task["subtasks"]}
    assert set(subs) == {("Greet", -1), ("Count item", 0), ("Count item", 1), ("Summarize", -1)}
    assert {sub["status"] for sub in subs.values()} == {"SUCCESSFUL"}
    assert subs[("Greet", -1)]["className"] == "mypkg.ops.Greet"

    log = cli("logs", str(task_id), str(subs[("Summarize", -1)]["id"]))
    assert log.returncode == 0, log.stderr
    assert "summary: hello world; seen_a,seen_bb" in log.stdout

    human = cli("show", str(task_id))
    assert human.returncode == 0
    assert re.search(rf"^task {task_id} Greet and count: SUCCESSFUL \(EXECUTE\)", human.stdout)
    assert re.search(r"^\s+\d+\s+Count item \[1\]\s+SUCCESSFUL\s+EXECUTE\s+1\s", human.stdout, re.M)


def test_run_without_wait_returns_a_running_task(
    dt: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    host_id = add_host(dt, tmp_path)
    started = time.monotonic()
    submitted = json_out(dt("run", "stop-ocp-agent", "--set", f"host_id={host_id}", "--json"))
    assert time.monotonic() - started < 10
    assert submitted["status"] == "RUNNING"
    assert submitted["hostId"] == host_id

    task = json_out(dt("show", str(submitted["id"]), "--json"))
    assert task["status"] == "RUNNING"
    statuses = {sub["name"]: sub["status"] for sub in task["subtasks"]}
    assert statuses == {
        "Prepare stop OCP agent": "READY",
        "Stop all OCP agent processes": "PENDING",
        "Finish OCP agent operation": "PENDING",
    }

    # One host operation per host at a time: a second one is refused, naming the running task.
    code, out, err = dt("run", "Restart OCP agent", "--set", f"host_id={host_id}")
    assert code == 4, out  # refused by the engine (409)
    assert f"host {host_id} already has a running host operation: task {submitted['id']}" in err
    assert json_out(dt("list", "--json"))["page"]["totalElements"] == 1


def test_run_wait_then_logs(dt: Callable[..., tuple[int, str, str]], tmp_path: Path) -> None:
    host_id = add_host(dt, tmp_path)
    code, out, err = dt("run", "stop-ocp-agent", "--set", f"host_id={host_id}", "--wait")
    assert code == 0, err
    task_id = found_int(r"^task (\d+) Stop OCP agent: SUCCESSFUL", out)
    task = json_out(dt("show", str(task_id), "--json"))
    stop = next(sub for sub in task["subtasks"] if sub["name"] == "Stop all OCP agent processes")

    code, log, err = dt("logs", str(task_id), str(stop["id"]))
    assert code == 0, err
    assert "############{EXECUTE}{" in log
    assert "nothing to stop" in log
    assert f"Set state for subtask: {stop['id']}" in log
    assert json_out(dt("logs", str(task_id), str(stop["id"]), "--json")) == {"log": log}


def test_list_pages_filters_and_renders(
    dt: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    hosts = [add_host(dt, tmp_path, f"web-{n}") for n in range(3)]
    ids = [
        json_out(dt("run", "stop-ocp-agent", "--set", f"host_id={host_id}", "--json"))["id"]
        for host_id in hosts
    ]
    page = json_out(dt("list", "--page", "2", "--size", "2", "--json"))
    assert set(page) == {"contents", "page"}
    assert page["page"] == {"number": 2, "size": 2, "totalElements": 3, "totalPages": 2}
    assert [item["id"] for item in page["contents"]] == [min(ids)]  # newest first
    item = page["contents"][0]
    assert item["status"] == "RUNNING"
    assert set(item["subtasks"][0]) == {"id", "name", "description", "status", "operation"}

    assert json_out(dt("list", "--status", "failed,successful", "--json"))["contents"] == []
    assert len(json_out(dt("list", "--name", "stop", "--json"))["contents"]) == 3

    code, out, _ = dt("list")
    assert code == 0
    assert re.search(rf"^{max(ids)}\s+Stop OCP agent\s+RUNNING\s+EXECUTE\s+0/3\s", out, re.M)
    assert "page 1 of 1, 3 tasks" in out

    code, _, err = dt("list", "--status", "DONE")
    assert code == 2
    assert "RUNNING, FAILED, SUCCESSFUL" in err


def test_templates(dt: Callable[..., tuple[int, str, str]]) -> None:
    code, out, _ = dt("templates")
    assert code == 0
    assert re.search(r"^stop-ocp-agent\s+Stop OCP agent\s+3\s+Stop the OCP agent", out, re.M)
    listed = json_out(dt("templates", "--json"))
    stop = next(t for t in listed if t["name"] == "Stop OCP agent")
    assert [sub["name"] for sub in stop["subtasks"]] == [
        "Prepare stop OCP agent",
        "Stop all OCP agent processes",
        "Finish OCP agent operation",
    ]


# ---- hosts ---------------------------------------------------------------------------------------


def test_hosts_add_with_agent_and_list(
    cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    added = cli(
        "hosts", "add", "--name", "db-1", "--ip", "10.0.0.7", "--agent-home", "agents/db-1",
        "--start-agent",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = re.search(r"pid ([\d, ]+)$", added.stdout, re.M)
    assert listed, added.stdout
    pids = [int(pid) for pid in listed.group(1).split(", ")]
    assert len(pids) == 3
    assert all(pid_alive(pid) for pid in pids)

    hosts = json.loads(cli("hosts", "list", "--json").stdout)
    assert len(hosts) == 1
    assert hosts[0]["name"] == "db-1"
    assert hosts[0]["inner_ip"] == "10.0.0.7"
    assert hosts[0]["agent_status"] == "ONLINE"
    stored = Path(hosts[0]["agent_home"])
    assert stored.is_absolute()
    assert stored.resolve() == (tmp_path / "agents" / "db-1").resolve()

    table = cli("hosts", "list")
    assert re.search(r"^1\s+db-1\s+10\.0\.0\.7\s+ONLINE\s+ONLINE\s+local\s+/", table.stdout, re.M)

    again = cli("hosts", "add", "--name", "db-1", "--ip", "10.0.0.8", "--agent-home", "x")
    assert again.returncode == 4  # refused by the engine (the name is taken)
    assert again.stderr.startswith("dagtask: error: a host named 'db-1' already exists")
    assert "Traceback" not in again.stderr


# ---- errors --------------------------------------------------------------------------------------


def one_error_line(result: tuple[int, str, str], code: int = 2) -> str:
    got, out, err = result
    assert got == code, out + err
    # "dagtask: error: ...", or "dagtask: error 2000x: ..." for OCP's coded task errors.
    assert re.match(r"dagtask: error( \d+)?: ", err), err
    assert "error: error" not in err
    assert err.count("\n") == 1, err
    return err


def test_user_mistakes_are_one_line_and_exit_2(
    dt: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    assert "no template named 'no-such-flow'" in one_error_line(dt("run", "no-such-flow"))
    assert "20000" in one_error_line(dt("show", "999"), code=4)  # refusals by the engine: 4
    assert "20000" in one_error_line(dt("logs", "999", "1"), code=4)
    assert "KEY=VALUE" in one_error_line(dt("run", "stop-ocp-agent", "--set", "host_id"))
    assert "KEY=VALUE" in one_error_line(dt("run", "stop-ocp-agent", "--list", "=a,b"))
    assert "--timeout" in one_error_line(dt("run", "stop-ocp-agent", "--timeout", "5"))

    cycle = tmp_path / "cycle.yaml"
    cycle.write_text(
        textwrap.dedent(
            """
            name: Loop
            subtasks:
              - {name: A, handler: dagtask.builtin.noop, upstreams: [C]}
              - {name: B, handler: dagtask.builtin.noop, upstreams: [A]}
              - {name: C, handler: dagtask.builtin.noop, upstreams: [B]}
            """
        )
    )
    assert "20001" in one_error_line(dt("run", str(cycle)))
    assert "cannot read" in one_error_line(dt("run", "missing.yaml"))

    err = one_error_line(dt("run", "stop-ocp-agent", "--set", "host_id=42"), code=4)
    assert "host 42 does not exist" in err
    assert "no task was created" in err
    assert json_out(dt("list", "--json"))["page"]["totalElements"] == 0


def test_argparse_usage_errors_keep_argparse_behaviour(
    dt: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["show", "not-a-number"])
    assert exit_info.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_errors_from_a_real_process_have_no_traceback(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    assert cli("db", "upgrade").returncode == 0
    result = cli("show", "12345")
    assert result.returncode == 4  # refused by the engine: not found
    assert result.stderr == (
        "dagtask: error 20000: task 12345 does not exist; list tasks with `dagtask list`\n"
    )
    assert "Traceback" not in result.stderr


# ---- worker, db, help ----------------------------------------------------------------------------


def test_worker_runs_tasks_until_sigterm(
    dt: Callable[..., tuple[int, str, str]], tmp_path: Path, db_url: str, env: dict[str, str]
) -> None:
    host_id = add_host(dt, tmp_path)
    worker = subprocess.Popen(
        [sys.executable, "-m", "dagtask", "worker", "--db", db_url, "--concurrency", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        task = json_out(dt("run", "stop-ocp-agent", "--set", f"host_id={host_id}", "--json"))
        wait_until(
            lambda: json_out(dt("show", str(task["id"]), "--json"))["status"] == "SUCCESSFUL",
            60,
            "the worker to finish the task",
        )
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, err
    assert re.search(r"worker \S+ started: 2 subtasks at a time", err), err
    assert "received SIGTERM" in err
    assert re.search(r"worker \S+ stopped", err), err
    done = json_out(dt("show", str(task["id"]), "--json"))
    assert {sub["executor"] for sub in done["subtasks"]} == {f"{socket.gethostname()}:{worker.pid}"}


def test_db_upgrade_creates_a_fresh_database(dt: Callable[..., tuple[int, str, str]]) -> None:
    code, out, err = dt("db", "upgrade")
    assert code == 0, err
    assert out.strip().endswith(f"upgraded from none to {head_revision()}")
    code, out, _ = dt("db", "upgrade")
    assert code == 0
    assert out.strip().endswith(f"already at {head_revision()}")


def test_db_upgrade_hides_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psycopg")
    code = main(["db", "upgrade", "--db", "postgresql+psycopg://me:s3cret@127.0.0.1:1/none"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("dagtask: error: cannot upgrade database postgresql+psycopg://me:***@")
    assert "s3cret" not in err


def test_python_m_dagtask_help(tmp_path: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dagtask", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: dagtask")
    commands = ["demo", "run", "show", "list", "logs", "retry", "rollback", "cancel", "subtask"]
    for command in [*commands, "templates", "hosts", "worker", "db"]:
        assert re.search(rf"^\s+{command}\s+\S", result.stdout, re.M), command


def test_every_command_and_option_has_help() -> None:
    def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    assert helps.get(name), f"{path} {name} has no help"
                    yield from walk(sub, f"{path} {name}")
            else:
                yield path, action

    for path, action in walk(build_parser(), "dagtask"):
        assert action.help and action.help != argparse.SUPPRESS, (path, action.option_strings)
