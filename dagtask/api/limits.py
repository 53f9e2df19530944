"""Per-user rate limiting (a fixed window of ``limit`` requests per ``window`` seconds), and the
back-off of failed logins (:class:`LoginBackoff`, :class:`FailureTracker`).

Every answer to an authenticated request carries the window's state in the headers of the IETF
RateLimit draft: ``RateLimit-Limit`` (requests per window), ``RateLimit-Remaining`` and
``RateLimit-Reset`` (seconds until the window starts over). A request beyond the limit is answered
429 in OCP's error envelope. Counts live in this process's memory: each ``dagtask serve`` process
limits on its own.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
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


# ---- failed logins -------------------------------------------------------------------------------

ENV_ACCOUNT_FAILURES = "DAGTASK_LOGIN_ACCOUNT_FAILURES"
ENV_CLIENT_FAILURES = "DAGTASK_LOGIN_CLIENT_FAILURES"
ENV_WINDOW = "DAGTASK_LOGIN_WINDOW"
ENV_LOCKOUT = "DAGTASK_LOGIN_LOCKOUT"
ENV_MAX_LOCKOUT = "DAGTASK_LOGIN_MAX_LOCKOUT"


@dataclass(frozen=True)
class LoginBackoff:
    """When failed logins lock an account name or a client address out, and for how long.

    Once ``account_failures`` failures for one name (or ``client_failures`` from one address)
    have piled up, each further failure made within ``window`` seconds of the one before
    doubles the lockout: ``lockout``, then twice that, and so on up to ``max_lockout`` seconds.
    A threshold of 0 turns that kind of lockout off.
    """

    account_failures: int = 5
    client_failures: int = 20
    window: float = 900.0
    """Failures further apart than this start the count again."""
    lockout: float = 1.0
    max_lockout: float = 900.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LoginBackoff:
        """The defaults, overridden by the ``DAGTASK_LOGIN_*`` variables that are set."""
        env = os.environ if environ is None else environ
        default = cls()
        return cls(
            account_failures=int(_env_number(env, ENV_ACCOUNT_FAILURES, default.account_failures)),
            client_failures=int(_env_number(env, ENV_CLIENT_FAILURES, default.client_failures)),
            window=_env_number(env, ENV_WINDOW, default.window, integer=False),
            lockout=_env_number(env, ENV_LOCKOUT, default.lockout, integer=False),
            max_lockout=_env_number(env, ENV_MAX_LOCKOUT, default.max_lockout, integer=False),
        )


def _env_number(
    env: Mapping[str, str], name: str, default: float, *, integer: bool = True
) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = -1
    if not math.isfinite(value) or value < 0:
        kind = "a whole number" if integer else "a number of seconds"
        raise ArgumentError(f"{name}={text!r} is not valid: set it to {kind}, 0 or more")
    return value


@dataclass
class _Failures:
    count: int
    last: float
    locked_until: float


class FailureTracker:
    """Failed logins per key (an account name or a client address) and the lockouts they
    earned; safe to share between threads. Counts live in this process's memory only."""

    MAX_KEYS = 100_000
    """Beyond this many keys the oldest unlocked ones are forgotten (memory stays bounded)."""

    def __init__(
        self, threshold: int, backoff: LoginBackoff, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.backoff = backoff
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, _Failures] = {}

    def locked_for(self, key: str) -> float:
        """Seconds until ``key`` may try again (0: it may now)."""
        if self.threshold <= 0:
            return 0.0
        with self._lock:
            found = self._keys.get(key)
            return max(0.0, found.locked_until - self._clock()) if found else 0.0

    def failed(self, key: str) -> None:
        """Count a failed login of ``key``; lock it out once it reaches the threshold."""
        if self.threshold <= 0:
            return
        now = self._clock()
        with self._lock:
            found = self._keys.get(key)
            if found is None or now - found.last > self.backoff.window:
                found = self._keys[key] = _Failures(0, now, 0.0)
            found.count += 1
            found.last = now
            beyond = found.count - self.threshold
            if beyond >= 0:
                # 2**beyond grows past any float for a long attack: cap the exponent first.
                delay = self.backoff.lockout * 2.0 ** min(beyond, 64)
                found.locked_until = now + min(delay, self.backoff.max_lockout)
            if len(self._keys) > self.MAX_KEYS:
                self._forget(now)

    def reset(self, key: str) -> None:
        """Forget ``key``'s failures (after a successful login)."""
        with self._lock:
            self._keys.pop(key, None)

    def _forget(self, now: float) -> None:
        live = {
            k: v
            for k, v in self._keys.items()
            if v.locked_until > now or now - v.last <= self.backoff.window
        }
        if len(live) > self.MAX_KEYS // 2:
            unlocked = sorted((v.last, k) for k, v in live.items() if v.locked_until <= now)
            for _, key in unlocked[: len(live) - self.MAX_KEYS // 2]:
                del live[key]
        self._keys = live
