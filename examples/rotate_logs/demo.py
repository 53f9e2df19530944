"""What run.py and run_yaml.py share: a demo agent home, its host, and printing the outcome."""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagtask import Engine, HostInfo, HostNotFoundError, SubtaskStatus, TaskInfo
from examples._support import add_db_argument
from examples.rotate_logs import ops
from examples.rotate_logs.template import FINISH, PREPARE, ROTATE

AGENT_LOGS = ("ocp_agentd.log", "ocp_mgragent.log", "ocp_monagent.log")
"""The logs the demo agent home gets (the OCP agent's three processes)."""


def make_parser(description: str) -> argparse.ArgumentParser:
    """The demo's command line: ``--db URL`` and ``--agent-home DIR``."""
    parser = argparse.ArgumentParser(description=description)
    add_db_argument(parser)
    parser.add_argument(
        "--agent-home",
        metavar="DIR",
        help="agent home to rotate the logs of; created and filled with demo logs if needed "
        "(default: a temporary folder that is deleted when the example ends)",
    )
    return parser


@contextmanager
def agent_home(path: str | None) -> Iterator[Path]:
    """Yield the agent home ``path`` (created if missing), else a throw-away folder."""
    if path:
        home = Path(path).absolute()
        home.mkdir(parents=True, exist_ok=True)
        yield home
        return
    with tempfile.TemporaryDirectory(prefix="dagtask-agent-home-") as folder:
        yield Path(folder)


def write_demo_logs(home: Path) -> None:
    """Append a few lines to each agent log under ``home/log``, as a running agent would."""
    log_dir = home / "log"
    log_dir.mkdir(exist_ok=True)
    for name in AGENT_LOGS:
        with (log_dir / name).open("a", encoding="utf-8") as log:
            for n in range(1, 4):
                log.write(f"{name.removesuffix('.log')}: heartbeat {n} ok\n")


def register_host(engine: Engine, home: Path) -> HostInfo:
    """The inventory host whose agent lives in ``home``, added on first use."""
    # Host names are unique; deriving it from the folder lets a rerun with the same --db and
    # --agent-home reuse its host instead of failing on a duplicate name.
    name = "rotate-demo-" + hashlib.sha256(str(home).encode()).hexdigest()[:8]
    try:
        return engine.hosts.get_by_name(name)
    except HostNotFoundError:
        return engine.hosts.add(name=name, inner_ip="127.0.0.1", agent_home=str(home))


def print_outcome(engine: Engine, task: TaskInfo, home: Path) -> None:
    """Print the task's status, its subtasks, its output, the Rotate log and the log folder."""
    print(f"Task {task.id} {task.name!r}: {task.status.value}, operation {task.operation.value}")
    # In DAG order: subtask ids follow OCP's numbering (the sink first), not the run order.
    for sub in (task.subtask(name) for name in (PREPARE, ROTATE, FINISH)):
        why = f" - {sub.message}" if sub.message else ""
        print(f"  {sub.name:<28} {sub.status.value:<10} runTime {sub.run_time}{why}")
    finish = task.subtask(FINISH)
    if finish.status is SubtaskStatus.SUCCESSFUL and finish.context is not None:
        print(f"Output: {ops.ROTATED_FILES}={finish.context.string_map[ops.ROTATED_FILES]}")
    rotate = task.subtask(ROTATE)
    print(f"\n--- log of subtask {rotate.id} {rotate.name!r} ---")
    print(engine.logs(task.id, rotate.id).rstrip())
    print(f"\n--- {home / 'log'} after the task ---")
    for path in sorted((home / "log").iterdir()):
        print(f"  {path.name:<22} {path.stat().st_size:>5} bytes")
