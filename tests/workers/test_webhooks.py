"""Webhooks against a real HTTP server on loopback: one POST per ending, retried while the
server answers 500 or is down (with growing back-off), a signature the receiver can verify, the
failed-only and template filters, several notifiers at once, an ending committed after a later
one, and nothing lost when the `dagtask worker` that should deliver is SIGKILLed."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa

from dagtask import Engine, TaskTemplate, TemplateBuilder
from dagtask import webhooks as hooks_module
from dagtask.cli.main import main
from dagtask.clock import utcnow
from dagtask.errors import ArgumentError
from dagtask.store.schema import task_event
from dagtask.webhooks import Delivery, Webhook
from tests.workers.conftest import ROOT, Workers, wait_for

SECRET_VAR = "DAGTASK_TEST_WEBHOOK_SECRET"
SECRET = "correct horse battery staple"


@dataclass(frozen=True)
class Request:
    """One POST the receiver got."""

    at: float
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.body)
        return data


class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1 recording every POST. It answers the statuses in
    ``script`` one by one, then ``status``; :meth:`down` closes its socket (connections are
    refused) and :meth:`up` listens on the same port again."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script: list[int] = []
        self.status = 200
        self.port = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?from=dagtask"

    def _answer(self) -> int:
        with self._lock:
            return self.script.pop(0) if self.script else self.status

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.requests.append(
                        Request(time.monotonic(), dict(self.headers.items()), body)
                    )
                status = receiver._answer()
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"no")

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def got(self) -> list[Request]:
        with self._lock:
            return list(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.down()


@pytest.fixture(autouse=True)
def _quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries 0.1, 0.2, 0.4 ... s apart in this process (worker processes keep 1, 2, 4 ...)."""
    monkeypatch.setattr(hooks_module, "BACKOFF_SECONDS", 0.1)


def _template(name: str = "webhook job") -> TaskTemplate:
    t = TemplateBuilder(name)
    t.add("only", "tests.handlers.record")
    return t.build()


def _run(engine: Engine, template: TaskTemplate, *, fail: bool = False) -> int:
    args = {"password": "hunter2-do-not-send"}
    if fail:
        args["fail"] = "only"
    return engine.run(template, args=args, timeout=60).id


def _log(engine: Engine, hook: Webhook) -> list[Delivery]:
    return engine.webhooks.deliveries(webhook_id=hook.id, limit=1000)


def _settled(engine: Engine, hook: Webhook, count: int, timeout: float = 60) -> list[Delivery]:
    """Wait until ``hook`` has ``count`` deliveries, all DELIVERED; return them, oldest first."""
    wait_for(
        lambda: [d.state for d in _log(engine, hook)] == ["DELIVERED"] * count,
        f"{count} deliveries of webhook {hook.id}",
        timeout=timeout,
    )
    return sorted(_log(engine, hook), key=lambda d: d.id)


def _passes_until(engine: Engine, condition: Callable[[], bool], what: str) -> None:
    """Run notifier passes in this thread until ``condition`` holds."""

    def one_pass() -> bool:
        engine.webhooks.deliver_once("test")
        return condition()

    wait_for(one_pass, what, timeout=30)


def _no_more(engine: Engine, receiver: Receiver, count: int) -> None:
    """With the engine's notifier stopped, further passes send nothing."""
    engine.stop()
    for _ in range(3):
        assert engine.webhooks.deliver_once("check") == []
    assert len(receiver.got()) == count


# ---- what is sent --------------------------------------------------------------------------------


def test_each_ending_is_posted_once_signed_with_the_task_json(
    db_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_VAR, SECRET)
    with Engine(db_url, workers=2, poll_interval=0.02) as engine:
        hook = engine.webhooks.add(receiver.url, secret_ref=f"env:{SECRET_VAR}")
        engine.start()
        ok_id = _run(engine, _template())
        failed_id = _run(engine, _template(), fail=True)
        log = _settled(engine, hook, 2)
        _no_more(engine, receiver, 2)
    assert [(d.task_id, d.task_status, d.attempts) for d in log] == [
        (ok_id, "SUCCESSFUL", 1),
        (failed_id, "FAILED", 1),
    ]
    posts = sorted(receiver.got(), key=lambda r: int(r.headers["X-Dagtask-Delivery"]))
    for delivery, post in zip(log, posts, strict=True):
        stamp = post.headers["X-Dagtask-Timestamp"]
        expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + post.body, hashlib.sha256)
        assert hmac.compare_digest(
            post.headers["X-Dagtask-Signature"], "sha256=" + expected.hexdigest()
        )
        assert abs(int(stamp) - time.time()) < 120
        assert post.headers["Content-Type"] == "application/json"
        assert post.headers["User-Agent"].startswith("dagtask/")
        assert post.headers["X-Dagtask-Event"] == "task.ended"
        body = post.json()
        assert body["event"] == "task.ended" and body["deliveryId"] == delivery.id
        assert body["eventId"] == delivery.event_id and body["status"] == delivery.task_status
        task = body["task"]
        assert isinstance(task, dict)
        assert task["id"] == delivery.task_id and task["status"] == delivery.task_status
        assert task["name"] == "webhook job" and task["subtasks"][0]["name"] == "only"
        assert b"hunter2" not in post.body  # the secret context value is masked


def test_a_failed_only_webhook_and_a_template_filter(db_url: str, receiver: Receiver) -> None:
    other = _template("other job")
    with Engine(db_url, workers=2, poll_interval=0.02) as engine:
        engine.register_template(other)
        failures = engine.webhooks.add(receiver.url, events="failed")
        of_other = engine.webhooks.add(receiver.url, template="other-job")  # the slug works
        assert of_other.template == "other job" and failures.events == "failed"
        engine.start()
        _run(engine, _template())
        failed_id = _run(engine, _template(), fail=True)
        other_id = _run(engine, other)
        [failure] = _settled(engine, failures, 1)
        [ending] = _settled(engine, of_other, 1)
        _no_more(engine, receiver, 2)
    assert (failure.task_id, failure.task_status) == (failed_id, "FAILED")
    assert (ending.task_id, ending.task_status) == (other_id, "SUCCESSFUL")
    events = {r.json()["deliveryId"]: r.headers["X-Dagtask-Event"] for r in receiver.got()}
    assert events == {failure.id: "task.failed", ending.id: "task.ended"}
    assert "X-Dagtask-Signature" not in receiver.got()[0].headers  # no secret: unsigned


# ---- retries -------------------------------------------------------------------------------------


def test_500_twice_then_200_is_delivered_on_the_third_attempt(
    db_url: str, receiver: Receiver
) -> None:
    receiver.script = [500, 500]
    with Engine(db_url, workers=2, poll_interval=0.02) as engine:
        hook = engine.webhooks.add(receiver.url)
        engine.start()
        task_id = _run(engine, _template())
        [delivery] = _settled(engine, hook, 1)
        _no_more(engine, receiver, 3)
    assert (delivery.task_id, delivery.attempts, delivery.last_status_code) == (task_id, 3, 200)
    assert delivery.last_error is None and delivery.delivered_at is not None
    posts = receiver.got()
    assert {r.headers["X-Dagtask-Delivery"] for r in posts} == {str(delivery.id)}
    assert len({r.body for r in posts}) == 1  # the same body on every attempt
    # After the n-th failure the next attempt waits 0.1 * 2**(n-1) s: 0.1, then 0.2.
    first_gap, second_gap = posts[1].at - posts[0].at, posts[2].at - posts[1].at
    assert first_gap >= 0.09 and second_gap >= 0.19, (first_gap, second_gap)


def test_a_server_that_is_down_is_retried_until_it_is_up(db_url: str, receiver: Receiver) -> None:
    receiver.down()
    with Engine(db_url, workers=2, poll_interval=0.02) as engine:
        hook = engine.webhooks.add(receiver.url)
        engine.start()
        _run(engine, _template(), fail=True)
        wait_for(lambda: [d.attempts >= 2 for d in _log(engine, hook)] == [True], "2 attempts")
        [pending] = _log(engine, hook)
        assert pending.state == "PENDING" and pending.last_status_code is None
        assert "cannot POST" in (pending.last_error or ""), pending.last_error
        receiver.up()
        [delivery] = _settled(engine, hook, 1)
        _no_more(engine, receiver, 1)
    assert delivery.attempts > pending.attempts and delivery.last_status_code == 200


def test_the_last_attempt_fails_the_delivery(
    sqlite_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hooks_module, "MAX_ATTEMPTS", 3)
    receiver.status = 503
    with Engine(sqlite_url, workers=2, poll_interval=0.02) as engine:
        hook = engine.webhooks.add(receiver.url)
        engine.start()
        _run(engine, _template())
        wait_for(lambda: [d.state for d in _log(engine, hook)] == ["FAILED"], "FAILED")
        _no_more(engine, receiver, 3)
        [delivery] = _log(engine, hook)
    assert (delivery.attempts, delivery.last_status_code) == (3, 503)
    assert delivery.last_error == "HTTP 503 Service Unavailable: no"


# ---- once, and nothing lost ----------------------------------------------------------------------


def test_two_notifiers_post_each_ending_once(db_url: str, receiver: Receiver) -> None:
    engines = [Engine(db_url, workers=2, poll_interval=0.02, name=f"n{i}") for i in range(2)]
    try:
        hook = engines[0].webhooks.add(receiver.url)
        for eng in engines:
            eng.start()
        template = _template()
        ids = [engines[0].submit_id(template, args={"n": str(i)}) for i in range(12)]
        for task_id in ids:
            engines[0].wait(task_id, timeout=60)
        log = _settled(engines[0], hook, len(ids))
        for eng in engines:
            eng.stop()
        assert engines[1].webhooks.deliver_once("check") == []
    finally:
        for eng in engines:
            eng.close()
    assert sorted(d.task_id for d in log) == sorted(ids)
    assert all(d.attempts == 1 for d in log)
    posted = [r.headers["X-Dagtask-Delivery"] for r in receiver.got()]
    assert sorted(posted) == sorted(str(d.id) for d in log)  # each once


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
def test_an_ending_committed_after_a_later_one_is_not_skipped(
    server: str, request: pytest.FixtureRequest, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Event ids are taken at insert, not at commit: an ending whose transaction commits after
    a later ending's is still delivered (the cursor waits for ids to settle)."""
    monkeypatch.setattr(hooks_module, "SETTLE_SECONDS", 1.0)
    url = str(request.getfixturevalue("pg_url" if server == "postgres" else "mysql_url"))
    with Engine(url, workers=0) as engine:
        hook = engine.webhooks.add(receiver.url)
        first, second = (engine.submit_id(_template()) for _ in range(2))

        def ending(task_id: int) -> dict[str, object]:
            return {
                "task_id": task_id,
                "time": utcnow(),
                "kind": "TASK_STATUS",
                "old_status": "RUNNING",
                "new_status": "FAILED",
                "old_operation": "EXECUTE",
                "new_operation": "EXECUTE",
            }

        with engine.database.engine.connect() as slow:
            held = slow.begin()
            slow.execute(sa.insert(task_event).values(ending(first)))  # its id, not committed
            with engine.database.begin() as conn:
                conn.execute(sa.insert(task_event).values(ending(second)))
            _passes_until(engine, lambda: len(_log(engine, hook)) == 1, "the later ending")
            # Passes while the earlier ending is still uncommitted (for less than SETTLE_SECONDS).
            until = time.monotonic() + 0.3
            while time.monotonic() < until:
                engine.webhooks.deliver_once("t")
            held.commit()
        _passes_until(engine, lambda: len(_log(engine, hook)) == 2, "the earlier ending")
        newest = max(d.event_id for d in _log(engine, hook))
        # Once both have settled the cursor moves past them, and nothing is collected twice.
        _passes_until(
            engine, lambda: engine.webhooks.get(hook.id).after_event_id >= newest, "the cursor"
        )
        assert [d.state for d in _log(engine, hook)] == ["DELIVERED"] * 2
    assert sorted(d.task_id for d in _log(engine, hook)) == sorted([first, second])
    assert len(receiver.got()) == 2


@pytest.mark.slow
def test_nothing_is_lost_when_the_delivering_worker_is_killed(
    db_url: str, receiver: Receiver, workers_on: Callable[[str], Workers]
) -> None:
    """A `dagtask worker` runs a task to its end while the receiver is down, tries to deliver,
    and is SIGKILLed; the receiver comes up and a new worker delivers the ending once."""
    receiver.down()
    with Engine(db_url, workers=0) as engine:
        hook = engine.webhooks.add(receiver.url)
        workers = workers_on(db_url)
        workers.start("a")
        workers.wait_registered(engine, ["a"])
        task_id = engine.submit_id(_template())
        assert engine.wait(task_id, timeout=60).status.value == "SUCCESSFUL"
        wait_for(lambda: [d.attempts >= 1 for d in _log(engine, hook)] == [True], "an attempt")
        workers.kill("a")
        [pending] = _log(engine, hook)
        assert pending.state == "PENDING" and "cannot POST" in (pending.last_error or "")
        receiver.up()
        workers.start("b")
        # Within the lease if "a" died holding a claim; at its next back-off time otherwise.
        [delivery] = _settled(engine, hook, 1, timeout=hooks_module.LEASE_SECONDS + 60)
        workers.stop_all()
    assert delivery.task_id == task_id
    assert [r.json()["deliveryId"] for r in receiver.got()] == [delivery.id]


# ---- checked when added; the CLI -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://example.com/x"}, "not an http:// or https:// URL"),
        ({"url": "http:///nohost"}, "with a host"),
        ({"url": "https://user:pw@example.com/"}, "may not carry a user or password"),
        ({"url": "http://example.com:99999/"}, "Port out of range"),
        ({"events": "started"}, "use ended or failed"),
        ({"secret_ref": "hunter2"}, "the value given was not shown"),
        ({"secret_ref": "env:DAGTASK_TEST_UNSET_VARIABLE"}, "not set"),
        ({"secret_ref": "file:/nonexistent/secret"}, "cannot read the webhook secret file"),
    ],
)
def test_a_bad_webhook_is_refused_and_nothing_stored(
    sqlite_url: str, kwargs: dict[str, str], message: str
) -> None:
    with Engine(sqlite_url, workers=0) as engine:
        url = kwargs.pop("url", "https://example.com/hook")
        with pytest.raises(ArgumentError) as caught:
            engine.webhooks.add(url, **kwargs)
        assert message in str(caught.value) and "\n" not in str(caught.value)
        assert "hunter2" not in str(caught.value)
        assert engine.webhooks.list() == []


def test_the_cli_refuses_a_bad_url_with_one_line(sqlite_url: str) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "dagtask", "--db", sqlite_url, "webhooks", "add", "not-a-url"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "not an http:// or https:// URL" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_cli_adds_lists_shows_the_log_and_removes(
    sqlite_url: str, receiver: Receiver, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def dt(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--db", sqlite_url, "webhooks", *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, _, err = dt("add", receiver.url, "--secret-ref", f"file:{tmp_path}/missing")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot read" in err, err
    (tmp_path / "secret").write_text("s3cret\n")
    code, out, err = dt("add", receiver.url, "--secret-ref", f"file:{tmp_path}/secret", "--json")
    assert code == 0, err
    hook_id = json.loads(out)["id"]
    code, out, _ = dt("list")
    assert code == 0 and receiver.url in out and f"file:{tmp_path}/secret" in out
    receiver.script = [500]
    with Engine(sqlite_url, workers=2, poll_interval=0.02) as engine:
        engine.start()
        _run(engine, _template(), fail=True)
        _settled(engine, engine.webhooks.get(hook_id), 1)
    post = receiver.got()[-1]
    stamp = post.headers["X-Dagtask-Timestamp"]
    assert post.headers["X-Dagtask-Signature"] == hooks_module.sign(b"s3cret", stamp, post.body)
    code, out, _ = dt("deliveries", "--webhook", str(hook_id))
    header, row = out.splitlines()
    assert header.split()[:6] == ["ID", "WEBHOOK", "TASK", "STATUS", "STATE", "ATTEMPTS"]
    assert row.split()[3:7] == ["FAILED", "DELIVERED", "2", "200"], row
    code, out, _ = dt("deliveries", "--json")
    assert [(d["attempts"], d["state"]) for d in json.loads(out)] == [(2, "DELIVERED")]
    assert dt("remove", str(hook_id))[0] == 0
    assert "no webhooks yet" in dt("list")[1]
    code, _, err = dt("remove", str(hook_id))
    assert code == 4 and f"no webhook {hook_id}" in err and len(err.strip().splitlines()) == 1
