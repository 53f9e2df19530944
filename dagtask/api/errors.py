"""Every answer of the REST API in OCP's envelope, errors included, and the errors of the API.

:class:`EnvelopeRoute` wraps each endpoint: it gives the request its trace id and start time,
turns any exception into OCP's error envelope (docs/api.md) and adds the ``X-Trace-Id`` and
``RateLimit-*`` headers. Because the wrapping lives in the route class, a host application that
only includes the router (``app.include_router``) gets the same answers as ``dagtask serve``;
:func:`install_error_handlers` covers what happens outside a route (unknown path: 404, wrong
method: 405) for apps built by :func:`dagtask.api.create_app`.

A stack trace is never sent unless an authenticated caller asks for one with the request header
``X-Debug: true``; it then comes as a sub-error with target ``stackTrace`` of a 500.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from dagtask import diagnosis, fidelity, views
from dagtask.api.limits import Quota
from dagtask.errors import (
    AuthenticationError,
    DagtaskError,
    OperationNotAllowedError,
    RateLimitedError,
    RollbackProhibitedError,
)
from dagtask.observability import tracing
from dagtask.users import UserInfo

_log = logging.getLogger("dagtask.api")

TRACE_HEADER = "X-Trace-Id"
DEBUG_HEADER = "X-Debug"
_TRACE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
WWW_AUTHENTICATE = 'Basic realm="dagtask", charset="UTF-8"'


# ---- the errors only the API raises --------------------------------------------------------------


class BadRequestError(DagtaskError):
    """A parameter or the body does not match the API's schema (400), one sub-error per field."""

    code = 400
    http_status = 400

    def __init__(
        self, message: str, *, target: str | None = None, sub_errors: Sequence[views.ErrorView] = ()
    ) -> None:
        super().__init__(message, target=target)
        self.sub_errors = list(sub_errors)


class RouteNotFoundError(DagtaskError):
    """No endpoint has this path (404)."""

    code = 404
    http_status = 404


class MethodNotAllowedError(DagtaskError):
    """The path exists but not with this HTTP method (405)."""

    code = 405
    http_status = 405


class HttpStatusError(DagtaskError):
    """Any other HTTP-level refusal (e.g. 413), with the HTTP status as its code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.code = status
        self.http_status = status


class InternalServerError(DagtaskError):
    """Something unexpected broke (500); the details are in the server's log."""

    code = 500
    http_status = 500


# ---- the state of one request --------------------------------------------------------------------


@dataclass
class RequestState:
    """What the API knows about one request while it answers it."""

    trace_id: str
    started: float
    server: str
    user: UserInfo | None = None
    quota: Quota | None = None

    def duration_ms(self) -> int:
        """Milliseconds since the request arrived."""
        return int((time.monotonic() - self.started) * 1000)


def new_trace_id() -> str:
    """A fresh trace id: 16 hex digits, as in OCP's samples."""
    return secrets.token_hex(8)


def request_state(request: Request, server: str | None = None) -> RequestState:
    """The request's :class:`RequestState`, created on first use.

    The caller's ``X-Trace-Id`` is kept when it is 1 to 128 characters of ``[A-Za-z0-9._:/+=-]``;
    without one, a W3C ``traceparent``'s trace id is used; anything else is replaced by a fresh
    id rather than echoed.
    """
    state: RequestState | None = getattr(request.state, "dagtask", None)
    if state is None:
        given = request.headers.get(TRACE_HEADER, "")
        if not _TRACE_ID.match(given):
            # No usable X-Trace-Id: a W3C traceparent's trace id, else a fresh one.
            parent = _TRACEPARENT.match(request.headers.get("traceparent", "").lower())
            given = parent.group(1) if parent else ""
        state = RequestState(
            trace_id=given or new_trace_id(),
            started=time.monotonic(),
            server=server or "",
        )
        request.state.dagtask = state
    elif server and not state.server:
        state.server = server
    return state


def ok(request: Request, data: dict[str, Any] | None) -> Response:
    """A 200 answer: ``data`` (already OCP JSON, or None for none) in the success envelope."""
    state = request_state(request)
    body = views.envelope(
        data, duration_ms=state.duration_ms(), trace_id=state.trace_id, server=state.server
    )
    return _with_headers(JSONResponse(body), state)


def download(request: Request, content: bytes, media_type: str, filename: str) -> Response:
    """A 200 answer that is a file to save (no envelope), with the trace and quota headers."""
    response = Response(content, media_type=media_type, headers=diagnosis.attachment(filename))
    return _with_headers(response, request_state(request))


def _with_headers(response: Response, state: RequestState) -> Response:
    response.headers[TRACE_HEADER] = state.trace_id
    if state.quota is not None:
        response.headers.update(state.quota.headers())
    return response


# ---- exceptions to envelopes ---------------------------------------------------------------------


def _field(loc: Sequence[int | str]) -> str:
    """``("body", "hostIds", 0)`` -> ``hostIds[0]``; ``("query", "size")`` -> ``size``."""
    parts = list(loc[1:]) if len(loc) > 1 and loc[0] in ("body", "query", "path", "header") else []
    if not parts:
        return str(loc[0]) if loc else "request"
    text = str(parts[0])
    for part in parts[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def validation_error(exc: RequestValidationError) -> BadRequestError:
    """A 400 naming every bad field (target) with pydantic's reason (message)."""
    subs = []
    for err in exc.errors():
        target = _field(err.get("loc", ()))
        reason = str(err.get("msg", "invalid value"))
        if err.get("type") == "json_invalid":
            target, reason = "body", f"the body is not valid JSON: {reason}"
        subs.append(views.ErrorView(code=400, message=f"{target}: {reason}", target=target))
    if not subs:
        return BadRequestError("invalid request")
    more = f" (and {len(subs) - 1} more, see subErrors)" if len(subs) > 1 else ""
    return BadRequestError(
        f"invalid request: {subs[0].message}{more}", target=subs[0].target, sub_errors=subs
    )


def _as_dagtask_error(exc: Exception, state: RequestState) -> DagtaskError:
    if isinstance(exc, DagtaskError):
        return exc
    if isinstance(exc, RequestValidationError):
        return validation_error(exc)
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 404:
            return RouteNotFoundError("no such endpoint; see the API description at /openapi.json")
        if exc.status_code == 405:
            return MethodNotAllowedError("this endpoint does not accept this HTTP method")
        return HttpStatusError(exc.status_code, f"request refused: {exc.detail}")
    return InternalServerError(
        f"unexpected server error; the server's log has the details under trace id {state.trace_id}"
    )


def error_response(request: Request, exc: Exception, server: str | None = None) -> Response:
    """``exc`` as OCP's error envelope, with the matching HTTP status and headers."""
    state = request_state(request, server)
    error = _as_dagtask_error(exc, state)
    if error.http_status >= 500:
        _log.error("answered %d (trace id %s)", error.http_status, state.trace_id, exc_info=exc)
    sub_errors = list(getattr(error, "sub_errors", ()))
    wants_debug = request.headers.get(DEBUG_HEADER, "").lower() in ("1", "true", "yes")
    if error.http_status >= 500 and wants_debug and state.user is not None:
        trace = "".join(traceback.format_exception(exc))
        sub_errors.append(views.ErrorView(code=500, message=trace, target="stackTrace"))
    status = error.http_status
    if isinstance(error, OperationNotAllowedError | RollbackProhibitedError):
        # 409 Conflict: the request was well formed, the task's state refused it; OCP answers
        # 400 with the code in the body (dagtask.fidelity, switch http_400).
        status = 400 if fidelity.current().http_400 else status
    body = views.error_envelope(
        error,
        status=status,
        trace_id=state.trace_id,
        server=state.server,
        duration_ms=state.duration_ms(),
        sub_errors=sub_errors,
    )
    response = JSONResponse(body, status_code=status)
    if isinstance(error, AuthenticationError):
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    if isinstance(exc, StarletteHTTPException) and exc.headers and "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    if isinstance(error, RateLimitedError) and state.quota is not None:
        response.headers["Retry-After"] = str(state.quota.reset)
    return _with_headers(response, state)


class EnvelopeRoute(APIRoute):
    """A route whose every answer, errors included, is in OCP's envelope."""

    server: str = ""
    """The ``server`` member of the envelope; set by :func:`dagtask.api.create_router`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The endpoint, wrapped: trace id and timing first, errors as envelopes."""
        handler = super().get_route_handler()
        server = self.server

        async def run(request: Request) -> Response:
            state = request_state(request, server)
            # The request's trace (traceparent, else a hex X-Trace-Id) becomes the parent of
            # what the endpoint does, a submitted task's span included; the endpoint runs in a
            # worker thread that inherits this context.
            trace_context = tracing.request_context(request.headers, state.trace_id)
            try:
                with tracing.attached(trace_context):
                    response = await handler(request)
            except Exception as exc:
                return error_response(request, exc)
            return _with_headers(response, state)

        return run


def install_error_handlers(app: Any, server: str) -> None:
    """Answer in OCP's envelope outside the routes too: unknown paths, wrong methods, crashes."""

    async def on_error(request: Request, exc: Exception) -> Response:
        return error_response(request, exc, server)

    app.add_exception_handler(StarletteHTTPException, on_error)
    app.add_exception_handler(RequestValidationError, on_error)
    app.add_exception_handler(Exception, on_error)
