"""``/health``, ``/ready`` and ``/metrics`` in ``dagtask serve``'s application (:func:`install`).

``/health`` and ``/ready`` never ask for a login: a load balancer or an orchestrator's probe
cannot log in, and they tell nothing about the tasks. ``/metrics`` is open by default too (see
``docs/observability.md``, "Who may read /metrics"): its figures are counts and the names of
templates, subtasks and handlers, never a task's id, context, log or host, and most Prometheus
set-ups scrape from inside the operations network without credentials. ``metrics_login``
makes it need the HTTP Basic login of a user with the TASK_VIEWER role (Prometheus'
``basic_auth``), counted by the same rate limit and login back-off as the API.

None of the three is in the OpenAPI description: they are for machines, not API clients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from dagtask.api.auth import Authenticator, BasicCredentials, check_role
from dagtask.api.errors import error_response
from dagtask.errors import DagtaskError
from dagtask.observability import METRICS_MISSING, health, metrics_available
from dagtask.users import Role

if TYPE_CHECKING:
    from dagtask.engine import Engine


def install(
    app: FastAPI,
    engine: Engine,
    *,
    authenticator: Authenticator,
    server: str,
    metrics: bool = True,
    metrics_login: bool = False,
) -> None:
    """Add ``/health``, ``/ready`` and (``metrics``) ``/metrics`` to ``app``. The metrics of
    ``engine`` are switched on now, so the counters start with the application; without the
    metrics extra ``/metrics`` answers 501 saying what to install."""
    readiness = health.Readiness(engine.database)

    @app.get("/health", include_in_schema=False)
    def get_health() -> JSONResponse:
        return JSONResponse(health.HEALTHY)

    @app.get("/ready", include_in_schema=False)
    def get_ready() -> JSONResponse:
        ready, body = readiness.check()
        return JSONResponse(body, status_code=200 if ready else 503)

    if not metrics:
        return
    if not metrics_available():

        @app.get("/metrics", include_in_schema=False)
        def metrics_missing() -> PlainTextResponse:
            return PlainTextResponse(METRICS_MISSING + "\n", status_code=501)

        return

    from dagtask.observability.metrics import CONTENT_TYPE, for_engine

    engine_metrics = for_engine(engine)
    basic = BasicCredentials(auto_error=False, realm="dagtask")

    @app.get("/metrics", include_in_schema=False)
    async def get_metrics(request: Request) -> Response:
        if metrics_login:
            try:
                credentials = await basic(request)
                user = await run_in_threadpool(
                    authenticator.authenticate,
                    request,
                    credentials.username if credentials else None,
                    credentials.password if credentials else None,
                )
                check_role(user, Role.TASK_VIEWER, "read the metrics")
            except DagtaskError as exc:
                return error_response(request, exc, server)
        body = await run_in_threadpool(engine_metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE)
