"""Helpers for tests that start real processes: liveness from /proc, waiting, cleaning up."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def proc_state(pid: int) -> str | None:
    """The /proc state letter of ``pid``, or None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0].decode()
    except (OSError, IndexError):
        return None


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    return proc_state(pid) not in (None, "Z", "X")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def pids_whose_args(match: Callable[[list[bytes]], bool]) -> list[int]:
    """The pids (not this process) whose command line, split into arguments, ``match`` accepts."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if match(args):
            pids.append(int(entry.name))
    return pids


def kill_processes_under(root: Path) -> None:
    """SIGKILL every process with an argument at or under ``root``; wait until all are gone."""
    exact = str(root).encode()
    prefix = exact + b"/"
    pids = pids_whose_args(lambda args: any(a == exact or a.startswith(prefix) for a in args))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        wait_until(functools.partial(_reaped_or_gone, pid), f"pid {pid} to die", timeout=10)


def _reaped_or_gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return not is_running(pid)
