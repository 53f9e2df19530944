"""Fixtures for tests that run `dagtask worker` processes against one shared database."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dagtask import Engine
from tests.conftest import REQUIRE_SERVERS

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Workers:
    """`dagtask worker` processes started by a test (all killed at its end)."""

    url: str
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self, name: str, *, concurrency: int = 4, lease: int = 2, stop_timeout: float = 30
    ) -> subprocess.Popen[bytes]:
        """Start worker ``name`` (its output goes to ``<logs>/<name>.log``)."""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        command = [
            *(sys.executable, "-m", "dagtask", "--db", self.url, "worker"),
            *("--name", name, "--concurrency", str(concurrency), "--lease", str(lease)),
            *("--poll", "0.05", "--stop-timeout", str(stop_timeout)),
        ]
        with open(self.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
        self.procs[name] = proc
        return proc

    def wait_registered(self, engine: Engine, names: list[str], timeout: float = 30) -> None:
        """Wait until every worker in ``names`` is ACTIVE in the database."""
        deadline = time.monotonic() + timeout
        while True:
            active = {w.name for w in engine.store.workers() if w.status == "ACTIVE"}
            if set(names) <= active:
                return
            for name in names:
                proc = self.procs[name]
                if proc.poll() is not None:
                    pytest.fail(f"worker {name} exited {proc.returncode}: {self.log(name)}")
            if time.monotonic() > deadline:
                pytest.fail(f"workers {sorted(set(names) - active)} did not register")
            time.sleep(0.05)

    def kill(self, name: str) -> None:
        """SIGKILL worker ``name`` and reap it."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def log(self, name: str) -> str:
        """What worker ``name`` printed."""
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]

    def stop_all(self) -> None:
        """SIGKILL every worker still running."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def workers_on(tmp_path: Path) -> Iterator[Callable[[str], Workers]]:
    """``workers_on(url)``: a :class:`Workers` for that database."""
    made: list[Workers] = []

    def make(url: str) -> Workers:
        logs = tmp_path / "worker-logs"
        logs.mkdir(exist_ok=True)
        workers = Workers(url, logs)
        made.append(workers)
        return workers

    yield make
    for workers in made:
        workers.stop_all()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``check`` every 20 ms until it holds; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def read_ledger(path: Path) -> Counter[tuple[int, int, str]]:
    """(subtask id, runTime, phase) -> how many times the ``ledger`` handler wrote it."""
    counts: Counter[tuple[int, int, str]] = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            sid, run_time, phase, _pid = line.split()
            counts[(int(sid), int(run_time), phase)] += 1
    return counts


# ---- a private PostgreSQL server, for a test that restarts it ------------------------------------


@dataclass
class PrivateServer:
    """A PostgreSQL cluster of the test's own (restarting it disturbs nobody)."""

    url: str
    data: Path
    pg_ctl: str

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", self.pg_ctl, "-D", str(self.data), "-w", *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def restart(self, pause: float = 1.0) -> None:
        """Stop the server (fast: every connection is cut), wait ``pause`` s, start it again."""
        self._ctl("stop", "-m", "fast")
        time.sleep(pause)  # the workers meet a server that is down, not just a blip
        self._ctl("start", "-l", str(self.data / "server.log"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def private_pg() -> Iterator[PrivateServer]:
    """Initialise and start a throw-away PostgreSQL cluster on a free port."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins or shutil.which("runuser") is None or os.geteuid() != 0:
        message = "needs PostgreSQL's server binaries and root (to run them as user postgres)"
        if REQUIRE_SERVERS:
            pytest.fail(message)
        pytest.skip(message)
    bindir = bins[-1].parent
    # Not under pytest's temp folder: user postgres cannot enter that (mode 0700, root's).
    base = Path(tempfile.mkdtemp(prefix="dagtask-test-pg-"))
    data = base / "data"
    shutil.chown(base, "postgres")
    base.chmod(0o755)
    port = _free_port()
    subprocess.run(
        [
            *("runuser", "-u", "postgres", "--", str(bindir / "initdb"), "-D", str(data)),
            *("-A", "trust", "-U", "postgres", "--no-sync"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n")
        conf.write("fsync = off\n")
    server = PrivateServer(
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", data, str(bindir / "pg_ctl")
    )
    server._ctl("start", "-l", str(data / "server.log"))
    try:
        yield server
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", server.pg_ctl, "-D", str(data), "stop", "-m", "i"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(base, ignore_errors=True)
