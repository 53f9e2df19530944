"""Run the "Rotate agent logs" host operation, defined in Python, on a demo host.

    python examples/rotate_logs/run.py [--db URL] [--agent-home DIR] [--demo-rollback]

Creates an agent home with a few logs (a temporary one unless --agent-home is given), registers
it as a host, runs the task to its end with ``Engine.run`` and prints the outcome. With
--demo-rollback the last step fails on purpose and the task is then rolled back, which puts the
logs back as they were. Exits 0 when the task (or its rollback) is SUCCESSFUL.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The handlers are stored by dotted path from the repository root (examples.rotate_logs.ops...),
# the same names the YAML template uses with `dagtask run` from the root. Python puts only this
# script's folder on sys.path, so add the root; importing the script from a test works as well.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dagtask import Engine, Operation, TaskStatus
from examples._support import example_database
from examples.rotate_logs import demo, ops
from examples.rotate_logs.template import rotate_logs_template


def main(argv: list[str] | None = None) -> int:
    """Run the example; return the process exit code."""
    parser = demo.make_parser("Rotate the agent logs of a demo host (Python template).")
    parser.add_argument(
        "--demo-rollback",
        action="store_true",
        help="make the last step fail (stringMap.simulate_failure=true), then roll the task back",
    )
    args = parser.parse_args(argv)
    with example_database(args.db) as url, demo.agent_home(args.agent_home) as home:
        demo.write_demo_logs(home)
        # workers=2: Engine.run works on this task in this process with two threads.
        with Engine(url, workers=2) as engine:
            host = demo.register_host(engine, home)
            print(f"Host {host.id} ({host.name}), agent home {home}")
            task_args = {ops.HOST_ID: str(host.id)}
            if args.demo_rollback:
                task_args[ops.SIMULATE_FAILURE] = "true"
            task = engine.run(rotate_logs_template(), args=task_args, timeout=120)
            demo.print_outcome(engine, task, home)
            if args.demo_rollback and task.status is TaskStatus.FAILED:
                # What an operator does with a failed task that must leave no trace: the engine
                # runs each step's rollback in reverse order, Finish first, Prepare last.
                print("\nRolling the task back")
                engine.rollback(task.id)
                task = engine.run_task(task.id, timeout=120)
                demo.print_outcome(engine, task, home)
    wanted = Operation.ROLLBACK if args.demo_rollback else Operation.EXECUTE
    return 0 if task.status is TaskStatus.SUCCESSFUL and task.operation is wanted else 1


if __name__ == "__main__":
    sys.exit(main())
