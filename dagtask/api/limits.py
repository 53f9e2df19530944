"""Per-user rate limiting: a fixed window of ``limit`` requests per ``window`` seconds.

Every answer to an authenticated request carries the window's state in the headers of the IETF
RateLimit draft: ``RateLimit-Limit`` (requests per window), ``RateLimit-Remaining`` and
``RateLimit-Reset`` (seconds until the window starts over). A request beyond the limit is answered
429 in OCP's error envelope. Counts live in this process's memory: each ``dagtask serve`` process
limits on its own.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from dagtask.errors import ArgumentError

_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class RateLimit:
    """``limit`` requests per ``window`` seconds and user; ``limit == 0`` turns limiting off."""

    limit: int = 600
    window: float = 60.0

    @property
    def enabled(self) -> bool:
        """Whether requests are limited at all."""
        return self.limit > 0

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """``"600/min"``, ``"10/s"``, ``"5000/hour"``, ``"100/30s"``, or ``"off"``."""
        if text.strip().lower() in ("off", "0", "none"):
            return cls(limit=0)
        match = _RATE.match(text.lower())
        if not match or match.group(3) not in _UNITS:
            raise ArgumentError(
                f"{text!r} is not a rate: use N/UNIT with UNIT one of s, min, hour "
                "(e.g. 600/min, 100/30s), or off"
            )
        count, multiple, unit = int(match.group(1)), match.group(2), match.group(3)
        window = (int(multiple) if multiple else 1) * _UNITS[unit]
        if count < 1 or window < 1:
            raise ArgumentError(f"{text!r}: the count and the window must be at least 1")
        return cls(limit=count, window=float(window))

    def __str__(self) -> str:
        return "off" if not self.enabled else f"{self.limit}/{self.window:g}s"


@dataclass(frozen=True)
class Quota:
    """The state of one caller's window after a request."""

    limit: int
    remaining: int
    reset: int
    """Whole seconds until the window starts over."""
    allowed: bool

    def headers(self) -> dict[str, str]:
        """The RateLimit-* response headers."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
        }


class RateLimiter:
    """Fixed-window counters per key (a user name), safe to share between threads."""

    def __init__(self, rate: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}
        """key -> (start of its current window, requests counted in it)."""

    def hit(self, key: str) -> Quota | None:
        """Count one request of ``key``; its quota afterwards (None when limiting is off)."""
        if not self.rate.enabled:
            return None
        now = self._clock()
        with self._lock:
            start, count = self._windows.get(key, (now, 0))
            if now - start >= self.rate.window:
                start, count = now, 0
            allowed = count < self.rate.limit
            if allowed:
                count += 1
            self._windows[key] = (start, count)
            if len(self._windows) > 10_000:
                self._forget_expired(now)
        # Rounded up to whole seconds, but never past the window: (start + window) - now can
        # exceed the window by a float's last bit when start == now.
        left = start + self.rate.window - now
        reset = max(0, min(math.ceil(left - 1e-6), math.ceil(self.rate.window)))
        return Quota(self.rate.limit, self.rate.limit - count, reset, allowed)

    def _forget_expired(self, now: float) -> None:
        for key, (start, _) in list(self._windows.items()):
            if now - start >= self.rate.window:
                del self._windows[key]
