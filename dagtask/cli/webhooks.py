"""``dagtask webhooks``: HTTP endpoints told when a task ends, and the delivery log."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from dagtask.cli import output as out
from dagtask.cli.common import an_id, json_flag, open_engine, positive

if TYPE_CHECKING:
    from dagtask.cli.common import Commands
    from dagtask.webhooks import Delivery, Webhook


def _describe(hook: Webhook) -> str:
    what = "every ending" if hook.events == "ended" else "failures"
    of = f" of {hook.template!r}" if hook.template else ""
    signed = f", signed with {hook.secret_ref}" if hook.secret_ref else ", unsigned"
    return f"{what}{of}{signed}"


def cmd_webhooks_add(args: argparse.Namespace) -> int:
    """Add a webhook: POST a task's JSON to a URL when the task ends."""
    with open_engine(args) as engine:
        hook = engine.webhooks.add(
            args.url, events=args.events, template=args.template, secret_ref=args.secret_ref
        )
    if args.json:
        out.print_json(hook.model_dump(mode="json"))
    else:
        print(f"webhook {hook.id}: {hook.url} ({_describe(hook)}), from now on")
    return 0


def cmd_webhooks_list(args: argparse.Namespace) -> int:
    """List the webhooks."""
    with open_engine(args, read_only=True) as engine:
        hooks = engine.webhooks.list()
    if args.json:
        out.print_json([h.model_dump(mode="json") for h in hooks])
        return 0
    rows = [
        [
            str(h.id),
            h.url,
            h.events,
            h.template or "*",
            h.secret_ref or "-",
            "yes" if h.enabled else "no",
            out.when(h.create_time),
        ]
        for h in hooks
    ]
    headers = ["ID", "URL", "EVENTS", "TEMPLATE", "SECRET", "ENABLED", "CREATED"]
    print(out.table(headers, rows) if rows else "no webhooks yet: `dagtask webhooks add URL`")
    return 0


def cmd_webhooks_remove(args: argparse.Namespace) -> int:
    """Remove a webhook and its delivery log."""
    with open_engine(args) as engine:
        engine.webhooks.remove(args.webhook)
    print(f"webhook {args.webhook} removed")
    return 0


def cmd_webhooks_enable(args: argparse.Namespace) -> int:
    """Enable a webhook (it also reports what ended while it was disabled)."""
    with open_engine(args) as engine:
        hook = engine.webhooks.enable(args.webhook)
    print(f"webhook {hook.id} enabled")
    return 0


def cmd_webhooks_disable(args: argparse.Namespace) -> int:
    """Disable a webhook."""
    with open_engine(args) as engine:
        hook = engine.webhooks.disable(args.webhook)
    print(f"webhook {hook.id} disabled")
    return 0


def _row(d: Delivery) -> list[str]:
    code = str(d.last_status_code) if d.last_status_code is not None else "-"
    if d.state == "DELIVERED":
        last = out.when(d.delivered_at)
    elif d.state == "PENDING":
        last = f"next {out.when(d.next_attempt_at)}"
    else:
        last = "-"
    return [
        str(d.id),
        str(d.webhook_id),
        str(d.task_id),
        d.task_status,
        d.state,
        str(d.attempts),
        code,
        out.one_line(d.last_error, 60) or "-",
        out.when(d.create_time),
        last,
    ]


def cmd_webhooks_deliveries(args: argparse.Namespace) -> int:
    """Show the delivery log: attempts, status codes and errors, newest first."""
    with open_engine(args, read_only=True) as engine:
        found = engine.webhooks.deliveries(
            webhook_id=args.webhook, task_id=args.task, limit=args.limit
        )
    if args.json:
        out.print_json([d.model_dump(mode="json") for d in found])
        return 0
    headers = [
        *("ID", "WEBHOOK", "TASK", "STATUS", "STATE", "ATTEMPTS", "CODE", "LAST ERROR"),
        *("CREATED", "DELIVERED / NEXT"),
    ]
    print(out.table(headers, [_row(d) for d in found]) if found else "no deliveries")
    return 0


def add_commands(commands: Commands) -> None:
    """Register ``webhooks``."""
    hooks = commands.nested(
        commands.add("webhooks", "Tell HTTP endpoints when a task ends or fails")
    )
    add = hooks.add("add", cmd_webhooks_add)
    add.add_argument("url", help="the http:// or https:// URL to POST to")
    add.add_argument(
        "--events",
        default="ended",
        metavar="ended|failed",
        help="report every ending (ended, the default) or only failures (failed)",
    )
    add.add_argument("--template", metavar="NAME", help="only tasks of this template")
    add.add_argument(
        "--secret-ref",
        metavar="REF",
        help="sign with the secret in env:NAME or file:PATH (read where workers run)",
    )
    json_flag(add, "the webhook as JSON")
    json_flag(hooks.add("list", cmd_webhooks_list), "the webhooks as JSON")
    for verb, handler in (
        ("remove", cmd_webhooks_remove),
        ("enable", cmd_webhooks_enable),
        ("disable", cmd_webhooks_disable),
    ):
        hooks.add(verb, handler).add_argument("webhook", type=an_id, help="the webhook's id")
    log = hooks.add("deliveries", cmd_webhooks_deliveries)
    log.add_argument("--webhook", type=an_id, metavar="ID", help="only this webhook's")
    log.add_argument("--task", type=an_id, metavar="ID", help="only this task's")
    log.add_argument(
        "--limit", type=positive(int, 10_000), default=50, help="how many, newest first (50)"
    )
    json_flag(log, "the deliveries as JSON")
