"""Handlers of the benchmark workloads, run by dotted path (``benchmarks.handlers.sleep_50ms``)."""

from __future__ import annotations

from dagtask.handlers import RunContext

SLEEP_SECONDS = 0.05


def sleep_50ms(ctx: RunContext) -> None:
    """Wait 50 ms on the cancellation token (so a timeout or cancel would end it early)."""
    ctx.token.wait(SLEEP_SECONDS)
