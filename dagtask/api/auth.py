"""HTTP Basic authentication against the users in the database, roles, and rate limiting.

A password is checked with the slow KDF of :mod:`dagtask.users` once; a successful check is then
remembered for ``cache_seconds`` under an HMAC (with a key that exists only in this process's
memory) of the name, the password and the stored hash, so a client polling a task does not pay
the KDF on every request, while a password change, a disabled user or a new role takes effect on
the next request (the user's row is read every time).

A failed authentication costs the same KDF work whether or not the user exists, and counts
against the caller's address in the rate limiter.

Password guessing is stopped by a back-off (:class:`~dagtask.api.limits.LoginBackoff`): after
``account_failures`` failed logins for one user name, or ``client_failures`` from one client
address, that name or address is answered 429 with ``Retry-After`` for a lockout that doubles with
every further failure. During a lockout the password is not even checked, so the right one is
refused too (and costs no KDF work); a successful login clears the name's count, not the
address's (an attacker with an account of their own could clear it between guesses otherwise).
The counts live in this process's memory: each ``dagtask serve`` process counts on its own, and a
restart forgets them. The client address is the TCP peer, or the ``X-Forwarded-For`` client when
the peer is a proxy the operator trusts (``dagtask.api.server.serve(trusted_proxies=...)``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable

from fastapi import Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.requests import HTTPConnection

from dagtask.api.errors import RequestState, request_state
from dagtask.api.limits import FailureTracker, LoginBackoff, Quota, RateLimiter
from dagtask.errors import AuthenticationError, PermissionDeniedError, RateLimitedError
from dagtask.store.users import UserStore
from dagtask.users import Role, ScryptCost, UserInfo, verify_password, verify_unknown

NO_CREDENTIALS = (
    "authentication required: send the HTTP Basic credentials of a dagtask user "
    "(an administrator creates users with `dagtask users add NAME --role ROLE`)"
)
MALFORMED = (
    "malformed HTTP Basic credentials: send 'Authorization: Basic ' and the base64 of "
    "'name:password' (UTF-8)"
)
BAD_CREDENTIALS = "invalid user name or password (or the user is disabled)"
LOCKED_OUT = (
    "too many failed logins {who}: try again in {reset} s (every further failure doubles the "
    "wait; an administrator can reset a forgotten password with `dagtask users passwd NAME`)"
)
THROTTLED = (
    "Excessive number of requests. You have exceeded the request limit for the current "
    "throttling window; retry in {reset} s"
)


class BasicCredentials(HTTPBasic):
    """HTTP Basic credentials decoded as UTF-8 (RFC 7617, as the 401's ``charset`` announces);
    FastAPI's own scheme accepts only ASCII, which would lock out non-ASCII passwords."""

    # HTTPBasic overrides HTTPBase.__call__ with this same return type and the same ignore.
    async def __call__(  # type: ignore[override]
        self, request: HTTPConnection
    ) -> HTTPBasicCredentials | None:
        """The credentials of the request; None without Basic ones; 401 if malformed."""
        scheme, _, param = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            text = base64.b64decode(param.strip(), validate=True).decode("utf-8")
        except (ValueError, binascii.Error) as exc:  # UnicodeDecodeError is a ValueError
            raise AuthenticationError(MALFORMED) from exc
        name, separator, password = text.partition(":")
        if not separator:
            raise AuthenticationError(MALFORMED)
        return HTTPBasicCredentials(username=name, password=password)


class Authenticator:
    """Checks HTTP Basic credentials against a :class:`UserStore`; thread-safe."""

    def __init__(
        self,
        users: UserStore,
        limiter: RateLimiter,
        *,
        cache_seconds: float = 60.0,
        unknown_user_cost: ScryptCost | None = None,
        backoff: LoginBackoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``backoff`` defaults to :meth:`LoginBackoff.from_env` (the ``DAGTASK_LOGIN_*``
        environment variables over the defaults)."""
        self.users = users
        self.limiter = limiter
        self.backoff = backoff if backoff is not None else LoginBackoff.from_env()
        self.account_failures = FailureTracker(self.backoff.account_failures, self.backoff, clock)
        self.client_failures = FailureTracker(self.backoff.client_failures, self.backoff, clock)
        self.cache_seconds = cache_seconds
        self.unknown_user_cost = unknown_user_cost
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._verified: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def _digest(self, name: str, password: str, stored: str) -> bytes:
        message = "\0".join((name, password, stored)).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _remembered(self, digest: bytes) -> bool:
        with self._lock:
            expiry = self._verified.get(digest)
            return expiry is not None and expiry > self._clock()

    def _remember(self, digest: bytes) -> None:
        now = self._clock()
        with self._lock:
            if len(self._verified) > 10_000:
                self._verified = {k: v for k, v in self._verified.items() if v > now}
            self._verified[digest] = now + self.cache_seconds

    def check(self, name: str, password: str) -> UserInfo | None:
        """The enabled user with this name and password, else None."""
        found = self.users.credentials(name)
        if found is None:
            verify_unknown(password, self.unknown_user_cost)
            return None
        user, stored = found
        digest = self._digest(name, password, stored)
        if self.cache_seconds > 0 and self._remembered(digest):
            return user if user.enabled else None
        if not verify_password(password, stored):
            return None
        if self.cache_seconds > 0:
            self._remember(digest)
        return user if user.enabled else None

    def authenticate(self, request: Request, name: str | None, password: str | None) -> UserInfo:
        """The caller as a user; 401 (or 429 when it keeps failing) otherwise.

        Every request of the user counts in its rate-limit window (429 beyond it). A name or an
        address locked out by failed logins is 429 whatever the password.
        """
        state = request_state(request)
        client = request.client.host if request.client else "unknown"
        account = name.casefold() if name is not None else None
        if account is not None:
            self._refuse_if_locked(state, account, client)
        user = self.check(name, password or "") if name is not None else None
        if user is None:
            if account is not None:
                self.account_failures.failed(account)
                self.client_failures.failed(client)
            state.quota = self.limiter.hit(f"anonymous@{client}")
            if state.quota is not None and not state.quota.allowed:
                raise RateLimitedError(THROTTLED.format(reset=state.quota.reset))
            raise AuthenticationError(NO_CREDENTIALS if name is None else BAD_CREDENTIALS)
        if account is not None:
            self.account_failures.reset(account)
        state.user = user
        state.quota = self.limiter.hit(f"user:{user.name}")
        if state.quota is not None and not state.quota.allowed:
            raise RateLimitedError(THROTTLED.format(reset=state.quota.reset))
        return user

    def _refuse_if_locked(self, state: RequestState, account: str, client: str) -> None:
        """429 with ``Retry-After`` while the name or the address is locked out."""
        for tracker, key, who in (
            (self.account_failures, account, "for this user"),
            (self.client_failures, client, "from this address"),
        ):
            left = tracker.locked_for(key)
            if left > 0:
                reset = max(1, math.ceil(left))
                # The envelope turns the quota's reset into the Retry-After header.
                state.quota = Quota(tracker.threshold, 0, reset, allowed=False)
                raise RateLimitedError(LOCKED_OUT.format(who=who, reset=reset))


def check_role(user: UserInfo, role: Role, action: str) -> None:
    """Raise 403 naming ``role`` unless ``user`` holds it (or is an ADMIN)."""
    if not user.has_role(role):
        have = sorted(r.value for r in user.roles)
        granted = ",".join(sorted([*have, role.value]))
        raise PermissionDeniedError(
            f"user {user.name!r} may not {action}: this needs the {role.value} role (or ADMIN), "
            f"and the user has {', '.join(have) or 'no role'}; an administrator can grant it "
            f"with `dagtask users roles {user.name} --role {granted}`",
            target=role.value,
        )
