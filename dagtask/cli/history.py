"""`dagtask` subcommands of the history feature (registered by `dagtask.cli.build_parser`):
``history``, ``replay``, ``export``, ``import``, ``rerun``, ``timeline`` and ``compat``.

They call :mod:`dagtask.history` and print for people, or with ``--json`` the typed models as
plain JSON (these are not OCP shapes: OCP has no history API).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagtask import history, views
from dagtask.cli import output as out
from dagtask.cli.common import (
    a_time,
    check_wait,
    import_from,
    is_template_file,
    json_flag,
    load_file,
    no_color_of,
    open_engine,
    operator_of,
    positive,
    task_id_arg,
    wait_options,
)
from dagtask.cli.tasks import RUN_HINT
from dagtask.errors import ArgumentError, TemplateError
from dagtask.history import timeline
from dagtask.history import typed as ev
from dagtask.template import TaskTemplate

if TYPE_CHECKING:
    from dagtask.cli.common import Commands
    from dagtask.engine import Engine


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json")


# ---- history -------------------------------------------------------------------------------------


def _header(h: history.TaskHistory) -> list[str]:
    lines = [
        f"task {h.task_id} {h.name}: {h.status.value} ({h.operation.value}), creator {h.creator}"
    ]
    if h.template is not None:
        lines.append(
            f"  template {h.template.name!r} version {h.template.version} "
            f"(id {h.template.id}, digest {h.template.digest[:12]})"
        )
    else:
        lines.append("  template: none stored")
    if h.source_task_id is not None:
        lines.append(f"  rerun of task {h.source_task_id}")
    if h.historical and h.origin:
        lines.append(f"  {out.origin_line(h.origin)}")
    return lines


def cmd_history(args: argparse.Namespace) -> int:
    """Print a task's history: every change, attempt and operator action, in order."""
    with open_engine(args, read_only=True) as engine:
        h = history.task_history(engine, args.id)
    if args.json:
        out.print_json(_dump(h))
        return 0
    print("\n".join(_header(h)))
    print("events:")
    for e in h.events:
        stamp = out.local(e.time).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        mark = "*" if isinstance(e, ev.OperatorChange) else " "
        print(f" {mark}{e.step:>4}  {stamp}  {out.one_line(e.describe(), 160)}")
    if h.attempts:
        print("attempts:")
        rows = [
            [
                a.subtask,
                str(a.run_time),
                a.operation.value,
                a.worker or "-",
                out.when(a.start),
                f"{a.duration:.3f}" if a.duration is not None else "-",
                a.result.value + (" (retried)" if a.retried_automatically else ""),
                out.one_line(a.error, 60) or "-",
            ]
            for a in h.attempts
        ]
        headers = [
            "SUBTASK",
            "RUNTIME",
            "OPERATION",
            "WORKER",
            "START",
            "SECONDS",
            "RESULT",
            "ERROR",
        ]
        print(out.table(headers, rows, indent="  "))
    if h.actions:
        print("operator actions (* above):")
        for act in h.actions:
            before = f"task was {act.task_status_before} / {act.task_operation_before}"
            targets = ", ".join(
                f"{c.subtask or 'task'} {c.old_status}->{c.new_status}" for c in act.changes
            )
            who = f"{act.action.value} by {act.operator}"
            print(f"  {out.when(act.time)}  {who} ({before}): {targets}")
    return 0


# ---- replay --------------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    """Rebuild a task's state from its events alone: at the end, after step N or at a time."""
    if args.step is not None and args.at is not None:
        raise ArgumentError("give --step or --at, not both")
    with open_engine(args, read_only=True) as engine:
        state = history.replay(engine, args.id, step=args.step, at=args.at)
        stored = history.snapshot(engine, args.id)
        task = engine.get(args.id)
    at_end = state.step == stored.step
    problems = history.differences(state, stored) if at_end else []
    if args.json:
        out.print_json({**_dump(state), "equals_stored": not problems if at_end else None})
        return 1 if problems else 0
    when = out.when(state.time) if state.time else "before the task was submitted"
    status = (
        f"{state.status.value} ({state.operation.value})"
        if state.status and state.operation
        else "-"
    )
    print(f"task {state.task_id} after step {state.step} of {stored.step} ({when}): {status}")
    # In the order `dagtask show` uses, and named as it names them (fan-out copies with [idx]).
    position = {sub.id: n for n, sub in enumerate(out.subtask_order(task.subtasks))}
    labels = out.subtask_labels(task)
    rows = [
        [
            str(s.id),
            labels.get(s.id, s.name),
            s.status.value,
            s.operation.value,
            str(s.run_time),
            s.executor or "-",
            out.one_line(s.message, 60) or "-",
        ]
        for s in sorted(state.subtasks, key=lambda s: (position.get(s.id, len(position)), s.id))
    ]
    headers = ["ID", "NAME", "STATUS", "OPERATION", "RUNTIME", "EXECUTOR", "MESSAGE"]
    print(out.table(headers, rows, indent="  "))
    if at_end:
        if problems:
            print("the replay DIFFERS from the stored task:")
            for problem in problems:
                print(f"  {problem}")
            return 1
        print("the replay equals the stored task")
    return 0


# ---- export and import ---------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    """Write a task's self-contained record (template, events, logs) as JSON lines."""
    with open_engine(args, read_only=True) as engine:
        data = history.record(engine, args.id)
    if args.output:
        with Path(args.output).open("w", encoding="utf-8") as file:
            history.exchange.write_export(data, file)
        print(f"task {args.id} exported to {args.output}", file=sys.stderr)
    else:
        history.exchange.write_export(data, sys.stdout)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import dagtask exports and OCP task documents as historical tasks (all or nothing)."""
    with open_engine(args) as engine:
        if not args.allow_duplicate:
            found = _already_imported(engine, args.files)
            if found:
                for line in found.lines:
                    print(line, file=sys.stderr if found.partly else sys.stdout)
                if found.partly:
                    raise ArgumentError(
                        f"{out.counted(len(found.lines), 'task')} of these files are already "
                        "imported (above), so nothing was imported; import the other files "
                        "alone, or pass --allow-duplicate to import copies"
                    )
                return 0
        done = history.import_files(engine, args.files)
    if args.json:
        out.print_json([dataclasses.asdict(item) for item in done])
        return 0
    for item in done:
        what = "OCP task" if item.format == "ocp" else "dagtask task"
        source = f"{what} {item.original_id} ({item.file})"
        print(f"task {item.task_id} {item.name}: imported from {source}")
    print(f"{out.counted(len(done), 'task')} imported as historical records")
    return 0


@dataclasses.dataclass
class _Duplicates:
    lines: list[str]
    """One line per task of the files that is already imported."""
    partly: bool
    """Some tasks of the files are not imported yet."""


def _already_imported(engine: Engine, files: list[str]) -> _Duplicates | None:
    """Which tasks of ``files`` an earlier import already stored (None: none of them)."""
    lines: list[str] = []
    total = 0
    for path in files:
        for item, fmt in history.parse_file(path):
            total += 1
            task_id = history.exchange.already_imported(engine.store.db, item.record, item.origin)
            if task_id is not None:
                what = "OCP task" if fmt == "ocp" else "dagtask task"
                lines.append(
                    f"{Path(path).name}: {what} {item.origin.get('task_id')} "
                    f"({item.record.task.name}) is already imported as task {task_id}; "
                    "not imported again (--allow-duplicate imports another copy)"
                )
    if not lines:
        return None
    return _Duplicates(lines, partly=len(lines) < total)


# ---- rerun ---------------------------------------------------------------------------------------


def cmd_rerun(args: argparse.Namespace) -> int:
    """Start a new task from a finished one's template and context (--from: reuse outputs)."""
    creator = operator_of(args)
    check_wait(args)
    if args.wait:
        import_from(Path.cwd())
    with open_engine(args, workers=args.workers) as engine:
        task = history.rerun(engine, args.id, from_subtask=args.from_subtask, creator=creator)
        reused = sum(1 for s in task.subtasks if s.status.value == "SUCCESSFUL")
        if not args.json:
            reuse = f", {out.counted(reused, 'subtask')} reuse its outputs"
            note = reuse if args.from_subtask else ""
            print(f"task {task.id} {task.name}: rerun of task {args.id}{note}")
        if not args.wait:
            if args.json:
                out.print_json(views.task_json(task))
            else:
                print(f"  {RUN_HINT.format(id=task.id)}")
            return 0
        return out.wait_here(
            engine,
            task.id,
            args.timeout,
            as_json=views.task_json if args.json else None,
            no_color=no_color_of(args),
        )


# ---- timeline ------------------------------------------------------------------------------------


def cmd_timeline(args: argparse.Namespace) -> int:
    """Show every attempt of every subtask on a time axis (--html: a page with a Gantt chart)."""
    with open_engine(args, read_only=True) as engine:
        if args.html:
            page = history.timeline_html(engine, args.id)
            Path(args.html).write_text(page, encoding="utf-8")
            print(f"timeline of task {args.id} written to {args.html}")
            return 0
        plain = args.no_colour or getattr(args, "no_color", False) or os.environ.get("NO_COLOR")
        colour = sys.stdout.isatty() and not plain
        width = args.width or timeline.terminal_width()
        print(history.timeline_text(engine, args.id, width=width, colour=colour))
    return 0


# ---- compatibility -------------------------------------------------------------------------------


def _candidate(engine: Engine, text: str) -> tuple[TaskTemplate, str]:
    if is_template_file(text):
        return load_file(Path(text)), text
    name, sep, version = text.rpartition(":")
    if sep and version.strip().isdigit():
        return history.stored_template(engine, name, int(version)), f"{name} v{version}"
    try:
        return history.stored_template(engine, text), text
    except TemplateError:  # not stored: a registered or built-in template
        return engine.template(text), text


def cmd_compat(args: argparse.Namespace) -> int:
    """Check whether a task could still be retried and rolled back under another template.

    Replays the task's history against the template and reports what no longer fits.
    """
    with open_engine(args, read_only=True) as engine:
        candidate, label = _candidate(engine, args.template)
        report = history.check_compat(engine, args.id, candidate, candidate_name=label)
    if args.json:
        out.print_json({**_dump(report), "compatible": report.compatible})
        return 0 if report.compatible else 1
    recorded = report.recorded_template or "no stored template"
    print(
        f"task {report.task_id} ({report.task_status.value}, expanded from {recorded}) vs {label}:"
    )
    print(f"  retry:    {'fits' if report.retry_ok else 'would NOT fit'}")
    print(f"  rollback: {'fits' if report.rollback_ok else 'would NOT fit'}")
    if report.first_misfit_step is not None:
        print(
            f"  replaying its {report.events_checked} events, step {report.first_misfit_step} is "
            "the first attempt the candidate cannot run"
        )
    if report.issues:
        rows = [
            [
                i.kind.value,
                i.subtask,
                ", ".join(
                    w for w, b in (("retry", i.blocks_retry), ("rollback", i.blocks_rollback)) if b
                )
                or "-",
                out.one_line(i.detail, 90),
            ]
            for i in report.issues
        ]
        print(out.table(["FINDING", "SUBTASK", "BLOCKS", "DETAIL"], rows, indent="  "))
    else:
        print("  nothing differs")
    return 0 if report.compatible else 1


# ---- parser --------------------------------------------------------------------------------------


def _step(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(
            f"--step takes a number of events (0 or more), got {text!r}"
        )
    return int(text)


def add_commands(commands: Commands) -> None:
    """Add this feature's subcommands to the `dagtask` parser."""
    show = commands.add("history", cmd_history)
    task_id_arg(show)
    json_flag(show, "the typed history (events, attempts, actions) as JSON")

    replay = commands.add(
        "replay",
        cmd_replay,
        epilog="At the end it also checks the replay "
        "against the stored task (exit 1 if they differ).",
    )
    task_id_arg(replay)
    replay.add_argument(
        "--step", type=_step, metavar="N", help="the state after the first N events"
    )
    replay.add_argument(
        "--at",
        type=a_time,
        metavar="TIME",
        help="the state at TIME (ISO, e.g. 2026-11-28T12:00:00: local time unless it has an "
        "offset such as +08:00)",
    )
    json_flag(replay, "the replayed state as JSON")

    export = commands.add("export", cmd_export, epilog="Example: dagtask export 7 > task.jsonl")
    task_id_arg(export)
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    imp = commands.add(
        "import",
        cmd_import,
        epilog="A file that is corrupt, truncated or not a task is refused with its line number "
        "(or JSON path) and nothing is imported. Importing is idempotent: a task already "
        "imported from the same source (same format, source task id, name and creation time) "
        "is not imported again; if every task of the files is already there, each gets one line "
        "'... is already imported as task N' and the exit code is 0; if only some are, nothing "
        "is imported and the exit code is 2. --allow-duplicate imports copies anyway.",
    )
    imp.add_argument(
        "--allow-duplicate",
        action="store_true",
        help="import the tasks even if they were imported before (another copy, new ids)",
    )
    imp.add_argument("files", nargs="+", metavar="FILE", help="a dagtask export or OCP task JSON")
    json_flag(imp, "the imported tasks as JSON")

    rerun = commands.add("rerun", cmd_rerun)
    task_id_arg(rerun)
    rerun.add_argument(
        "--from",
        dest="from_subtask",
        metavar="SUBTASK",
        help="run this subtask (id or name) and what depends on it again; reuse the other "
        "subtasks' recorded outputs",
    )
    wait_options(rerun, "run the new task here until it ends; exit 1 if it ends FAILED")
    rerun.add_argument("--operator", metavar="NAME", help="who reruns it (default: the OS user)")
    json_flag(rerun, "the new task as OCP JSON")

    tl = commands.add("timeline", cmd_timeline)
    task_id_arg(tl)
    tl.add_argument(
        "--html", metavar="FILE", help="write a self-contained HTML page with a Gantt chart"
    )
    tl.add_argument(
        "--width",
        type=positive(int),
        metavar="N",
        help="line width in columns (default: the terminal's width, or COLUMNS)",
    )
    tl.add_argument(
        "--no-colour",
        dest="no_colour",
        action="store_true",
        help="the same as --no-color: no ANSI colours (also when NO_COLOR is set)",
    )

    compat = commands.add(
        "compat",
        cmd_compat,
        epilog="Exit 0 if a retry and a rollback of the task would still fit the template, else 1.",
    )
    task_id_arg(compat)
    compat.add_argument(
        "--template",
        required=True,
        metavar="FILE|NAME[:VERSION]",
        help="a template file, or a stored template (its newest version unless :VERSION)",
    )
    json_flag(compat, "the report as JSON")
