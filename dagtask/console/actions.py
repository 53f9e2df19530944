"""What the console's pages offer and do: which actions a state allows, the actions
themselves, submitting a template, and the diagnosis download.

Which actions a page offers comes from the same pure rules the engine enforces
(:mod:`dagtask.planner`): a button is shown exactly when the action would be accepted. An
action that another operator made stale in between is refused by the engine, and its message
(20003 / 20004) is shown as the next page's notice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import Response

from dagtask import planner
from dagtask.console import dag
from dagtask.console.forms import FormError, parse_lines, parse_list_lines
from dagtask.errors import DagtaskError, TaskNotFoundError
from dagtask.models import SubtaskInfo, TaskInfo
from dagtask.users import Role, UserInfo

if TYPE_CHECKING:
    from dagtask.console.pages import Console
    from dagtask.console.session import Session


def _when(value: object) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else ""


def task_actions(task: TaskInfo, user: UserInfo) -> list[str]:
    """The task actions the page offers: allowed in the task's state and to the user's role."""
    if not user.has_role(Role.TASK_MANAGER):
        return []
    offered = []
    if planner.retry_task_refusal(task.status, task.operation) is None:
        offered.append("retry")
    if planner.rollback_refusal(task.status) is None:
        offered.append("rollback")
    if planner.cancel_task_refusal(task.status) is None:
        offered.append("cancel")
    return offered


def subtask_actions(task: TaskInfo, sub: SubtaskInfo, user: UserInfo) -> list[str]:
    """The subtask actions offered on ``sub``'s row."""
    if not user.has_role(Role.TASK_MANAGER):
        return []
    offered = []
    if planner.retry_subtask_refusal(sub.status, sub.operation, task.operation) is None:
        offered.append("retry-subtask")
    if planner.skip_refusal(sub.status) is None:
        offered.append("skip-subtask")
    if planner.cancel_subtask_refusal(sub.status) is None:
        offered.append("cancel-subtask")
    return offered


ACTION_LABELS = {
    "retry": "Retry task",
    "rollback": "Roll back task",
    "cancel": "Cancel task",
    "retry-subtask": "Retry",
    "skip-subtask": "Skip",
    "cancel-subtask": "Cancel",
}


def act(console: Console, request: Request, task_id: int, form: dict[str, str]) -> Response:
    user, session = console.user(request, Role.TASK_MANAGER)
    console.csrf(request, session, form)
    engine = console.engine
    action = form.get("action", "")
    back = f"/tasks/{task_id}"
    try:
        if action in ("retry-subtask", "skip-subtask", "cancel-subtask"):
            raw = form.get("subtask_id", "")
            if not raw.isdigit():
                raise FormError(f"{action} needs the subtask's id (got {raw!r})")
            sid = int(raw)
            {
                "retry-subtask": engine.retry_subtask,
                "skip-subtask": engine.skip_subtask,
                "cancel-subtask": engine.cancel_subtask,
            }[action](task_id, sid, operator=user.name)
            done = f"{ACTION_LABELS[action].lower()} of subtask {sid}: accepted"
        elif action in ("retry", "rollback", "cancel"):
            {"retry": engine.retry, "rollback": engine.rollback, "cancel": engine.cancel}[action](
                task_id, operator=user.name
            )
            done = f"{ACTION_LABELS[action].lower()} {task_id}: accepted"
        else:
            raise FormError(
                f"unknown action {action!r}; use one of {', '.join(sorted(ACTION_LABELS))}"
            )
    except FormError as exc:
        return console.error_page(request, 400, str(exc), user=user, session=session)
    except TaskNotFoundError as exc:
        return console.error_page(request, 404, str(exc), user=user, session=session)
    except DagtaskError as exc:  # 20003 / 20004: refused in this state
        return console.notice_redirect(back, "error", str(exc))
    return console.notice_redirect(back, "ok", done)


def template_page(
    console: Console,
    request: Request,
    user: UserInfo,
    session: Session,
    name: str,
    form: Mapping[str, str],
    message: str | None,
    status: int,
) -> Response:
    try:
        found = console.engine.template(name)
    except DagtaskError as exc:
        return console.error_page(request, 404, str(exc), user=user, session=session)
    keys = sorted({k for k in (found.host_arg, *(s.split_key for s in found.subtasks)) if k})
    return console.render(
        request,
        "template.html",
        status,
        user=user,
        session=session,
        template=found,
        svg=dag.render(dag.template_nodes(found), title=found.name),
        may_submit=may_submit(user, found.host_arg or found.host_list_arg),
        hint_args=[k for k in keys if k != found.host_list_arg],
        hint_lists=[found.host_list_arg] if found.host_list_arg else [],
        form=form,
        message=message,
    )


def may_submit(user: UserInfo, host_operation: str | None) -> bool:
    role = Role.HOST_MANAGER if host_operation else Role.TASK_MANAGER
    return user.has_role(role)


def submit(console: Console, request: Request, name: str, form: dict[str, str]) -> Response:
    user, session = console.user(request)
    console.csrf(request, session, form)
    try:
        found = console.engine.template(name)
    except DagtaskError as exc:
        return console.error_page(request, 404, str(exc), user=user, session=session)
    if not may_submit(user, found.host_arg or found.host_list_arg):
        role = "HOST_MANAGER" if found.host_arg or found.host_list_arg else "TASK_MANAGER"
        message = f"user {user.name!r} may not submit {name!r}: it needs the {role} role"
        return console.error_page(request, 403, message, user=user, session=session)
    try:
        args = parse_lines(form.get("args", ""), "arguments")
        lists = parse_list_lines(form.get("lists", ""))
        task_id = console.engine.submit_id(found, args=args, lists=lists, creator=user.name)
    except (FormError, DagtaskError) as exc:
        return template_page(console, request, user, session, name, form, str(exc), 400)
    return console.notice_redirect(f"/tasks/{task_id}", "ok", f"task {task_id} submitted")
