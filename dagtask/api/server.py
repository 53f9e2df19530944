"""``dagtask serve``: the API on uvicorn, with the engine's workers in the same process.

``X-Forwarded-For`` (and ``X-Forwarded-Proto``) are believed only from the proxies the operator
names (``trusted_proxies``); by default none, so the client address that rate limits and login
back-off count by is the TCP peer, which a client cannot rotate. (uvicorn's own default trusts
the header from 127.0.0.1, which would let any local client pose as many.)
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

import uvicorn

from dagtask import observability
from dagtask.api.app import ApiSettings, create_app
from dagtask.config import DEFAULT_WORKERS
from dagtask.engine import Engine
from dagtask.errors import ArgumentError
from dagtask.observability import logfields
from dagtask.store.users import UserStore

_log = logging.getLogger("dagtask.api")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def checked_proxies(proxies: Sequence[str]) -> list[str]:
    """The trusted proxies, each an IP address or network; ArgumentError naming a bad one."""
    trusted = [p.strip() for p in proxies if p.strip()]
    for proxy in trusted:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError as exc:
            raise ArgumentError(
                f"--trusted-proxy {proxy!r} is not an IP address or network; "
                "name the proxy's address, e.g. --trusted-proxy 10.0.0.5"
            ) from exc
    return trusted


def uvicorn_config(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    trusted_proxies: Sequence[str] = (),
    log_level: str = "info",
    log_format: str = "text",
) -> uvicorn.Config:
    """uvicorn's configuration for the API: ``X-Forwarded-*`` honoured only from
    ``trusted_proxies`` (IP addresses or networks such as ``10.0.0.0/8``; none by default).
    ``log_format`` ``json``: uvicorn leaves its loggers to the caller (``dagtask serve
    --log-format json`` gives them JSON lines)."""
    trusted = checked_proxies(trusted_proxies)
    # No "server: uvicorn" header: the envelope's `server` says who answered.
    logging_config: dict[str, Any] = {"log_config": None} if log_format == "json" else {}
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        **logging_config,
    )


def serve(
    db: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = DEFAULT_WORKERS,
    settings: ApiSettings | None = None,
    trusted_proxies: Sequence[str] = (),
    announce: Callable[[str], None] = print,
    log_format: str = "text",
) -> None:
    """Serve the API on ``host:port`` until SIGINT/SIGTERM, running ``workers`` worker threads
    in this process (0: none; run ``dagtask worker`` processes instead). ``X-Forwarded-For``
    is believed only from ``trusted_proxies`` (see :func:`uvicorn_config`). ``log_format``
    ``json``: the log lines of a request carry its trace id (the caller configures the loggers,
    as ``dagtask serve --log-format json`` does)."""
    trusted_proxies = checked_proxies(trusted_proxies)  # refused before the engine starts
    settings = settings or ApiSettings()
    with Engine(db, workers=workers) as engine:
        if UserStore(engine.database).count() == 0:
            announce(
                "warning: there are no users yet, so every request will be refused (401); "
                "create the first one with `dagtask users add NAME --role ADMIN`"
            )
        sock = bind(host, port)
        address = sock.getsockname()
        shown = f"[{address[0]}]" if sock.family == socket.AF_INET6 else address[0]
        app: Any = create_app(engine, settings)
        if log_format == "json":
            app = logfields.TraceIdContext(app)
        config = uvicorn_config(
            app,
            host=host,
            port=address[1],
            trusted_proxies=trusted_proxies,
            log_format=log_format,
        )
        server = uvicorn.Server(config)
        if workers:
            engine.start()
        announce(
            f"dagtask API on http://{shown}:{address[1]} (console: /, OpenAPI: /openapi.json, "
            f"docs: /docs, probes: /health /ready, metrics: {_metrics_path(settings)}); "
            f"workers in this process: {workers}; rate limit: {settings.rate_limit} per user; "
            f"trusted proxies: {', '.join(trusted_proxies) or 'none'}"
        )
        try:
            with _graceful_signals(server):
                server.run(sockets=[sock])
        finally:
            sock.close()
        announce("dagtask API stopped")


def _metrics_path(settings: ApiSettings) -> str:
    if not settings.metrics:
        return "off"
    if not observability.metrics_available():
        return "off (pip install 'dagtask[metrics]')"
    return "/metrics" + (" (login)" if settings.metrics_login else "")


@contextmanager
def _graceful_signals(server: uvicorn.Server) -> Iterator[None]:
    """While serving, SIGINT/SIGTERM ask uvicorn to shut down, and nothing more.

    uvicorn re-raises the signal it caught once it has shut down, to the handler that was in place
    before it started: this one, so the process then closes the engine (stopping its workers
    gracefully) and exits 0 instead of dying by the signal.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: FrameType | None) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
