"""The console's routes: sign-in, the task list and detail, logs, actions, and the admin pages.

Every route is a plain ``def``: the engine's calls block on SQL, so Starlette runs them in its
thread pool. A page is a Jinja2 template (autoescaped) rendered from what the engine returns;
``?fragment=NAME`` renders only the part of the page the script refreshes live.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from dagtask import __version__, diagnosis, planner, secrets
from dagtask.api.auth import Authenticator
from dagtask.console import actions, dag
from dagtask.console.forms import (
    FormError,
    ListFilters,
    parse_filters,
)
from dagtask.console.session import Session, Sessions
from dagtask.engine import Engine
from dagtask.errors import (
    AuthenticationError,
    DagtaskError,
    RateLimitedError,
    TaskNotFoundError,
)
from dagtask.history import timeline
from dagtask.models import SubtaskInfo, TaskInfo
from dagtask.states import SubtaskStatus, TaskStatus, TaskType
from dagtask.users import Role, UserInfo

STATIC_DIR = Path(__file__).with_name("static")
TEMPLATES_DIR = Path(__file__).with_name("templates")
HISTORY_SHOWN = 300
"""The newest history events a task page lists (all of them are in the diagnosis download)."""
FOLLOW_POLL = 0.25
"""How often a followed log is read for new lines (server side)."""
ASSETS = {
    "console.css": "text/css",
    "console.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
LIVE_SECONDS = 2.0
"""How often a page showing running work refreshes its live parts."""


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def _ago(value: datetime | None, now: datetime) -> str:
    if value is None:
        return ""
    seconds = max(0.0, (now - value).total_seconds())
    return timeline.human(seconds)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.globals["version"] = __version__
    return env


class _Redirect(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def progress(task: TaskInfo) -> tuple[int, int]:
    """(subtasks done, subtasks): done is SUCCESSFUL, or PENDING after a finished rollback."""
    total = len(task.subtasks)
    done = sum(1 for s in task.subtasks if s.status is SubtaskStatus.SUCCESSFUL)
    return done, total


def subject(task: TaskInfo, host_names: Mapping[int, str]) -> str:
    """What the task acts on, as OCP's list shows it: its host, its batch of hosts, its
    cluster or tenant; empty for a task of no object."""
    if task.host_id is not None:
        return host_names.get(task.host_id, f"host {task.host_id}")
    hosts = task.context.list_map.get("hostIds") or task.context.list_map.get("hostids")
    if hosts:
        return f"{len(hosts)} hosts"
    if task.cluster_id is not None:
        return f"cluster {task.cluster_id}"
    if task.tenant_id is not None:
        return f"tenant {task.tenant_id}"
    return ""


class Console:
    """The console's state: the engine, the users' check and the sessions."""

    def __init__(self, engine: Engine, authenticator: Authenticator, sessions: Sessions) -> None:
        self.engine = engine
        self.auth = authenticator
        self.sessions = sessions
        self.env = _environment()

    # ---- who is asking --------------------------------------------------------------------------

    def user(self, request: Request, role: Role = Role.TASK_VIEWER) -> tuple[UserInfo, Session]:
        """The signed-in user holding ``role``; a redirect to the sign-in page, or a 403 page.

        Reading (TASK_VIEWER) is also open to a TASK_MANAGER: an operator acts on what it sees.
        """
        session = self.sessions.read(request)
        user = None
        if session is not None:
            try:
                user = self.auth.users.get(session.user)
            except DagtaskError:
                user = None
        if session is None or user is None or not user.enabled:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise _Redirect(RedirectResponse(f"/login?next={quote(target)}", status_code=303))
        if not user.has_role(role) and not (
            role is Role.TASK_VIEWER and user.has_role(Role.TASK_MANAGER)
        ):
            message = (
                f"user {user.name!r} may not do this: it needs the {role.value} role (or ADMIN); "
                f"an administrator can grant it with `dagtask users roles {user.name} "
                f"--role {','.join(sorted([*(r.value for r in user.roles), role.value]))}`"
            )
            raise _Redirect(self.error_page(request, 403, message, user=user, session=session))
        return user, session

    def csrf(self, request: Request, session: Session, form: Mapping[str, str]) -> None:
        token = form.get("csrf") or request.headers.get("x-csrf-token")
        if not self.sessions.csrf_ok(session, token):
            raise _Redirect(
                self.error_page(
                    request,
                    403,
                    "this form has expired or did not come from this console "
                    "(missing or wrong CSRF token); reload the page and try again",
                )
            )

    # ---- rendering ------------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        name: str,
        status: int = 200,
        *,
        user: UserInfo | None = None,
        session: Session | None = None,
        **context: Any,
    ) -> HTMLResponse:
        response = HTMLResponse(status_code=status)
        notice = self.sessions.take_notice(request, response) if user is not None else None
        counts = None
        if user is not None and not context.get("fragment"):
            counts = self.counts()
        body = self.env.get_template(name).render(
            request=request,
            user=user,
            csrf=session.csrf if session is not None else "",
            counts=counts,
            notice=notice,
            fragment=context.pop("fragment", None),
            path=request.url.path,
            **context,
        )
        response.body = body.encode("utf-8")
        response.headers["content-length"] = str(len(response.body))
        response.headers["cache-control"] = "no-store"
        response.headers["x-frame-options"] = "SAMEORIGIN"
        response.headers["content-security-policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "frame-ancestors 'self'; form-action 'self'"
        )
        return response

    def error_page(
        self,
        request: Request,
        status: int,
        message: str,
        *,
        user: UserInfo | None = None,
        session: Session | None = None,
    ) -> HTMLResponse:
        return self.render(
            request, "error.html", status, user=user, session=session, code=status, message=message
        )

    def notice_redirect(self, target: str, kind: str, text: str) -> Response:
        response = RedirectResponse(target, status_code=303)
        self.sessions.notice(response, kind, text)
        return response

    def counts(self) -> dict[str, int]:
        """The header's badges: live RUNNING and FAILED tasks (two indexed counts)."""
        return {s.value: self.engine.count([s]) for s in (TaskStatus.RUNNING, TaskStatus.FAILED)}

    def host_names(self) -> dict[int, str]:
        return {h.id: h.name for h in self.engine.hosts.list()}


def _form(body: bytes) -> dict[str, str]:
    """An urlencoded form body as single values (the last of repeated names)."""
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def _guard(handler: Callable[..., Response]) -> Callable[..., Response]:
    """Turn a redirect or a refusal raised inside a route into its page."""

    def wrapped(*args: Any, **kwargs: Any) -> Response:
        try:
            return handler(*args, **kwargs)
        except _Redirect as redirect:
            return redirect.response

    return functools.wraps(handler)(wrapped)


def create_console_router(
    engine: Engine, authenticator: Authenticator, sessions: Sessions | None = None
) -> APIRouter:
    """The console's pages around ``engine``; sign-in checks users with ``authenticator``."""
    console = Console(engine, authenticator, sessions or Sessions())
    router = APIRouter(include_in_schema=False)

    # ---- sign-in ------------------------------------------------------------------------------

    @router.get("/")
    def home() -> Response:
        return RedirectResponse("/tasks", status_code=303)

    @router.get("/assets/{name}")
    def asset(name: str) -> Response:
        if name not in ASSETS:
            return Response("no such file", status_code=404, media_type="text/plain")
        return FileResponse(
            STATIC_DIR / name,
            media_type=ASSETS[name],
            headers={"cache-control": "public, max-age=300"},
        )

    @router.get("/counts")
    @_guard
    def counts(request: Request) -> Response:
        console.user(request)
        return JSONResponse(console.counts(), headers={"cache-control": "no-store"})

    @router.get("/login")
    def login_page(request: Request, next: str = "/tasks") -> Response:
        return console.render(request, "login.html", next=_safe_next(next), message=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = _form(await request.body())
        name, password = form.get("username", "").strip(), form.get("password", "")
        target = _safe_next(form.get("next", "/tasks"))
        try:
            user = authenticator.authenticate(request, name or None, password)
        except (AuthenticationError, RateLimitedError) as exc:
            status = 429 if isinstance(exc, RateLimitedError) else 401
            message = (
                str(exc)
                if isinstance(exc, RateLimitedError)
                else "wrong user name or password (or the user is disabled); try again"
            )
            return console.render(request, "login.html", status, next=target, message=message)
        response = RedirectResponse(target, status_code=303)
        sessions_ = console.sessions
        sessions_.start(response, request, user.name)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        session = console.sessions.read(request)
        form = _form(await request.body())
        if session is not None and not console.sessions.csrf_ok(session, form.get("csrf")):
            return console.error_page(request, 403, "sign-out refused: wrong CSRF token")
        response = RedirectResponse("/login", status_code=303)
        console.sessions.end(response, session)
        return response

    # ---- tasks --------------------------------------------------------------------------------

    @router.get("/tasks")
    @_guard
    def tasks(request: Request) -> Response:
        user, session = console.user(request)
        try:
            filters = parse_filters(request.query_params)
        except FormError as exc:
            return console.error_page(request, 400, str(exc), user=user, session=session)
        page = engine.list(
            page=filters.page,
            size=filters.size,
            name=filters.name,
            statuses=filters.statuses,
            host_id=filters.host_id,
            types=filters.types,
            since=filters.since,
            until=filters.until,
            creator=filters.creator,
        )
        names = console.host_names()
        rows = [
            {
                "task": t,
                "subject": subject(t, names),
                "progress": progress(t),
            }
            for t in page.tasks
        ]
        fragment = request.query_params.get("fragment")
        return console.render(
            request,
            "_task_rows.html" if fragment == "rows" else "tasks.html",
            user=user,
            session=session,
            fragment=fragment,
            filters=filters,
            page=page,
            rows=rows,
            hosts=sorted(names.items(), key=lambda item: item[1]),
            statuses=[s.value for s in TaskStatus],
            types=[t.value for t in TaskType],
            page_url=lambda n: _page_url(filters, n),
            live=LIVE_SECONDS,
        )

    @router.get("/tasks/{task_id}")
    @_guard
    def task(request: Request, task_id: int, expand: str = "") -> Response:
        user, session = console.user(request)
        fragment = request.query_params.get("fragment")
        if fragment == "history":
            _task_or_404(console, request, user, session, task_id, outputs=False)
            return console.render(
                request,
                "_history.html",
                user=user,
                session=session,
                fragment=fragment,
                history=engine.history(task_id),
                limit=HISTORY_SHOWN,
            )
        # One read of the task, without the subtasks' outputs (the page shows none).
        info = _task_or_404(console, request, user, session, task_id, outputs=False)
        expanded = frozenset(x for x in expand.split(",") if x)
        masked = secrets.mask_context(info.context)
        nodes = dag.task_nodes(
            info,
            expand=expanded,
            href=lambda s: f"#subtask-{s.id}",
            group_href=lambda name: _expand_url(task_id, expanded ^ {name}),
        )
        plan = (
            planner.rollback_plan(info) if "rollback" in actions.task_actions(info, user) else None
        )
        rows = [
            {
                "sub": s,
                "label": f"{s.name} [{s.parallel_idx}]" if s.parallel else s.name,
                "actions": actions.subtask_actions(info, s, user),
            }
            for s in sorted(info.subtasks, key=lambda s: (-s.series_id, s.id))
        ]
        return console.render(
            request,
            "_task_live.html" if fragment == "live" else "task.html",
            user=user,
            session=session,
            fragment=fragment,
            task=info,
            progress=progress(info),
            subject=subject(info, console.host_names()),
            context=masked,
            svg=dag.render(nodes, title=info.name),
            rows=rows,
            actions=actions.task_actions(info, user),
            labels=actions.ACTION_LABELS,
            plan=plan,
            expand=",".join(sorted(expanded)),
            timeline_height=timeline.TOP
            + timeline.ROW_H * max(len(info.subtasks), 1)
            + timeline.BOTTOM
            + 90,
            live=LIVE_SECONDS if info.status is TaskStatus.RUNNING else 0,
        )

    @router.get("/tasks/{task_id}/timeline")
    @_guard
    def task_timeline(request: Request, task_id: int) -> Response:
        user, session = console.user(request)
        info = _task_or_404(console, request, user, session, task_id, outputs=False)
        history = engine.history(task_id)
        page = timeline.html_page(info, history.events)
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    @router.get("/tasks/{task_id}/subtasks/{subtask_id}/log")
    @_guard
    def log(request: Request, task_id: int, subtask_id: int, attempt: int = 0) -> Response:
        user, session = console.user(request)
        info = _task_or_404(console, request, user, session, task_id, outputs=False)
        sub = next((s for s in info.subtasks if s.id == subtask_id), None)
        if sub is None:
            message = f"error 20000: task {task_id} has no subtask {subtask_id}"
            return console.error_page(request, 404, message, user=user, session=session)
        attempt = attempt or sub.run_time
        if not 1 <= attempt <= sub.run_time:
            message = (
                f"subtask {subtask_id} has attempts 1 to {sub.run_time}, not {attempt}; "
                "pick one of the attempt links"
            )
            return console.error_page(request, 400, message, user=user, session=session)
        text = engine.logs(task_id, subtask_id, attempt=attempt)
        running = attempt == sub.run_time and sub.status in (
            SubtaskStatus.READY,
            SubtaskStatus.RUNNING,
            SubtaskStatus.CANCELING,
        )
        return console.render(
            request,
            "log.html",
            user=user,
            session=session,
            task=info,
            sub=sub,
            attempt=attempt,
            text=text,
            follow=running,
        )

    @router.get("/tasks/{task_id}/subtasks/{subtask_id}/log/stream")
    @_guard
    def log_stream(request: Request, task_id: int, subtask_id: int, attempt: int) -> Response:
        """Server-sent events: ``log`` with the attempt's whole log so far, then each piece as
        it is written, and ``end`` once the subtask stops running it."""
        console.user(request)
        engine.logs(task_id, subtask_id, attempt=attempt)  # 404 before the stream starts

        def events() -> Iterator[str]:
            first = True
            chunks = engine.follow_log(
                task_id, subtask_id, attempt=attempt, poll=FOLLOW_POLL, idle=True
            )
            for text in chunks:
                if text:
                    yield _sse("reset" if first else "log", text)
                    first = False
                else:
                    yield ": still running\n\n"
            yield _sse("end", "")

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    @router.get("/tasks/{task_id}/diagnosis.zip")
    @_guard
    def diagnosis_download(request: Request, task_id: int) -> Response:
        user, session = console.user(request)
        info = _task_or_404(console, request, user, session, task_id)
        return Response(
            diagnosis.task_archive(engine, task_id, info),
            media_type="application/zip",
            headers=diagnosis.attachment(f"task-{task_id}-diagnosis.zip"),
        )

    @router.post("/tasks/{task_id}/actions")
    async def act(request: Request, task_id: int) -> Response:
        form = _form(await request.body())
        return await _run_in_thread(actions.act, console, request, task_id, form)

    # ---- workers, hosts, templates -------------------------------------------------------------

    @router.get("/workers")
    @_guard
    def workers(request: Request) -> Response:
        user, session = console.user(request)
        now = datetime.now(UTC).replace(tzinfo=None)
        running: dict[str, list[tuple[TaskInfo, SubtaskInfo]]] = {}
        for t in engine.list(statuses=[TaskStatus.RUNNING], size=200).tasks:
            for s in t.subtasks:
                if s.executor and s.status in (SubtaskStatus.RUNNING, SubtaskStatus.CANCELING):
                    running.setdefault(s.executor, []).append((t, s))
        rows = [
            {"w": w, "age": _ago(w.heartbeat_at, now), "running": running.get(w.name, [])}
            for w in engine.worker_records()
        ]
        return console.render(
            request, "workers.html", user=user, session=session, rows=rows, live=LIVE_SECONDS
        )

    @router.get("/hosts")
    @_guard
    def hosts(request: Request) -> Response:
        user, session = console.user(request)
        busy: dict[int, list[TaskInfo]] = {}
        for t in engine.list(statuses=[TaskStatus.RUNNING], size=200).tasks:
            ids = [t.host_id] if t.host_id is not None else []
            ids += [int(x) for x in t.context.list_map.get("hostIds", []) if x.isdigit()]
            for host_id in ids:
                busy.setdefault(host_id, []).append(t)
        rows = [{"h": h, "tasks": busy.get(h.id, [])} for h in engine.hosts.list()]
        return console.render(
            request, "hosts.html", user=user, session=session, rows=rows, live=LIVE_SECONDS
        )

    @router.get("/templates")
    @_guard
    def templates(request: Request) -> Response:
        user, session = console.user(request)
        found = sorted(engine.templates(), key=lambda t: t.name)
        return console.render(request, "templates.html", user=user, session=session, found=found)

    @router.get("/templates/{name:path}")
    @_guard
    def template(request: Request, name: str) -> Response:
        user, session = console.user(request)
        return actions.template_page(console, request, user, session, name, {}, None, 200)

    @router.post("/templates/{name:path}")
    async def submit(request: Request, name: str) -> Response:
        form = _form(await request.body())
        return await _run_in_thread(actions.submit, console, request, name, form)

    return router


async def _run_in_thread(fn: Callable[..., Response], *args: Any) -> Response:
    from starlette.concurrency import run_in_threadpool

    try:
        return await run_in_threadpool(fn, *args)
    except _Redirect as redirect:
        return redirect.response


def _safe_next(target: str) -> str:
    """Only a path of this console (never another host) after signing in."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/tasks"
    return target


def _page_url(filters: ListFilters, number: int) -> str:
    query = {k: v for k, v in filters.query().items() if v}
    query["page"] = str(number)
    return "/tasks?" + urlencode(query)


def _expand_url(task_id: int, expanded: frozenset[str]) -> str:
    if not expanded:
        return f"/tasks/{task_id}#dag"
    return f"/tasks/{task_id}?" + urlencode({"expand": ",".join(sorted(expanded))}) + "#dag"


def _sse(event: str, data: str) -> str:
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {event}\n{lines}\n"


def _task_or_404(
    console: Console,
    request: Request,
    user: UserInfo,
    session: Session,
    task_id: int,
    *,
    outputs: bool = True,
) -> TaskInfo:
    try:
        return console.engine.get(task_id, outputs=outputs)
    except TaskNotFoundError as exc:
        raise _Redirect(
            console.error_page(request, 404, str(exc), user=user, session=session)
        ) from exc
