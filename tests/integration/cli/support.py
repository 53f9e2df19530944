"""Shared by the CLI tests: runner types and the per-command time limit."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

CLI_TIMEOUT = 180.0
"""Seconds one CLI subprocess may take before the test fails."""

Run = Callable[..., tuple[int, str, str]]
"""``dt(*args)``: the CLI in-process; returns (exit code, stdout, stderr)."""

Cli = Callable[..., subprocess.CompletedProcess[str]]
"""``cli(*args)``: the CLI as a real ``python -m dagtask`` subprocess."""
