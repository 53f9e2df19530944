"""``dagtask serve``: the API on uvicorn, with the engine's workers in the same process."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn

from dagtask.api.app import ApiSettings, create_app
from dagtask.engine import Engine
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


def serve(
    db: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 4,
    settings: ApiSettings | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve the API on ``host:port`` until SIGINT/SIGTERM, running ``workers`` worker threads
    in this process (0: none; run ``dagtask worker`` processes instead)."""
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
        app = create_app(engine, settings)
        # No "server: uvicorn" header: the envelope's `server` says who answered.
        config = uvicorn.Config(
            app, host=host, port=address[1], log_level="info", server_header=False
        )
        server = uvicorn.Server(config)
        if workers:
            engine.start()
        announce(
            f"dagtask API on http://{shown}:{address[1]} (OpenAPI: /openapi.json, docs: /docs); "
            f"workers in this process: {workers}; rate limit: {settings.rate_limit} per user"
        )
        try:
            with _graceful_signals(server):
                server.run(sockets=[sock])
        finally:
            sock.close()
        announce("dagtask API stopped")


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
