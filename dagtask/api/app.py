"""The REST API as a FastAPI application, or as a router to mount in your own.

>>> from dagtask import Engine
>>> from dagtask.api import ApiSettings, create_app
>>> engine = Engine("sqlite:///dagtask.db", workers=4).start()      # doctest: +SKIP
>>> app = create_app(engine, ApiSettings(rate_limit=RateLimit.parse("600/min")))  # doctest: +SKIP

Inside an application of your own, either mount the whole API (its own error pages included)::

    host_app.mount("/dagtask", create_app(engine))

or include only its endpoints next to yours::

    host_app.include_router(create_api_router(engine))

Answers of the endpoints are OCP's envelopes either way; with ``include_router`` your app's own
404 and 405 pages stay yours.

``/docs`` (Swagger UI) and ``/redoc`` load their JavaScript and CSS from ``/static``, files shipped
in the package (``dagtask/api/static``, with their licences), never from a CDN: operations networks
are often cut off from the internet, and a blank documentation page there helps nobody.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from dagtask import __version__
from dagtask.api.auth import Authenticator
from dagtask.api.errors import install_error_handlers
from dagtask.api.limits import LoginBackoff, RateLimit, RateLimiter
from dagtask.api.routes import create_router
from dagtask.engine import Engine
from dagtask.observability import http as observability_http
from dagtask.store.users import UserStore
from dagtask.users import ScryptCost

DESCRIPTION = """\
dagtask's REST API in the shape of OCP's task API: list and inspect tasks, retry or roll them
back, retry / skip / cancel subtasks, read subtask logs, and stop or restart OCP agents.

Every answer is OCP's envelope (`data`, `successful`, `timestamp`, `duration`, `status`,
`traceId`, `server`); errors carry `error: {code, message, target, subErrors}` with OCP's task
error codes (20000 no such task, 20003 not allowed in this state, 20004 rollback prohibited) or
the HTTP status as the code.

Authentication is HTTP Basic with a dagtask user (`dagtask users add NAME --role ROLE`). Reads need
TASK_VIEWER, task and subtask actions TASK_MANAGER, host operations HOST_MANAGER; ADMIN may do
everything. Requests are rate-limited per user (`RateLimit-*` headers, 429 beyond the limit).
"""


@dataclass(frozen=True)
class ApiSettings:
    """How the API behaves; the defaults are what ``dagtask serve`` uses."""

    rate_limit: RateLimit = field(default_factory=RateLimit)
    """Requests per user and window (``RateLimit(limit=0)`` turns limiting off)."""
    server: str = field(default_factory=socket.gethostname)
    """The ``server`` member of every envelope."""
    auth_cache_seconds: float = 60.0
    """How long a verified password is remembered (0: run the KDF on every request)."""
    password_cost: ScryptCost | None = None
    """The KDF cost spent on a user that does not exist (default: ``users.DEFAULT_COST``, the
    cost of the stored hashes); tests that store cheaper hashes pass the same cheap cost."""
    console: bool = True
    """Serve the operator console (``dagtask.console``) at ``/`` beside the API."""
    login_backoff: LoginBackoff | None = None
    """When failed logins lock an account or a client out (None: from the ``DAGTASK_LOGIN_*``
    environment variables, else the defaults; see ``docs/security.md``)."""
    metrics: bool = True
    """Serve Prometheus metrics at ``/metrics`` (``docs/observability.md``; 501 without the
    metrics extra). ``/health`` and ``/ready`` are always served, without a login."""
    metrics_login: bool = False
    """``/metrics`` needs the login of a TASK_VIEWER user (default: open, for scrapers)."""


def _authenticator(engine: Engine, settings: ApiSettings) -> Authenticator:
    return Authenticator(
        UserStore(engine.database),
        RateLimiter(settings.rate_limit),
        cache_seconds=settings.auth_cache_seconds,
        unknown_user_cost=settings.password_cost,
        backoff=settings.login_backoff,
    )


def create_api_router(
    engine: Engine, settings: ApiSettings | None = None, authenticator: Authenticator | None = None
) -> APIRouter:
    """The API's endpoints around ``engine``, for ``app.include_router(...)``."""
    settings = settings or ApiSettings()
    authenticator = authenticator or _authenticator(engine, settings)
    return create_router(engine, authenticator, server=settings.server)


def create_app(engine: Engine, settings: ApiSettings | None = None) -> FastAPI:
    """A FastAPI application serving the API around ``engine`` (which the caller starts and
    closes), with OCP-shaped answers for unknown paths and methods too."""
    settings = settings or ApiSettings()
    app = FastAPI(
        title="dagtask",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_tags=[
            {"name": "tasks", "description": "Task instances (OCP's task API)."},
            {"name": "subtasks", "description": "Subtask actions and logs."},
            {"name": "hosts", "description": "OCP agent operations; each starts a task."},
            {"name": "definitions", "description": "Task definitions: scheduled tasks."},
        ],
    )
    authenticator = _authenticator(engine, settings)
    app.include_router(create_api_router(engine, settings, authenticator))
    if settings.console:
        from dagtask.console import create_console_router  # it imports dagtask.api's parts

        # One user check for both: the login back-off counts sign-ins and Basic logins alike.
        app.include_router(create_console_router(engine, authenticator))
    observability_http.install(
        app,
        engine,
        authenticator=authenticator,
        server=settings.server,
        metrics=settings.metrics,
        metrics_login=settings.metrics_login,
    )
    install_error_handlers(app, settings.server)
    _install_docs(app)
    return app


STATIC_DIR = Path(__file__).with_name("static")
"""Swagger UI (swagger-ui-dist 5) and ReDoc (redoc 2) as published on npm, with their licences."""


def _install_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` from the packaged assets (FastAPI's self-hosting recipe).

    Every URL is prefixed with the request's ``root_path``, so the pages also work when the API
    is mounted under a prefix in another application.
    """
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="dagtask-static")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}/static/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/static/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/favicon-32x32.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}/static/redoc.standalone.js",
            redoc_favicon_url=f"{root}/static/favicon-32x32.png",
            with_google_fonts=False,
        )
