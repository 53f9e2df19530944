"""Shared by the observability tests: reading a scrape, a TCP proxy that can refuse or stall,
and `dagtask worker` / `dagtask serve` processes whose output lands in a file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import wait_until

ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text scrape: (name, labels) -> value."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def scrape(client: httpx.Client, path: str = "/metrics") -> Samples:
    """GET ``path`` and parse it (asserting a 200 in Prometheus' text format)."""
    answer = client.get(path)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version="), answer.headers
    return parse(answer.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name{labels}``; 0 when it is not there (a counter not incremented yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


class Proxy:
    """A TCP proxy on loopback to ``target``: ``forward`` (the default), ``refuse`` (nothing
    listens, open connections are cut) or ``stall`` (connections are accepted and kept, but no
    byte goes through: a server that hangs)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = "forward"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self.port = self._listen(0)
        self._stopped = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _listen(self, port: int) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.setblocking(False)
        with self._lock:
            self._listener = listener
        return int(listener.getsockname()[1])

    def forward(self) -> None:
        """Relay again (and listen again after :meth:`refuse`)."""
        with self._lock:
            self.mode = "forward"
            listening = self._listener is not None
        if not listening:
            self._listen(self.port)

    def stall(self) -> None:
        """Keep every connection, relay nothing."""
        with self._lock:
            self.mode = "stall"

    def refuse(self) -> None:
        """Stop listening and cut every open connection."""
        with self._lock:
            self.mode = "refuse"
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, []
        if listener is not None:
            listener.close()
        for a, b in pairs:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        """Stop the proxy."""
        self._stopped = True
        self.refuse()
        self._thread.join(5)

    def _pump(self) -> None:
        while not self._stopped:
            with self._lock:
                listener = self._listener
                pairs = list(self._pairs)
                relaying = self.mode == "forward"
            readable = [s for pair in pairs for s in pair] if relaying else []
            selector = selectors.DefaultSelector()
            try:
                if listener is not None:
                    selector.register(listener, selectors.EVENT_READ)
                for sock in readable:
                    with contextlib.suppress(ValueError, OSError):
                        selector.register(sock, selectors.EVENT_READ)
                events = selector.select(timeout=0.05)
            except (OSError, ValueError):
                continue
            finally:
                selector.close()
            for key, _ in events:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is listener:
                    self._accept(listener)
                else:
                    self._relay(sock, pairs)

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._pairs.append((client, upstream))

    def _relay(self, sock: socket.socket, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
        pair = next((p for p in pairs if sock in p), None)
        if pair is None:
            return
        other = pair[1] if sock is pair[0] else pair[0]
        try:
            data = sock.recv(65536)
            if data:
                other.sendall(data)
                return
        except OSError:
            pass
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
        for s in pair:
            s.close()


@contextlib.contextmanager
def proxy_to(host: str, port: int) -> Iterator[Proxy]:
    """A :class:`Proxy` to ``host:port`` for the block."""
    proxy = Proxy((host, port))
    try:
        yield proxy
    finally:
        proxy.close()


@dataclass
class Process:
    """A dagtask process whose stderr (and stdout) go to ``log``."""

    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        """Its output so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def json_lines(self) -> list[dict[str, Any]]:
        """Its output lines that are JSON objects."""
        found = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    found.append(json.loads(line))
        return found

    def wait_for(self, pattern: str, what: str, timeout: float = 30.0) -> re.Match[str]:
        """The first match of ``pattern`` in its output, waiting for it."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            assert self.process.poll() is None, f"it exited:\n{self.text()}"
            match = re.search(pattern, self.text())
            if match:
                found.append(match)
            return bool(match)

        wait_until(seen, what, timeout=timeout)
        return found[0]


def start_dagtask(
    db: str, *args: str, log: Path, prelude: str = "", env: dict[str, str] | None = None
) -> Process:
    """``dagtask --db DB ARGS`` from the repository root (tests.handlers importable), its output
    in ``log``; ``prelude``: Python run before the command (to hide a package, say)."""
    program = f"import sys\n{prelude}from dagtask.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DAGTASK_")}
    environment.update(PYTHONPATH=str(ROOT), **(env or {}))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", program, "--db", db, *args],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Process(process, log)


def stop(process: Process, timeout: float = 30.0) -> int:
    """SIGTERM the process; its exit code (it is killed if it does not end in time)."""
    if process.process.poll() is None:
        process.process.terminate()
    try:
        return process.process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.process.kill()
        process.process.wait(10)
        raise
