"""The small HTTP server of ``dagtask worker --metrics-port``: ``/metrics``, ``/health``,
``/ready``.

The standard library's threading HTTP server in a daemon thread: a worker process needs no web
framework for three read-only answers. Each request runs on a thread of its own, so a slow
``/ready`` (a database that hangs, bounded by :data:`~.health.READY_TIMEOUT_SECONDS`) never
holds up a scrape. Nothing asks for a login (see ``docs/observability.md``): bind it to an
address only the monitoring can reach (the default is 127.0.0.1).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from dagtask.observability import health

if TYPE_CHECKING:
    from dagtask.engine import Engine
    from dagtask.observability.metrics import EngineMetrics

_log = logging.getLogger("dagtask.worker")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    probes: ProbeServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "dagtask"
    sys_version = ""

    def do_GET(self) -> None:
        probes = self.server.probes
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._answer(200, probes.metrics.exposition(), probes.content_type)
            elif path == "/health":
                self._json(200, health.HEALTHY)
            elif path == "/ready":
                ready, body = probes.readiness.check()
                self._json(200 if ready else 503, body)
            else:
                self._json(404, {"error": "no such path; try /metrics, /health or /ready"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        except Exception:
            _log.exception("the metrics server could not answer %s", path)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._answer(status, json.dumps(body).encode(), "application/json")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("metrics server: %s - %s", self.address_string(), format % args)


class ProbeServer:
    """``/metrics``, ``/health`` and ``/ready`` of ``engine`` on ``host:port`` (``port`` 0: a
    free one; :attr:`address` says which)."""

    def __init__(self, engine: Engine, metrics: EngineMetrics, host: str, port: int) -> None:
        from dagtask.observability.metrics import CONTENT_TYPE

        self.metrics = metrics
        self.content_type = CONTENT_TYPE
        self.readiness = health.Readiness(engine.database)
        server_class = _Server6 if ":" in host else _Server
        self._server: _Server = server_class((host, port), _Handler)
        self._server.probes = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="dagtask-metrics-server",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The address and port it listens on."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://host:port``."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
