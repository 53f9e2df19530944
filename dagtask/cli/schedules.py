"""``dagtask schedule``: task definitions that fire on a cron rule, once, or on demand."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from dagtask.cli import output as out
from dagtask.cli.common import json_flag, open_engine, parse_lists, parse_pairs

if TYPE_CHECKING:
    from dagtask.cli.common import Commands
    from dagtask.schedules import Definition


def _key(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _when(value: object) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else "-"


def _json(d: Definition) -> dict[str, object]:
    return d.model_dump(mode="json")


def cmd_schedule_add(args: argparse.Namespace) -> int:
    """Store a task definition."""
    with open_engine(args) as engine:
        found = engine.schedules.add(
            args.name,
            args.template,
            cron_rule=args.cron,
            once=args.once,
            tz=args.tz,
            args=parse_pairs(args.set, "--set"),
            lists=parse_lists(args.list),
            start=args.start,
            end=args.end,
            missed=args.missed,
            overlap=args.overlap,
            enabled=not args.disabled,
            description=args.description,
        )
    if args.json:
        out.print_json(_json(found))
    else:
        nxt = f"; next fire {_when(found.next_fire_time)} UTC" if found.next_fire_time else ""
        print(f"definition {found.id} ({found.name}): {found.describe()}{nxt}")
    return 0


def cmd_schedule_list(args: argparse.Namespace) -> int:
    """List the task definitions."""
    with open_engine(args, read_only=True) as engine:
        found = engine.schedules.list()
        fired = engine.schedules.store.fire_counts([d.id for d in found])
    if args.json:
        out.print_json([_json(d) for d in found])
        return 0
    rows = [
        [
            str(d.id),
            d.name,
            d.template,
            d.type.value,
            d.describe(),
            "yes" if d.enabled else "no",
            _when(d.next_fire_time),
            str(fired.get(d.id, 0)),
        ]
        for d in found
    ]
    headers = ["ID", "NAME", "TEMPLATE", "TYPE", "SCHEDULE", "ENABLED", "NEXT (UTC)", "FIRED"]
    print(out.table(headers, rows) if rows else "no task definitions yet: `dagtask schedule add`")
    return 0


def cmd_schedule_show(args: argparse.Namespace) -> int:
    """Show a definition and its newest fires."""
    with open_engine(args, read_only=True) as engine:
        found = engine.schedules.get(_key(args.definition))
        fires = engine.schedules.fires(found.id, args.fires)
    if args.json:
        out.print_json({**_json(found), "fires": [f.model_dump(mode="json") for f in fires]})
        return 0
    lines = [
        f"definition {found.id}: {found.name}",
        f"  template   {found.template}",
        f"  schedule   {found.describe()}",
        f"  window     {_when(found.start_time)} to {_when(found.end_time)} UTC",
        f"  policies   missed {found.missed_policy}, overlap {found.overlap_policy}",
        f"  enabled    {'yes' if found.enabled else 'no'}; next fire {_when(found.next_fire_time)}",
        f"  type       {found.type.value}, creator {found.creator}",
        f"  stringMap  {found.args}",
        f"  listMap    {found.lists}",
    ]
    print("\n".join(lines))
    rows = [
        [_when(f.fire_time), f.outcome, str(f.task_id or ""), f.executor, f.message or ""]
        for f in fires
    ]
    if rows:
        print("\n" + out.table(["FIRE TIME (UTC)", "OUTCOME", "TASK", "BY", "MESSAGE"], rows))
    return 0


def cmd_schedule_enable(args: argparse.Namespace) -> int:
    """Enable a definition."""
    with open_engine(args) as engine:
        found = engine.schedules.enable(_key(args.definition))
    print(f"definition {found.id} enabled; next fire {_when(found.next_fire_time)} UTC")
    return 0


def cmd_schedule_disable(args: argparse.Namespace) -> int:
    """Disable a definition."""
    with open_engine(args) as engine:
        found = engine.schedules.disable(_key(args.definition))
    print(f"definition {found.id} disabled")
    return 0


def cmd_schedule_delete(args: argparse.Namespace) -> int:
    """Delete a definition (its tasks stay)."""
    with open_engine(args) as engine:
        found = engine.schedules.get(_key(args.definition))
        engine.schedules.delete(found.id)
    print(f"definition {found.id} ({found.name}) deleted; the tasks it created stay")
    return 0


def cmd_schedule_set(args: argparse.Namespace) -> int:
    """Change the arguments of a definition's next tasks."""
    with open_engine(args) as engine:
        found = engine.schedules.set_args(
            _key(args.definition),
            parse_pairs(args.set, "--set"),
            parse_lists(args.list),
        )
    print(f"definition {found.id}: stringMap {found.args}, listMap {found.lists}")
    return 0


def cmd_schedule_run_now(args: argparse.Namespace) -> int:
    """Fire a definition now."""
    with open_engine(args) as engine:
        task_id = engine.schedules.run_now(_key(args.definition))
    print(f"task {task_id} created; a worker runs it (`dagtask show {task_id}`)")
    return 0


def add_commands(commands: Commands) -> None:
    """Register ``schedule``."""
    schedule = commands.nested(commands.add("schedule", "Task definitions that fire on schedules"))
    add = schedule.add("add", cmd_schedule_add)
    add.add_argument("name", help="a unique name for the definition")
    add.add_argument("template", help="the template each fire submits (name or slug)")
    when = add.add_mutually_exclusive_group()
    when.add_argument(
        "--cron",
        metavar="RULE",
        help="a cron rule: OCP's 6 fields with seconds ('0 0/2 * * * ?') or the classic 5",
    )
    when.add_argument("--once", metavar="TIME", help="fire once at TIME (in --tz)")
    add.add_argument("--tz", default="UTC", help="the rule's time zone (default UTC)")
    add.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a stringMap argument of each task, e.g. --set command=uptime (repeatable)",
    )
    add.add_argument(
        "--list",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a listMap argument of each task, e.g. --list host_ids=1,2 (repeatable)",
    )
    add.add_argument("--start", metavar="TIME", help="no fire before TIME (in --tz)")
    add.add_argument("--end", metavar="TIME", help="no fire after TIME (in --tz)")
    add.add_argument(
        "--missed",
        default="SKIP",
        help="after downtime: SKIP the missed ticks (default) or CATCH_UP with one task",
    )
    add.add_argument(
        "--overlap",
        default="SKIP",
        help="while the previous task runs: SKIP the tick (default), ALLOW, or QUEUE it",
    )
    add.add_argument("--disabled", action="store_true", help="store it disabled")
    add.add_argument("--description", default="", help="what it is for")
    json_flag(add, "the definition as JSON")
    json_flag(schedule.add("list", cmd_schedule_list), "the definitions as JSON")
    show = schedule.add("show", cmd_schedule_show)
    show.add_argument("definition", help="the definition's id or name")
    show.add_argument("--fires", type=int, default=20, help="how many fires to show (20)")
    json_flag(show, "the definition and its fires as JSON")
    change = schedule.add("set", cmd_schedule_set)
    change.add_argument("definition", help="the definition's id or name")
    change.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a stringMap argument, e.g. --set older_than=90d (repeatable)",
    )
    change.add_argument(
        "--list",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="set a listMap argument, e.g. --list host_ids=1,2 (repeatable)",
    )
    for verb, handler in (
        ("enable", cmd_schedule_enable),
        ("disable", cmd_schedule_disable),
        ("delete", cmd_schedule_delete),
        ("run-now", cmd_schedule_run_now),
    ):
        schedule.add(verb, handler).add_argument("definition", help="the definition's id or name")
