"""Webhooks: an HTTP POST of a task's OCP JSON when the task ends, retried with back-off,
signed, and logged (``dagtask webhooks deliveries``).

A webhook reports every ending (``events="ended"``: SUCCESSFUL or FAILED) or only failures
(``"failed"``), of every task or of one template's, from its creation on. A task that ends again
after a retry or rollback is reported again: one delivery per ending event.

**What is sent.** ``POST <url>`` with the body (compact JSON, UTF-8)::

    {"event": "task.ended", "deliveryId": 12, "eventId": 345, "status": "FAILED",
     "task": {...the task as `dagtask show --json` / OCP's REST API gives it...}}

``event`` is ``task.ended`` for an ``ended`` webhook and ``task.failed`` for a ``failed`` one;
``status`` is the status the task ended with (``task`` is read when the POST is made, so after a
quick retry it may already be RUNNING again). Secret context values are masked as everywhere.
Headers: ``Content-Type: application/json``, ``User-Agent: dagtask/<version>``,
``X-Dagtask-Event`` (as ``event``), ``X-Dagtask-Delivery`` (the delivery id: the same on every
attempt), ``X-Dagtask-Timestamp`` (Unix time in whole seconds, of this attempt).

**Signature.** With a secret (``secret_ref``, ``env:NAME`` or ``file:PATH``, read on the machine
that delivers; a file's trailing newline is dropped), every attempt carries
``X-Dagtask-Signature: sha256=<hex>``, the lower-case hex HMAC-SHA256, keyed with the secret's
UTF-8 bytes, of the timestamp header's value, a ``.``, and the exact body bytes::

    expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, "sha256").hexdigest()
    hmac.compare_digest(expected, request.headers["X-Dagtask-Signature"])

A receiver should also refuse a timestamp far from its clock (a replay).

**Retries.** A 2xx answer is a delivery; any other answer (redirects are not followed), a
connection error or no answer within :data:`TIMEOUT_SECONDS` is a failed attempt, tried again
after :data:`BACKOFF_SECONDS` doubled per attempt (1, 2, 4, ... s, at most
:data:`MAX_BACKOFF_SECONDS`), up to :data:`MAX_ATTEMPTS` attempts; then the delivery is FAILED.
Each attempt's status code and error are in the log.

**Once, mostly.** Every worker process runs a :class:`Notifier`; each delivery is claimed by one
of them for :data:`LEASE_SECONDS`, so in normal operation each ending is POSTed once, whatever
the number of processes. Delivery is nevertheless *at least once*: a process killed after a POST
but before recording it (or frozen past its lease) leaves the delivery to be sent again.
Receivers should deduplicate by ``X-Dagtask-Delivery``. Deliveries are not ordered.

**Nothing lost.** The endings are read from the history events, committed with the status
change; a delivery row is created for each before anything is sent, so a process that stops or
dies leaves its work to the next one. Because a server may commit an event id below one already
visible, a webhook's cursor only moves past ids seen at least :data:`SETTLE_SECONDS` ago; the
newer endings are looked at again on each pass (the ones already collected are skipped).
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import http.client
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from dagtask import __version__, views
from dagtask.clock import utcnow
from dagtask.errors import ArgumentError, DagtaskError, TaskNotFoundError, WebhookNotFoundError
from dagtask.observability import logfields, recorder
from dagtask.store.webhooks import (
    ENDINGS,
    Delivery,
    Webhook,
    WebhookStore,
)

if TYPE_CHECKING:
    from dagtask.engine import Engine

__all__ = ["Delivery", "Notifier", "Webhook", "WebhookNotFoundError", "Webhooks", "sign"]

_log = logging.getLogger("dagtask.webhooks")

BACKOFF_SECONDS = 1.0
"""The wait after a first failed attempt; it doubles with each further one."""
MAX_BACKOFF_SECONDS = 300.0
MAX_ATTEMPTS = 8
"""Attempts before a delivery is FAILED."""
TIMEOUT_SECONDS = 10.0
"""How long connecting, and then each read of the answer, may take."""
LEASE_SECONDS = 60.0
"""How long a notifier holds a claimed delivery; after that another may send it again."""
SETTLE_SECONDS = 30.0
"""How long a transaction may hold an event id before committing it (see the module's doc)."""
PASS_SECONDS = 0.5
"""The longest a notifier waits between two passes."""
MIN_WAIT_SECONDS = 0.05
"""The shortest wait between passes with nothing left to do (no busy loop)."""
BATCH = 8
"""Deliveries one pass claims and sends at once (in parallel)."""
COLLECT_LIMIT = 500
"""Endings one pass turns into deliveries, per webhook."""
SIGNATURE_HEADER = "X-Dagtask-Signature"
TIMESTAMP_HEADER = "X-Dagtask-Timestamp"
DELIVERY_HEADER = "X-Dagtask-Delivery"
EVENT_HEADER = "X-Dagtask-Event"
SECRET_REF_FORMS = "env:NAME (an environment variable) or file:PATH (a file)"


def backoff(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1, 2, 4, ... by default)."""
    return float(min(MAX_BACKOFF_SECONDS, BACKOFF_SECONDS * 2 ** (attempts - 1)))


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of
    ``timestamp + "." + body`` keyed with ``secret``."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def event_name(hook: Webhook) -> str:
    """``task.ended`` or ``task.failed``: what the webhook reports."""
    return f"task.{hook.events}"


def check_url(url: str) -> str:
    """``url`` checked as an http(s) URL with a host; an :class:`ArgumentError` otherwise."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ArgumentError(f"webhook URL {url!r} is not usable: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ArgumentError(
            f"webhook URL {url!r} is not an http:// or https:// URL with a host, "
            "e.g. https://hooks.example.com/dagtask"
        )
    if parts.username is not None or parts.password is not None:
        raise ArgumentError(
            "a webhook URL may not carry a user or password (the URL was not shown); "
            "let the receiver check the signature instead (--secret-ref)"
        )
    if port == 0 or len(url) > 2048 or any(c.isspace() for c in url):
        raise ArgumentError(f"webhook URL {url[:100]!r} is not usable (port, length or spaces)")
    return url


def parse_secret_ref(text: str) -> str:
    """``text`` checked as a secret reference; it is not echoed if it is none (it may be the
    secret itself)."""
    kind, sep, rest = text.strip().partition(":")
    rest = rest.strip()
    if not sep or kind not in ("env", "file") or not rest:
        raise ArgumentError(
            f"the webhook secret must be given as a reference, {SECRET_REF_FORMS}; "
            "dagtask never stores a secret itself (the value given was not shown)"
        )
    if kind == "env" and not rest.replace("_", "a").isalnum():
        raise ArgumentError(f"{text!r} does not name an environment variable (env:NAME)")
    return f"{kind}:{rest}"


def resolve_secret(ref: str) -> bytes:
    """The secret ``ref`` names, read now on this machine (an :class:`ArgumentError` naming
    the reference, never a value, if it is not there)."""
    kind, _, rest = ref.partition(":")
    if kind == "env":
        value = os.environ.get(rest, "")
        if not value:
            raise ArgumentError(
                f"the webhook secret {ref} names the environment variable {rest}, which is not "
                "set (or empty) here; set it wherever workers run"
            )
        return value.encode()
    path = Path(rest).expanduser()
    try:
        text = path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise ArgumentError(
            f"cannot read the webhook secret file {path} ({exc.strerror}); create it on every "
            "machine that runs workers (mode 600)"
        ) from exc
    if not text:
        raise ArgumentError(f"the webhook secret file {path} is empty")
    return text.encode()


class Webhooks:
    """The webhooks of one engine's database (``engine.webhooks``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = WebhookStore(engine.database)
        self._metrics = recorder.for_store(engine.store)
        self._marks: builtins.list[tuple[float, int]] = []
        """(monotonic time, newest event id then): what has settled (see SETTLE_SECONDS)."""
        self._marks_lock = threading.Lock()
        self._failing: set[int] = set()
        """Webhooks whose last attempt failed (to log an endpoint's outage once)."""

    # ---- webhooks ------------------------------------------------------------------------------

    def add(
        self,
        url: str,
        *,
        events: str = "ended",
        template: str | None = None,
        secret_ref: str | None = None,
    ) -> Webhook:
        """Store a webhook POSTing to ``url`` when a task ends (``events="ended"``) or fails
        (``"failed"``), of any template or only of ``template``; signed with the secret
        ``secret_ref`` names (which must be readable now). Nothing is stored when something is
        wrong (:class:`~dagtask.errors.ArgumentError`, or a TemplateError for ``template``)."""
        url = check_url(url)
        events = events.strip().lower()
        if events not in ENDINGS:
            raise ArgumentError(f"webhook events {events!r}: use ended or failed")
        if secret_ref is not None:
            secret_ref = parse_secret_ref(secret_ref)
            resolve_secret(secret_ref)
        name = self.engine.template(template).name if template is not None else None
        return self.store.insert(url, events, name, secret_ref)

    def get(self, webhook_id: int) -> Webhook:
        """A webhook by id (:class:`WebhookNotFoundError` if none)."""
        return self.store.get(webhook_id)

    def list(self) -> builtins.list[Webhook]:
        """Every webhook, by id."""
        return self.store.rows()

    def enable(self, webhook_id: int) -> Webhook:
        """Enable a webhook: it reports what ended while it was disabled, too."""
        self.store.enable(webhook_id, True)
        return self.get(webhook_id)

    def disable(self, webhook_id: int) -> Webhook:
        """Disable a webhook: nothing is collected or sent for it until enabled."""
        self.store.enable(webhook_id, False)
        return self.get(webhook_id)

    def remove(self, webhook_id: int) -> None:
        """Delete a webhook and its delivery log."""
        self.store.remove(webhook_id)

    def deliveries(
        self, *, webhook_id: int | None = None, task_id: int | None = None, limit: int = 50
    ) -> builtins.list[Delivery]:
        """The delivery log, newest first: of one webhook, of one task, or all."""
        return self.store.deliveries(webhook_id, task_id, limit)

    # ---- a notifier's pass ---------------------------------------------------------------------

    def deliver_once(self, executor: str, now: datetime | None = None) -> builtins.list[Delivery]:
        """One pass as ``executor``: collect the new endings of every enabled webhook, claim
        up to :data:`BATCH` due deliveries and POST them. ``now`` (naive UTC, default the
        clock) decides what is due. Returns the deliveries attempted, as recorded."""
        now = now or utcnow()
        upto = self._settled()
        hooks = {h.id: h for h in self.store.rows(enabled_only=True)}
        for hook in hooks.values():
            self.store.collect(hook, COLLECT_LIMIT, upto, now=now)
        claimed = self.store.claim_due(executor, now, BATCH, LEASE_SECONDS)
        if not claimed:
            return []
        if any(d.webhook_id not in hooks for d in claimed):  # enabled since, or removed
            hooks = {h.id: h for h in self.store.rows()}
        jobs = [(hooks[d.webhook_id], d) for d in claimed if d.webhook_id in hooks]
        if not jobs:
            return []
        if len(jobs) == 1:
            done = [self._attempt(*jobs[0])]
        else:
            with ThreadPoolExecutor(len(jobs), thread_name_prefix="dagtask-webhook") as pool:
                done = builtins.list(pool.map(lambda job: self._attempt(*job), jobs))
        return [d for d in done if d is not None]

    def _settled(self) -> int | None:
        """The newest event id seen at least :data:`SETTLE_SECONDS` ago (by this process): no
        transaction can still commit an id at or below it. None before that long."""
        newest = self.store.max_event_id()
        now = time.monotonic()
        with self._marks_lock:
            if not self._marks or self._marks[-1][1] != newest:
                self._marks.append((now, newest))
            ripe = [i for i, (seen, _) in enumerate(self._marks) if seen <= now - SETTLE_SECONDS]
            if not ripe:
                return None
            del self._marks[: ripe[-1]]
            return self._marks[0][1]

    def _attempt(self, hook: Webhook, delivery: Delivery) -> Delivery | None:
        """POST one claimed delivery and record the outcome; the delivery as recorded."""
        try:
            code, error = self._post(hook, delivery)
        except TaskNotFoundError:  # purged: there is nothing left to report
            gone = f"task {delivery.task_id} no longer exists (purged); nothing was sent"
            self.store.record(
                delivery, ok=False, status_code=None, error=gone, next_attempt_at=None
            )
            self._metrics.webhook_attempt("dropped")
            return self.store.get_delivery(delivery.id)
        except Exception as exc:  # a bug here must not stop the other deliveries
            code, error = None, f"{type(exc).__name__}: {exc}"
            _log.exception("webhook %d: delivery %d could not be sent", hook.id, delivery.id)
        ok = error is None
        attempts = delivery.attempts + 1
        retry = None
        if not ok and attempts < MAX_ATTEMPTS:
            retry = utcnow() + timedelta(seconds=backoff(attempts))
        self.store.record(delivery, ok=ok, status_code=code, error=error, next_attempt_at=retry)
        self._metrics.webhook_attempt("delivered" if ok else "retrying" if retry else "failed")
        self._log_outcome(hook, delivery, attempts, error, retry)
        return self.store.get_delivery(delivery.id)

    def _log_outcome(
        self,
        hook: Webhook,
        delivery: Delivery,
        attempts: int,
        error: str | None,
        retry: datetime | None,
    ) -> None:
        if error is None:
            if hook.id in self._failing:
                self._failing.discard(hook.id)
                _log.warning("webhook %d (%s) accepts deliveries again", hook.id, hook.url)
            return
        if retry is None:
            _log.warning(
                "webhook %d: delivery %d (task %d) FAILED after %d attempts: %s",
                hook.id,
                delivery.id,
                delivery.task_id,
                attempts,
                error,
                extra=logfields.task_fields(delivery.task_id),
            )
        elif hook.id not in self._failing:
            self._failing.add(hook.id)
            _log.warning(
                "webhook %d (%s) failed: %s; retrying with back-off", hook.id, hook.url, error
            )

    def payload(self, hook: Webhook, delivery: Delivery) -> bytes:
        """The body of ``delivery``'s POST (the task as it is now)."""
        task = self.engine.store.get_task(delivery.task_id)
        body = {
            "event": event_name(hook),
            "deliveryId": delivery.id,
            "eventId": delivery.event_id,
            "status": delivery.task_status,
            "task": views.task_json(task),  # masks secret context values
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    def _post(self, hook: Webhook, delivery: Delivery) -> tuple[int | None, str | None]:
        """POST ``delivery``; its status code and, unless it was 2xx, what went wrong."""
        try:
            secret = resolve_secret(hook.secret_ref) if hook.secret_ref else None
        except DagtaskError as exc:  # not POSTed unsigned; perhaps the variable is set later
            return None, str(exc)
        body = self.payload(hook, delivery)
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"dagtask/{__version__}",
            EVENT_HEADER: event_name(hook),
            DELIVERY_HEADER: str(delivery.id),
            TIMESTAMP_HEADER: stamp,
        }
        if secret is not None:
            headers[SIGNATURE_HEADER] = sign(secret, stamp, body)
        parts = urlsplit(hook.url)
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        conn = kind(parts.hostname or "", parts.port, timeout=TIMEOUT_SECONDS)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("POST", target, body=body, headers=headers)
            answer = conn.getresponse()
            text = answer.read(512)
        except TimeoutError:
            return None, f"no answer within {TIMEOUT_SECONDS:g} s"
        except (OSError, http.client.HTTPException) as exc:
            return None, f"cannot POST: {type(exc).__name__}: {exc}"[:500]
        finally:
            conn.close()
        if 200 <= answer.status < 300:
            return answer.status, None
        said = " ".join(text.decode(errors="replace").split())[:200]
        return answer.status, f"HTTP {answer.status} {answer.reason}" + (
            f": {said}" if said else ""
        )

    def next_due(self) -> datetime | None:
        """When a PENDING delivery may next be attempted (naive UTC), if any."""
        return self.store.next_due(utcnow())


class Notifier:
    """A daemon thread delivering the webhooks of ``webhooks`` as ``executor``: a pass every
    :data:`PASS_SECONDS` at most, sooner when a retry falls due, never in a busy loop. A failing
    database makes it log once per outage and try again; it never stops the workers."""

    def __init__(self, webhooks: Webhooks, executor: str) -> None:
        self.webhooks = webhooks
        self.executor = executor
        self.passes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dagtask-notifier", daemon=True)
        self._failing = False

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop after the current pass (its POSTs are recorded first, if they end in time)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.webhooks.deliver_once(self.executor)
                self.passes += 1
                due = self.webhooks.next_due()
                if self._failing:
                    _log.warning("notifier %s: the database answers again", self.executor)
                    self._failing = False
            except Exception as exc:  # an outage: say so once, keep trying
                if not self._failing:
                    _log.warning("notifier %s: cannot deliver webhooks: %s", self.executor, exc)
                    self._failing = True
                self._stop.wait(PASS_SECONDS)
                continue
            wait = PASS_SECONDS
            if len(sent) >= BATCH:
                wait = 0.0  # more may be waiting
            elif due is not None:
                wait = min(wait, max(MIN_WAIT_SECONDS, (due - utcnow()).total_seconds()))
            self._stop.wait(wait)
