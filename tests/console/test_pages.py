"""The console over plain HTTP: sign-in, roles, CSRF, bad input, actions, logs and downloads.

What a browser test would take long to show: every refusal is one clear page with the right
status, and nothing was stored or changed by it.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dagtask import Engine, TemplateBuilder
from dagtask.states import SubtaskStatus, TaskStatus
from tests.api.support import PASSWORD, ApiServer, add_users, serve


@pytest.fixture
def site(tmp_path: Path) -> Iterator[ApiServer]:
    engine = Engine(f"sqlite:///{tmp_path}/console.db", workers=2, poll_interval=0.02)
    add_users(engine)
    with engine:
        engine.start()
        with serve(engine) as api:
            yield api


def browser(site: ApiServer, user: str | None = "admin") -> httpx.Client:
    """A client that keeps cookies, signed in as ``user`` (None: not signed in)."""
    client = httpx.Client(base_url=site.url, timeout=30.0, follow_redirects=False)
    site.clients.append(client)
    if user is not None:
        answer = client.post("/login", data={"username": user, "password": PASSWORD})
        assert answer.status_code == 303, answer.text
    return client


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, "the page has no CSRF token"
    return match.group(1)


def failed_task(engine: Engine, secret: str = "hunter2-secret") -> int:
    t = TemplateBuilder("console failing")
    first = t.add("first", "tests.handlers.record")
    t.add("second", "tests.handlers.record", after=[first])
    return engine.run(t.build(), args={"fail": "second", "db_password": secret}, timeout=30).id


def test_signing_in_and_out(site: ApiServer) -> None:
    anonymous = browser(site, None)
    answer = anonymous.get("/tasks?status=FAILED")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=/tasks%3Fstatus%3DFAILED"

    wrong = anonymous.post("/login", data={"username": "admin", "password": "nope"})
    assert wrong.status_code == 401
    assert "wrong user name or password" in wrong.text
    assert "dagtask_session" not in wrong.headers.get("set-cookie", "")

    # Back to where the user was going, never to another host.
    good = anonymous.post(
        "/login", data={"username": "admin", "password": PASSWORD, "next": "/tasks?x=1"}
    )
    assert good.headers["location"] == "/tasks?x=1"
    cookie = good.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    evil = browser(site, None).post(
        "/login", data={"username": "admin", "password": PASSWORD, "next": "//evil.example/"}
    )
    assert evil.headers["location"] == "/tasks"

    page = anonymous.get("/tasks")
    assert page.status_code == 200 and 'id="whoami">admin<' in page.text
    stolen = dict(anonymous.cookies)
    out = anonymous.post("/logout", data={"csrf": csrf_of(page)})
    assert out.status_code == 303
    # The signed-out session's cookie no longer works, even copied before the sign-out.
    replay = httpx.get(f"{site.url}/tasks", cookies=stolen, follow_redirects=False)
    assert replay.status_code == 303


def test_a_viewer_sees_no_actions_and_cannot_act(site: ApiServer) -> None:
    task_id = failed_task(site.engine)
    viewer = browser(site, "viewer")
    page = viewer.get(f"/tasks/{task_id}")
    assert page.status_code == 200
    assert "data-action=" not in page.text
    manager_page = browser(site, "manager").get(f"/tasks/{task_id}")
    assert 'data-action="retry"' in manager_page.text
    assert 'data-action="retry-subtask"' in manager_page.text

    refused = viewer.post(
        f"/tasks/{task_id}/actions", data={"action": "retry", "csrf": csrf_of(page)}
    )
    assert refused.status_code == 403
    assert "needs the TASK_MANAGER role" in refused.text
    assert site.engine.get(task_id).status is TaskStatus.FAILED


def test_an_action_needs_the_csrf_token(site: ApiServer) -> None:
    task_id = failed_task(site.engine)
    manager = browser(site, "manager")
    for token in ("", "forged"):
        answer = manager.post(f"/tasks/{task_id}/actions", data={"action": "retry", "csrf": token})
        assert answer.status_code == 403
        assert "CSRF" in answer.text
    # Another user's token does not fit this session either.
    other = csrf_of(browser(site, "admin").get("/tasks"))
    answer = manager.post(f"/tasks/{task_id}/actions", data={"action": "retry", "csrf": other})
    assert answer.status_code == 403
    events = len(site.engine.events(task_id))
    assert site.engine.get(task_id).status is TaskStatus.FAILED
    assert len(site.engine.events(task_id)) == events


def test_retry_from_the_page_and_a_refusal(site: ApiServer) -> None:
    engine = site.engine
    task_id = failed_task(engine)
    manager = browser(site, "manager")
    token = csrf_of(manager.get(f"/tasks/{task_id}"))
    sub = next(s for s in engine.get(task_id).subtasks if s.name == "first")
    # first is SUCCESSFUL: retrying it is refused with the engine's message (20003).
    refused = manager.post(
        f"/tasks/{task_id}/actions",
        data={"action": "retry-subtask", "subtask_id": str(sub.id), "csrf": token},
    )
    assert refused.status_code == 303
    shown = manager.get(refused.headers["location"])
    assert "error 20003" in shown.text and 'class="notice error"' in shown.text
    # The notice is shown once.
    assert "error 20003" not in manager.get(f"/tasks/{task_id}").text

    done = manager.post(f"/tasks/{task_id}/actions", data={"action": "retry", "csrf": token})
    assert done.status_code == 303
    assert "accepted" in manager.get(done.headers["location"]).text
    ended = engine.wait(task_id, timeout=30)
    assert ended.status is TaskStatus.FAILED  # it fails again: "fail" still names second
    retries = [a for a in engine.history(task_id).actions if a.operator == "manager"]
    assert [a.action.value for a in retries] == ["retry task"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=BOGUS", "status 'BOGUS' is not one of"),
        ("page=0", "page must be a whole number from 1 up"),
        ("size=7", "size must be one of 10, 20, 50, 100"),
        ("since=yesterday", "since 'yesterday' is not a time"),
        ("since=2026-02-01&until=2026-01-01", "since is after until"),
        ("host=abc", "host must be a whole number"),
    ],
)
def test_bad_filters_get_one_line(site: ApiServer, query: str, message: str) -> None:
    answer = browser(site).get(f"/tasks?{query}")
    assert answer.status_code == 400
    shown = re.search(r'id="error-message">([^<]*)<', answer.text)
    assert shown and message in shown.group(1).replace("&#39;", "'"), answer.text[:2000]
    assert "Traceback" not in answer.text


def test_filters_find_the_failed_task(site: ApiServer) -> None:
    engine = site.engine
    failed = failed_task(engine)
    t = TemplateBuilder("console fine")
    t.add("only", "tests.handlers.record")
    fine = engine.run(t.build(), timeout=30).id
    client = browser(site)
    rows = client.get("/tasks?status=FAILED").text
    assert f'data-task-id="{failed}"' in rows and f'data-task-id="{fine}"' not in rows
    by_name = client.get("/tasks?name=fine&fragment=rows")
    assert by_name.text.count("data-task-id=") == 1 and f'data-task-id="{fine}"' in by_name.text
    assert "<html" not in by_name.text  # the live fragment is the rows only
    assert client.get("/counts").json() == {"RUNNING": 0, "FAILED": 1}


def test_submit_a_template_with_bad_and_good_arguments(site: ApiServer) -> None:
    engine = site.engine
    t = TemplateBuilder("console submit")
    t.add("only", "tests.handlers.record")
    engine.register_template(t.build())
    manager = browser(site, "manager")
    form = manager.get("/templates/console%20submit")
    assert 'id="submit-form"' in form.text
    before = engine.list(size=1).total_elements
    bad = manager.post(
        "/templates/console%20submit", data={"args": "no equals sign", "csrf": csrf_of(form)}
    )
    assert bad.status_code == 400
    assert "arguments, line 1: 'no equals sign' is not key=value" in bad.text.replace("&#39;", "'")
    assert engine.list(size=1).total_elements == before
    good = manager.post(
        "/templates/console%20submit",
        data={"args": "region=east\n# a comment\n", "lists": "zones=a, b", "csrf": csrf_of(form)},
    )
    assert good.status_code == 303
    task_id = int(good.headers["location"].rsplit("/", 1)[1])
    task = engine.wait(task_id, timeout=30)
    assert task.creator == "manager"
    assert task.context.string_map["region"] == "east"
    assert task.context.list_map["zones"] == ["a", "b"]
    # A viewer gets the template's page without the form, and cannot post it.
    viewer = browser(site, "viewer")
    page = viewer.get("/templates/console%20submit")
    assert 'id="submit-form"' not in page.text
    posted = viewer.post("/templates/console%20submit", data={"csrf": csrf_of(page)})
    assert posted.status_code == 403


def test_logs_per_attempt_and_the_diagnosis_download(site: ApiServer) -> None:
    engine = site.engine
    t = TemplateBuilder("console flaky")
    t.add("wobbly", "tests.handlers.flaky", retry_count=1)
    task = engine.run(t.build(), args={"fail_times": "1", "api_token": "tok-abcdef"}, timeout=30)
    sub = task.subtasks[0]
    assert sub.status is SubtaskStatus.SUCCESSFUL and sub.run_time == 2
    client = browser(site)
    first = client.get(f"/tasks/{task.id}/subtasks/{sub.id}/log?attempt=1").text
    second = client.get(f"/tasks/{task.id}/subtasks/{sub.id}/log?attempt=2").text
    assert "attempt 1 fails on purpose" in first
    assert "attempt 1 fails on purpose" not in second
    assert "data-stream" not in second  # an ended attempt is not followed
    bad = client.get(f"/tasks/{task.id}/subtasks/{sub.id}/log?attempt=9")
    assert bad.status_code == 400 and "has attempts 1 to 2, not 9" in bad.text
    missing = client.get(f"/tasks/{task.id}/subtasks/999999/log")
    assert missing.status_code == 404 and "error 20000" in missing.text

    stream = client.get(f"/tasks/{task.id}/subtasks/{sub.id}/log/stream?attempt=1")
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert "event: reset" in stream.text and stream.text.rstrip().endswith("event: end\ndata:")

    archive = client.get(f"/tasks/{task.id}/diagnosis.zip")
    assert archive.status_code == 200
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        names = z.namelist()
        assert {"task.json", "history.txt"} <= set(names)
        logs = sorted(n for n in names if n.startswith("logs/"))
        assert logs == [f"logs/{sub.id}-wobbly/attempt-{n}.log" for n in (1, 2)]
        everything = b"".join(z.read(n) for n in names)
    assert b"tok-abcdef" not in everything and b"******" in everything


def test_unknown_things_are_404_pages(site: ApiServer) -> None:
    client = browser(site)
    answer = client.get("/tasks/424242")
    assert answer.status_code == 404 and "error 20000" in answer.text
    assert client.get("/templates/no%20such").status_code == 404
    assert client.get("/assets/../pyproject.toml").status_code == 404
    assert client.get("/assets/console.js").headers["content-type"].startswith("text/javascript")
    # The REST API is untouched beside the console.
    api = httpx.get(f"{site.url}/api/v2/tasks/instances", auth=("admin", PASSWORD))
    assert api.status_code == 200
