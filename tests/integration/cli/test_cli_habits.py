"""The CLI fits a person's habits: shell completion, "did you mean", an example in every
--help, documented exit codes, settings from the environment and a config file, list filters,
logs by subtask name, template slugs, replay in show's order, counts, closed pipes, a quick
--version."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from dagtask.cli.parser import EXAMPLES, build_parser, subcommands
from tests.integration.cli.support import CLI_TIMEOUT, Cli, Run

FLOW = """
name: Habit flow
subtasks:
  - name: First step
    handler: tests.handlers.chatty
  - name: Second step
    handler: tests.handlers.chatty
    upstreams: [First step]
  - name: Third step
    handler: tests.handlers.chatty
    upstreams: [Second step]
"""


def json_out(result: tuple[int, str, str]) -> Any:
    code, out, err = result
    assert code == 0, err
    return json.loads(out)


def run_flow(dt: Run, tmp_path: Path, *extra: str) -> dict[str, Any]:
    (tmp_path / "habit.yaml").write_text(FLOW)
    code, out, err = dt("run", "habit.yaml", "--wait", "--json", *extra)
    assert code == 0, err
    task: dict[str, Any] = json.loads(out)
    return task


def add_host(dt: Run, tmp_path: Path, name: str) -> int:
    home = str(tmp_path / name)
    code, out, err = dt("hosts", "add", "--name", name, "--ip", "127.0.0.1", "--agent-home", home)
    assert code == 0, err
    return int(re.search(r"^host (\d+) added", out, re.M).group(1))  # type: ignore[union-attr]


def complete(dt: Run, *words: str) -> list[str]:
    code, out, err = dt("__complete", "--", *words)
    assert code == 0 and err == "", err
    return out.splitlines()


# ---- completion ----------------------------------------------------------------------------------


def test_the_hidden_completer_offers_commands_options_templates_and_task_ids(
    dt: Run, tmp_path: Path
) -> None:
    assert complete(dt, "ro") == ["rollback"]
    assert complete(dt, "run", "St") == ["stop-ocp-agent"]
    assert "--concurrency" in complete(dt, "worker", "--con")
    assert complete(dt, "list", "--status", "FAILED,SU") == ["FAILED,SUCCESSFUL"]
    assert complete(dt, "completion", "") == ["bash", "fish", "zsh"]
    assert complete(dt, "show", "") == []  # no database yet, and completion did not create one
    assert not (tmp_path / "x.db").exists()
    first = run_flow(dt, tmp_path)["id"]
    second = run_flow(dt, tmp_path)["id"]
    assert complete(dt, "show", "") == [str(second), str(first)]  # newest first
    subtasks = [s["id"] for s in json_out(dt("show", str(first), "--json"))["subtasks"]]
    assert sorted(complete(dt, "logs", str(first), "")) == sorted(map(str, subtasks))
    assert "__complete" not in complete(dt, "")


def test_the_bash_script_fills_compreply(tmp_path: Path, db_url: str, env: dict[str, str]) -> None:
    script = subprocess.run(
        [sys.executable, "-m", "dagtask", "completion", "bash"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=CLI_TIMEOUT,
        check=True,
    ).stdout
    (tmp_path / "dagtask.bash").write_text(script)
    shell_env = {**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}

    def compreply(*words: str) -> list[str]:
        words_text = " ".join(f"'{w}'" for w in words)
        program = (
            "source ./dagtask.bash; "
            f"COMP_WORDS=(dagtask {words_text}); COMP_CWORD={len(words)}; "
            "_dagtask_complete; printf '%s\\n' \"${COMPREPLY[@]}\""
        )
        done = subprocess.run(
            ["bash", "-c", program],
            capture_output=True,
            text=True,
            env=shell_env,
            cwd=tmp_path,
            timeout=CLI_TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
        return [line for line in done.stdout.splitlines() if line]

    assert compreply("ro") == ["rollback"]
    assert compreply("run", "st") == ["stop-ocp-agent"]
    assert compreply("--db", db_url, "rollback", "--pl") == ["--plan"]
    assert set(compreply("subtask", "")) == {"retry", "skip", "cancel"}


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_call_the_completer(cli: Cli, shell: str) -> None:
    done = cli("completion", shell)
    assert done.returncode == 0, done.stderr
    assert "dagtask __complete --" in done.stdout
    assert ("compdef _dagtask dagtask" if shell == "zsh" else "complete -c dagtask") in done.stdout


# ---- did you mean, examples ----------------------------------------------------------------------


def test_a_misspelled_option_or_command_gets_the_closest_one(cli: Cli) -> None:
    done = cli("worker", "--concurency", "3")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        "dagtask worker: error: unrecognized arguments: --concurency 3 "
        "(did you mean --concurrency?)"
    )
    done = cli("rolback", "7")
    assert done.returncode == 2
    last = done.stderr.splitlines()[-1]
    assert last.endswith("; did you mean 'rollback'?"), last
    assert "__complete" not in last


def test_every_command_help_ends_with_an_example() -> None:
    leaves = [
        (path, sub)
        for path, sub in subcommands(build_parser())
        if sub.get_default("func") is not None and path != "__complete"
    ]
    assert len(leaves) > 25
    for path, sub in leaves:
        text = sub.format_help()
        assert f"example:\n  {EXAMPLES[path]}" in text, path
        assert EXAMPLES[path].startswith(("dagtask ", "source ", "DAGTASK_")), path


# ---- exit codes ----------------------------------------------------------------------------------


def test_exit_codes_tell_a_refusal_from_a_mistake(dt: Run, tmp_path: Path, cli: Cli) -> None:
    task = run_flow(dt, tmp_path)
    code, _, err = dt("show", "999")
    assert (code, err.startswith("dagtask: error 20000:")) == (4, True), err
    code, _, err = dt("retry", str(task["id"]))  # SUCCESSFUL: not allowed (20003)
    assert (code, err.startswith("dagtask: error 20003:")) == (4, True), err
    code, _, err = dt("list", "--status", "DONE")
    assert code == 2, err
    assert cli("show", "abc").returncode == 2
    help_text = cli("--help").stdout
    for line in ("0    done", "2    a mistake", "4    refused by the engine", "3    a bug"):
        assert line in help_text


# ---- settings ------------------------------------------------------------------------------------


def test_config_shows_each_setting_and_its_source(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "dagtask.toml").write_text(
        'db = "sqlite:///from-file.db"\n[worker]\nconcurrency = 6\nlease = 40\n'
        "[serve]\nport = 9001\n"
    )
    run_env = {**env, "DAGTASK_WORKER_LEASE": "50", "DAGTASK_SERVE_HOST": "0.0.0.0"}
    done = subprocess.run(
        [sys.executable, "-m", "dagtask", "config", "--json"],
        capture_output=True,
        text=True,
        env=run_env,
        cwd=tmp_path,
        timeout=CLI_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    rows = {row["setting"]: row for row in json.loads(done.stdout)}
    assert rows["db"]["value"] == "sqlite:///from-file.db"
    assert rows["db"]["source"] == "config file"
    assert (rows["worker.concurrency"]["value"], rows["worker.concurrency"]["source"]) == (
        6,
        "config file",
    )
    assert rows["worker.lease"]["value"] == 50  # the environment beats the file
    assert rows["worker.lease"]["where"] == "$DAGTASK_WORKER_LEASE"
    assert rows["serve.host"]["value"] == "0.0.0.0"
    assert rows["serve.port"]["value"] == 9001
    assert rows["worker.poll"]["source"] == "default"
    assert rows["worker.stop_timeout"]["variable"] == "DAGTASK_WORKER_STOP_TIMEOUT"
    assert not (tmp_path / "from-file.db").exists()  # showing settings opens no database

    table = subprocess.run(
        [sys.executable, "-m", "dagtask", "--db", "sqlite:///cli.db", "config"],
        capture_output=True,
        text=True,
        env=run_env,
        cwd=tmp_path,
        timeout=CLI_TIMEOUT,
    ).stdout
    assert f"config file: {tmp_path / 'dagtask.toml'}" in table
    assert re.search(r"^db\s+sqlite:///cli.db\s+command line \(--db\)", table, re.M)
    assert re.search(r"^worker.lease\s+50\s+environment\s+DAGTASK_WORKER_LEASE$", table, re.M)
    assert re.search(r"^worker.concurrency\s+6\s+config file\s+DAGTASK_WORKER_CONC", table, re.M)
    assert max(map(len, table.splitlines()[1:])) <= 100  # the rows; the file path is above


def test_a_bad_setting_is_one_line_naming_where_it_is(tmp_path: Path, env: dict[str, str]) -> None:
    def worker(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dagtask", "worker"],
            capture_output=True,
            text=True,
            env={**env, **extra},
            cwd=tmp_path,
            timeout=CLI_TIMEOUT,
        )

    done = worker({"DAGTASK_WORKER_CONCURRENCY": "lots"})
    assert done.returncode == 2
    assert done.stderr == (
        "dagtask: error: environment variable DAGTASK_WORKER_CONCURRENCY='lots': "
        "'lots' is not a number; set it right or unset it (`dagtask config` shows each setting "
        "and its default)\n"
    )
    (tmp_path / "dagtask.toml").write_text("[worker]\nconcurrency = 5000\n")
    done = worker({})
    assert done.returncode == 2
    assert done.stderr == (
        f"dagtask: error: config file {tmp_path / 'dagtask.toml'} [worker] concurrency: "
        "must be at most 1024, got 5000\n"
    )
    assert not (tmp_path / "dagtask.db").exists()


def test_a_worker_takes_its_settings_from_the_environment(
    tmp_path: Path, db_url: str, env: dict[str, str]
) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-m", "dagtask", "worker"],
        env={**env, "DAGTASK_DB_URL": db_url, "DAGTASK_WORKER_NAME": "from-env"},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        shown = ""
        deadline = time.monotonic() + 60
        while "started" not in shown and time.monotonic() < deadline:
            done = subprocess.run(
                [sys.executable, "-m", "dagtask", "--db", db_url, "workers", "--json"],
                capture_output=True,
                text=True,
                env=env,
                timeout=CLI_TIMEOUT,
            )
            if done.returncode == 0 and "from-env" in done.stdout:
                shown = "started"
            else:
                time.sleep(0.2)
        assert shown == "started", "the worker never registered as from-env"
    finally:
        worker.terminate()
        worker.communicate(timeout=60)


# ---- list, logs, templates, replay, counts -------------------------------------------------------


def test_list_filters_by_host_and_type(dt: Run, tmp_path: Path) -> None:
    hosts = [add_host(dt, tmp_path, f"h{n}") for n in range(2)]
    ids = [
        json_out(dt("run", "stop-ocp-agent", "--set", f"host_id={h}", "--json"))["id"]
        for h in hosts
    ]
    page = json_out(dt("list", "--host", str(hosts[1]), "--json"))
    assert [item["id"] for item in page["contents"]] == [ids[1]]
    assert len(json_out(dt("list", "--type", "manual", "--json"))["contents"]) == 2
    assert json_out(dt("list", "--type", "SCHEDULED", "--json"))["contents"] == []
    code, _, err = dt("list", "--type", "WEEKLY")
    assert code == 2 and "--type 'WEEKLY' is not a task type" in err
    code, out, _ = dt("list", "--host", str(hosts[0]))
    assert code == 0 and "page 1 of 1, 1 task\n" in out


def test_list_filters_by_time_window_and_creator(dt: Run, tmp_path: Path) -> None:
    first = run_flow(dt, tmp_path)
    between = datetime.now().astimezone()
    time.sleep(0.01)  # creation times are stored to the microsecond
    second = run_flow(dt, tmp_path)
    newer = json_out(dt("list", "--since", between.isoformat(), "--json"))["contents"]
    older = json_out(dt("list", "--until", between.isoformat(), "--json"))["contents"]
    assert [t["id"] for t in newer] == [second["id"]]
    assert [t["id"] for t in older] == [first["id"]]
    creator = first["creator"]
    assert len(json_out(dt("list", "--creator", creator, "--json"))["contents"]) == 2
    assert json_out(dt("list", "--creator", creator + "-else", "--json"))["contents"] == []
    with pytest.raises(SystemExit) as refused:  # argparse's own usage error, exit 2
        dt("list", "--since", "last week")
    assert refused.value.code == 2


def test_logs_take_a_subtask_name(dt: Run, tmp_path: Path) -> None:
    task = run_flow(dt, tmp_path)
    second = next(s for s in task["subtasks"] if s["name"] == "Second step")
    by_id = dt("logs", str(task["id"]), str(second["id"]))
    by_name = dt("logs", str(task["id"]), "Second step")
    assert by_id == by_name and by_id[0] == 0
    assert "hello from Second step" in by_name[1]
    code, _, err = dt("logs", str(task["id"]), "Fourth step")
    assert code == 4 and "has no subtask 'Fourth step'" in err


def test_templates_show_the_slugs_run_accepts(dt: Run) -> None:
    code, out, _ = dt("templates")
    assert code == 0
    assert re.search(r"^SLUG\s+NAME\s+", out, re.M)
    assert re.search(r"^stop-ocp-agent\s+Stop OCP agent\s+", out, re.M)


def test_replay_lists_subtasks_in_the_order_show_does(dt: Run, tmp_path: Path) -> None:
    task = run_flow(dt, tmp_path)

    def names(output: str) -> list[str]:
        return re.findall(r"^\s+\d+\s+(\w+ step)\s", output, re.M)

    code, shown, _ = dt("show", str(task["id"]))
    assert code == 0
    code, replayed, _ = dt("replay", str(task["id"]))
    assert code == 0
    assert names(shown) == names(replayed) == ["First step", "Second step", "Third step"]


# ---- pipes and --version -------------------------------------------------------------------------


def test_a_closed_pipe_prints_no_traceback(dt: Run, tmp_path: Path, db_url: str) -> None:
    for _ in range(3):
        run_flow(dt, tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["bash", "-c", f"dagtask --db {db_url} list --size 2000 | head -1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=CLI_TIMEOUT,
    )
    assert done.stdout.startswith("ID")
    assert done.stderr == ""
    done = subprocess.run(
        ["bash", "-c", f"dagtask --db {db_url} templates --json | head -c 1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=CLI_TIMEOUT,
    )
    assert (done.stdout, done.stderr) == ("[", "")


def test_version_answers_quickly() -> None:
    bin_dir = Path(sys.executable).parent
    for command in (
        [sys.executable, "-m", "dagtask", "--version"],
        [str(bin_dir / "dagtask"), "--version"],
    ):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, timeout=CLI_TIMEOUT)
            best = min(best, time.perf_counter() - start)
            assert done.returncode == 0 and re.match(r"dagtask \d+\.\d+", done.stdout)
        print(f"{' '.join(command[-2:])}: {best:.3f} s")
        assert best < 1.0
