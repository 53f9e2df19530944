"""The examples in examples/ run as written and do what examples/README.md says they do.

Each example runs as a user would run it: a separate ``python`` process started in the repository
root, with its database in ``$DAGTASK_DB_URL`` and without ``PYTHONPATH`` (the scripts must find
their own handlers). The assertions are on what the user sees: the exit code, the printed
statuses and the files on disk.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from dagtask import CancellationToken, Engine, Operation, RunContext, TaskContext, load_template

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
TIMEOUT = 120  # seconds; each example takes one or two
AGENT_LOGS = ("ocp_agentd.log", "ocp_mgragent.log", "ocp_monagent.log")


def example_env(tmp_path: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an example process: our database, and no inherited PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DAGTASK_DB_URL")}
    env["DAGTASK_DB_URL"] = f"sqlite:///{tmp_path}/ex.db"
    env.update(extra or {})
    return env


def run_ok(command: list[str], env: Mapping[str, str]) -> str:
    """Run ``command`` in the repository root; assert it exits 0; return its stdout."""
    proc = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0, (
        f"{' '.join(command)} exited {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return proc.stdout


def assert_rotated_once(home: Path) -> None:
    """Each demo log was rotated: an empty fresh log, its old lines in ``.1``, no journal."""
    log_dir = home / "log"
    for name in AGENT_LOGS:
        assert (log_dir / name).read_text() == "", f"{name} should be a fresh, empty log"
        assert (log_dir / f"{name}.1").read_text().count("heartbeat") == 3, name
    assert not list(log_dir.glob(".rotate-*")), "Finish should have removed the journal"


# ---- rotate_logs: the Python template and the YAML template run from Python -------------------


@pytest.mark.parametrize("script", ["run.py", "run_yaml.py"])
def test_rotate_logs_rotates_the_logs_of_the_demo_host(tmp_path: Path, script: str) -> None:
    home = tmp_path / "agent"
    out = run_ok(
        [sys.executable, f"examples/rotate_logs/{script}", "--agent-home", str(home)],
        example_env(tmp_path),
    )

    assert re.search(r"Task \d+ 'Rotate agent logs': SUCCESSFUL, operation EXECUTE", out), out
    assert "Output: rotated_files=3" in out
    # The Rotate subtask's log, with the handler's own lines in it.
    assert "Rotated ocp_agentd.log -> ocp_agentd.log.1" in out
    assert "current state: RUNNING, new state: SUCCESSFUL" in out
    assert_rotated_once(home)
    assert (tmp_path / "ex.db").exists(), "the example should use $DAGTASK_DB_URL"


def test_rotate_logs_again_shifts_the_older_generation(tmp_path: Path) -> None:
    home = tmp_path / "agent"
    command = [sys.executable, "examples/rotate_logs/run.py", "--agent-home", str(home)]
    env = example_env(tmp_path)
    run_ok(command, env)
    second = run_ok(command, env)  # same database and agent home: reuses the host

    assert re.search(r"Task 2 'Rotate agent logs': SUCCESSFUL", second), second
    for name in AGENT_LOGS:
        assert (home / "log" / name).read_text() == ""
        # Run 2 wrote three new lines before rotating; run 1's lines moved on to .2.
        assert (home / "log" / f"{name}.1").read_text().count("heartbeat") == 3
        assert (home / "log" / f"{name}.2").read_text().count("heartbeat") == 3


def test_rotate_logs_demo_rollback_puts_the_logs_back(tmp_path: Path) -> None:
    home = tmp_path / "agent"
    (home / "log").mkdir(parents=True)
    (home / "log" / "ocp_agentd.log.1").write_text("an older rotation\n")

    out = run_ok(
        [
            sys.executable,
            "examples/rotate_logs/run.py",
            "--agent-home",
            str(home),
            "--demo-rollback",
        ],
        example_env(tmp_path),
    )

    assert re.search(r"Task 1 'Rotate agent logs': FAILED, operation EXECUTE", out), out
    assert "simulated failure" in out
    assert re.search(r"Task 1 'Rotate agent logs': SUCCESSFUL, operation ROLLBACK", out), out
    log_dir = home / "log"
    assert sorted(p.name for p in log_dir.iterdir()) == sorted([*AGENT_LOGS, "ocp_agentd.log.1"])
    for name in AGENT_LOGS:
        assert (log_dir / name).read_text().count("heartbeat") == 3, name
    assert (log_dir / "ocp_agentd.log.1").read_text() == "an older rotation\n"


def test_rotate_logs_without_db_or_agent_home_leaves_nothing_behind(tmp_path: Path) -> None:
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    env = example_env(tmp_path, {"TMPDIR": str(scratch)})
    del env["DAGTASK_DB_URL"]

    out = run_ok([sys.executable, "examples/rotate_logs/run.py"], env)

    assert "Output: rotated_files=3" in out
    assert f"agent home {scratch}" in out, "the demo agent home should be a temporary folder"
    assert list(scratch.iterdir()) == [], "the temporary database and agent home must be removed"


# ---- rotate_logs.yaml with the dagtask CLI ----------------------------------------------------


def test_rotate_logs_yaml_runs_with_the_cli(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    if importlib.util.find_spec("dagtask.cli") is None or not (bin_dir / "dagtask").exists():
        pytest.skip("the dagtask CLI (dagtask.cli and its console script) is not installed")
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("examples/run_yaml.sh needs bash")
    home = tmp_path / "agent"
    env = example_env(tmp_path, {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})

    out = run_ok([bash, "examples/run_yaml.sh", str(home)], env)

    assert re.search(r"^task \d+ Rotate agent logs: SUCCESSFUL", out, re.MULTILINE), out
    assert_rotated_once(home)


def test_the_yaml_template_is_the_python_template(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    from examples.rotate_logs.template import rotate_logs_template

    from_yaml = load_template(EXAMPLES / "rotate_logs" / "rotate_logs.yaml")
    assert from_yaml.definition() == rotate_logs_template().definition()
    from_yaml.check_handlers()  # every dotted path imports from the repository root


# ---- rotate_logs: the Rotate handler's rollback, step by step ---------------------------------


def test_rotate_rollback_restores_the_logs_and_keeps_new_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    from examples.rotate_logs import ops

    log_dir = tmp_path / "agent" / "log"
    log_dir.mkdir(parents=True)
    (log_dir / "a.log").write_text("current\n")
    (log_dir / "a.log.1").write_text("older\n")
    (log_dir / "b.log").write_text("b\n")

    with Engine(f"sqlite:///{tmp_path}/h.db", workers=0) as engine:
        host = engine.hosts.add(name="h", inner_ip="127.0.0.1", agent_home=str(log_dir.parent))

        def ctx_for(context: TaskContext) -> RunContext:
            return RunContext(
                context=context,
                task_id=7,
                subtask_id=1,
                operation=Operation.EXECUTE,
                run_time=1,
                token=CancellationToken(),
                services=engine.services,
            )

        prepared = ops.PrepareRotateLogs().execute(
            ctx_for(TaskContext(string_map={"host_id": str(host.id)}))
        )
        assert isinstance(prepared, dict)
        ctx = ctx_for(TaskContext(string_map={"host_id": str(host.id), **prepared}))
        rotate = ops.RotateAgentLogs()

        assert rotate.execute(ctx) == {"rotated_logs": "a.log,b.log"}
        # Executed again without a rollback (a re-claimed attempt): the journal makes it undo
        # the first rotation instead of rotating twice.
        rotate.execute(ctx)
        contents = {p.name: p.read_text() for p in log_dir.iterdir() if not p.name.startswith(".")}
        assert contents == {
            "a.log": "",
            "a.log.1": "current\n",
            "a.log.2": "older\n",
            "b.log": "",
            "b.log.1": "b\n",
        }

        (log_dir / "a.log").write_text("written after the rotation\n")
        rotate.rollback(ctx)
        rotate.rollback(ctx)  # idempotent: the journal is gone, nothing more to undo

    assert {p.name: p.read_text() for p in log_dir.iterdir()} == {
        "a.log": "current\nwritten after the rotation\n",
        "a.log.1": "older\n",
        "b.log": "b\n",
    }


# ---- embedded_service.py ----------------------------------------------------------------------


def test_embedded_service_runs_its_tasks_and_reports_each_change(tmp_path: Path) -> None:
    out = run_ok([sys.executable, "examples/embedded_service.py"], example_env(tmp_path))

    assert f"on sqlite:///{tmp_path}/ex.db" in out
    # Live progress, including the automatic retry of the flaky step.
    assert "Connect to warehouse: RUNNING -> FAILED - ConnectionError" in out
    assert "Connect to warehouse: FAILED -> READY (RETRY, attempt 2)" in out
    assert "Connect to warehouse: RUNNING -> SUCCESSFUL (RETRY, attempt 2)" in out
    assert out.count("Resize image: RUNNING -> SUCCESSFUL") == 4
    progress, _, summary = out.partition("Summary:")
    assert progress.count("task RUNNING -> SUCCESSFUL") == 3
    # The summary, one line per task.
    assert re.search(r"Nightly sales report\s+SUCCESSFUL .*42 orders, 3 refunds", summary)
    assert re.search(r"Sync inventory\s+SUCCESSFUL 2 subtasks, 1 retry ", summary)
    assert re.search(
        r"Make thumbnails\s+SUCCESSFUL 6 subtasks, 0 retries .*thumbnails='4'", summary
    )
    assert summary.rstrip().endswith("All tasks SUCCESSFUL")
