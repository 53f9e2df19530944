"""A small service that embeds the dagtask engine.

    python examples/embedded_service.py [--db URL]

It starts the engine's workers in the background, submits a few tasks (examples/service_jobs.py;
one of them fails once and succeeds on its automatic retry), prints every status change as it
happens (one ``Engine.follow`` thread per task), waits for all of them, prints a summary and
stops the workers. Exits 0 when every task is SUCCESSFUL.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

# The handlers are stored by dotted path (examples.service_jobs.fetch_orders, ...): put the
# repository root on sys.path, since Python adds only this script's folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagtask import Engine, TaskEvent, TaskInfo, TaskStatus, TaskTemplate
from examples import service_jobs
from examples._support import add_db_argument, example_database

WAIT_SECONDS = 60.0
"""How long the service waits for its tasks before giving up (they take about a second)."""

_print_lock = threading.Lock()


def say(line: str) -> None:
    """Print one whole line from any thread (flushed, so a pipe sees it as it happens)."""
    with _print_lock:
        print(line, flush=True)


def describe(event: TaskEvent, task: TaskInfo) -> str:
    """One human line for a history event of ``task``."""
    prefix = f"[task {task.id} {task.name}]"
    if event.subtask_id is None:
        change = f"task {event.old_status or '-'} -> {event.new_status}"
        return f"{prefix} {change}" + (f" ({event.message})" if event.message else "")
    names = {sub.id: sub.name for sub in task.subtasks}
    name = names.get(event.subtask_id, f"subtask {event.subtask_id}")
    line = f"{prefix} {name}: {event.old_status} -> {event.new_status}"
    if event.new_operation and event.new_operation != "EXECUTE":
        line += f" ({event.new_operation}, attempt {event.run_time})"
    if event.message:
        line += f" - {event.message}"
    return line


def follow(engine: Engine, task: TaskInfo) -> None:
    """Print the task's status changes until it ends (run in a thread per task)."""
    # follow() replays the history from the start, so nothing is missed even though the task
    # began running before this thread did.
    for event in engine.follow(task.id):
        say(describe(event, task))


def submit_all(engine: Engine) -> list[TaskInfo]:
    """Submit the service's jobs; return the new tasks."""
    jobs: list[tuple[TaskTemplate, Mapping[str, str], Mapping[str, Sequence[str]]]] = [
        (service_jobs.sales_report(), {"day": "2024-05-01"}, {}),
        (service_jobs.inventory_sync(), {"warehouse": "eu-west"}, {}),
        (service_jobs.thumbnails(), {}, {"images": ["cat.png", "dog.png", "owl.png", "fox.png"]}),
    ]
    return [engine.submit(tpl, args=args, lists=lists) for tpl, args, lists in jobs]


def summary(task: TaskInfo) -> str:
    """One line per task: its status, size and how many automatic retries it needed."""
    retries = sum(sub.run_time - 1 for sub in task.subtasks)
    outputs = {
        key: value
        for sub in task.subtasks
        if sub.context is not None
        for key, value in sub.context.string_map.items()
        if key in ("report", "synced_items", "thumbnails")
    }
    shown = ", ".join(f"{key}={value!r}" for key, value in sorted(outputs.items()))
    return (
        f"  task {task.id:<3} {task.name:<22} {task.status.value:<10} "
        f"{len(task.subtasks)} subtasks, {retries} retr{'y' if retries == 1 else 'ies'}  {shown}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the service until its tasks are done; return the process exit code."""
    parser = argparse.ArgumentParser(description="Embed the dagtask engine in a small service.")
    add_db_argument(parser)
    args = parser.parse_args(argv)
    with example_database(args.db) as url, Engine(url, workers=4) as engine:
        # The context manager stops the workers and closes the database even if we fail below.
        engine.start()
        say(f"Engine started with {engine.workers} workers on {url}")
        tasks = submit_all(engine)
        followers = [
            # Daemons: if waiting times out, the error must end the process, not a follower.
            threading.Thread(
                target=follow, args=(engine, task), name=f"follow-{task.id}", daemon=True
            )
            for task in tasks
        ]
        for thread in followers:
            thread.start()
        finished = [engine.wait(task.id, timeout=WAIT_SECONDS) for task in tasks]
        for thread in followers:
            thread.join()  # each ends right after its task's last event
        say("Summary:")
        for task in finished:
            say(summary(task))
    ok = all(task.status is TaskStatus.SUCCESSFUL for task in finished)
    say("All tasks SUCCESSFUL" if ok else "Some tasks did not succeed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
