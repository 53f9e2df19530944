"""Console sign-in: a signed session cookie, a CSRF token per session, and a one-shot notice.

A session is a cookie, not a server-side row: ``base64url(json) . base64url(hmac-sha256)`` over
the user's name, an expiry and a random session id, signed with the console's key. The key comes
from ``DAGTASK_SESSION_SECRET`` when it is set (then sessions survive a restart and every
``dagtask serve`` behind one balancer accepts the others' cookies); otherwise each process draws
its own, and a restart signs everybody out. The user is read again on every request, so a user
who is disabled, removed or stripped of a role loses it at the next click, not at the cookie's
expiry. Signing out forgets the session id in this process (a copied cookie stops working too).

Actions are POSTs that must carry the session's CSRF token (a hidden form field ``csrf`` or the
``X-CSRF-Token`` header): an HMAC of the session id, so a page of another site can neither read
nor forge it. The cookie is ``HttpOnly`` and ``SameSite=Strict`` besides (``Secure`` when the
request came over HTTPS).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "dagtask_session"
NOTICE_COOKIE = "dagtask_notice"
LIFETIME_SECONDS = 8 * 3600
"""How long a sign-in lasts (a working day)."""
SECRET_ENV = "DAGTASK_SESSION_SECRET"


@dataclass(frozen=True)
class Session:
    """A signed-in browser: whose it is, its id and its CSRF token."""

    user: str
    sid: str
    expires: float
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues, reads and ends console sessions (thread-safe)."""

    def __init__(
        self,
        key: bytes | None = None,
        *,
        lifetime: float = LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        env = os.environ.get(SECRET_ENV, "")
        self._key = key or (env.encode("utf-8") if env else secrets.token_bytes(32))
        self.lifetime = lifetime
        self._clock = clock
        self._ended: dict[str, float] = {}
        self._lock = threading.Lock()

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._key, payload, hashlib.sha256).digest())

    def _csrf(self, sid: str) -> str:
        return self._sign(b"csrf\0" + sid.encode("ascii"))

    def start(self, response: Response, request: Request, user: str) -> Session:
        """Sign ``user`` in: set the session cookie on ``response``."""
        sid = secrets.token_urlsafe(18)
        expires = self._clock() + self.lifetime
        payload = json.dumps({"u": user, "s": sid, "e": int(expires)}, separators=(",", ":"))
        body = _b64(payload.encode("utf-8"))
        response.set_cookie(
            COOKIE,
            f"{body}.{self._sign(body.encode('ascii'))}",
            max_age=int(self.lifetime),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return Session(user, sid, expires, self._csrf(sid))

    def read(self, request: Request) -> Session | None:
        """The request's session, if its cookie is genuine, unexpired and not signed out."""
        raw = request.cookies.get(COOKIE, "")
        body, _, signature = raw.partition(".")
        if not body or not hmac.compare_digest(signature, self._sign(body.encode("ascii"))):
            return None
        try:
            data = json.loads(_unb64(body))
            user, sid, expires = str(data["u"]), str(data["s"]), float(data["e"])
        except (binascii.Error, ValueError, KeyError, TypeError):
            return None
        if expires <= self._clock():
            return None
        with self._lock:
            if sid in self._ended:
                return None
        return Session(user, sid, expires, self._csrf(sid))

    def end(self, response: Response, session: Session | None) -> None:
        """Sign out: forget the session and clear the cookie."""
        if session is not None:
            now = self._clock()
            with self._lock:
                self._ended = {s: e for s, e in self._ended.items() if e > now}
                self._ended[session.sid] = session.expires
        response.delete_cookie(COOKIE, path="/")

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        """Whether ``token`` is this session's CSRF token."""
        return token is not None and hmac.compare_digest(token, session.csrf)

    # ---- the notice a redirect carries to the next page ----------------------------------------

    def notice(self, response: Response, kind: str, text: str) -> None:
        """Show ``text`` (``kind`` ok or error) on the next page this browser loads."""
        body = _b64(json.dumps({"k": kind, "t": text}).encode("utf-8"))
        response.set_cookie(
            NOTICE_COOKIE,
            f"{body}.{self._sign(body.encode('ascii'))}",
            max_age=60,
            httponly=True,
            samesite="strict",
            path="/",
        )

    def take_notice(self, request: Request, response: Response) -> tuple[str, str] | None:
        """The notice left for this page, if any (cleared as it is shown)."""
        raw = request.cookies.get(NOTICE_COOKIE)
        if raw is None:
            return None
        response.delete_cookie(NOTICE_COOKIE, path="/")
        body, _, signature = raw.partition(".")
        if not hmac.compare_digest(signature, self._sign(body.encode("ascii"))):
            return None
        try:
            data = json.loads(_unb64(body))
            return str(data["k"]), str(data["t"])
        except (binascii.Error, ValueError, KeyError, TypeError):
            return None
