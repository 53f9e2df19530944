"""The console in a real browser (headless chromium, offline), as an operator uses it.

Each test leaves screenshots of what it saw (``$DAGTASK_SCREENSHOTS``, else pytest's tmp dir);
``docs/console.md`` shows the ones made with ``DAGTASK_SCREENSHOTS=docs/img``.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from dagtask import Engine, TemplateBuilder
from dagtask.states import TaskStatus
from tests.api.support import ApiServer
from tests.console.browser import PageProblems, screenshot, sign_in

WAIT_MS = 20_000


def _failing_deploy(engine: Engine) -> int:
    """A task whose ``install`` fails once; a retry of the task makes it green."""
    t = TemplateBuilder("Deploy cluster")
    prepare = t.add("prepare", "tests.handlers.record")
    install = t.add("install", "tests.handlers.flaky", after=[prepare])
    configure = t.add("configure", "tests.handlers.record", after=[prepare])
    t.add("verify", "tests.handlers.record", after=[install, configure])
    task = engine.run(t.build(), args={"fail_times": "1", "db_password": "hunter2-x"}, timeout=30)
    assert task.status is TaskStatus.FAILED
    return task.id


def _green(engine: Engine, name: str = "Rotate certificates") -> int:
    t = TemplateBuilder(name)
    t.add("only", "tests.handlers.record")
    return engine.run(t.build(), timeout=30).id


def test_find_a_failed_task_read_its_log_retry_it_and_watch_it_go_green(
    page: Page, console: ApiServer, problems: PageProblems
) -> None:
    engine = console.engine
    for n in range(3):
        _green(engine, f"Rotate certificates {n}")
    failed = _failing_deploy(engine)
    sign_in(page, console.url, "manager")
    expect(page.locator('#counts [data-count="FAILED"] b')).to_have_text("1")

    # Filter the list down to the failed task: the filter stays in the URL.
    page.select_option("#filters select[name=status]", "FAILED")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r"/tasks\?status=FAILED"))
    rows = page.locator("#tasks tbody tr[data-task-id]")
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".c-status")).to_have_text("FAILED")
    screenshot(page, "console-tasks-failed")

    rows.first.locator(".c-name a").click()
    page.wait_for_url(f"**/tasks/{failed}")
    expect(page.locator("#task-status")).to_have_text("FAILED")
    install = page.locator('#subtasks tr[data-name="install"]')
    expect(install.locator(".c-status")).to_have_text("FAILED")
    expect(page.locator('#dag g.node[data-status="FAILED"]')).to_have_count(1)
    expect(page.locator("#context")).to_contain_text("******")
    expect(page.locator("#context")).not_to_contain_text("hunter2-x")
    screenshot(page, "console-task-failed")

    # The failed step's log.
    install.locator("a.log-link").first.click()
    expect(page.locator("pre#log")).to_contain_text("attempt 1 fails on purpose")
    expect(page.locator("#failure")).to_contain_text("attempt 1 fails on purpose")
    screenshot(page, "console-log-failed")
    page.go_back()

    # Retry the task: it asks first, then shows the result, then the task goes green live.
    page.click('button[data-action="retry"]')
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(f"Retry task {failed}")
    page.click("#confirm-yes")
    expect(page.locator("#notice")).to_contain_text("accepted")
    expect(page.locator("#task-status")).to_have_text("SUCCESSFUL", timeout=WAIT_MS)
    expect(page.locator('#subtasks tr[data-name="install"] .c-attempt a')).to_have_count(2)
    expect(page.locator('button[data-action="retry"]')).to_have_count(0)
    expect(page.locator("#history .operator-action")).to_contain_text("manager retry task")
    screenshot(page, "console-task-retried")
    problems.assert_clean()


def test_a_viewer_sees_no_action_buttons(
    page: Page, console: ApiServer, problems: PageProblems
) -> None:
    failed = _failing_deploy(console.engine)
    sign_in(page, console.url, "viewer")
    page.goto(f"{console.url}/tasks/{failed}")
    expect(page.locator("#task-status")).to_have_text("FAILED")
    expect(page.locator("button[data-action]")).to_have_count(0)
    expect(page.locator("#download-logs")).to_be_visible()
    page.goto(f"{console.url}/templates")
    page.locator("#templates a", has_text="Stop OCP agent").first.click()
    expect(page.locator("#dag svg")).to_be_visible()
    expect(page.locator("#submit-form")).to_have_count(0)
    problems.assert_clean()


def test_the_rollback_plan_and_a_refused_rollback(
    page: Page, console: ApiServer, problems: PageProblems
) -> None:
    engine = console.engine
    t = TemplateBuilder("Migrate tenant")
    copy = t.add("copy data", "tests.handlers.record", prohibit_rollback=True)
    t.add("switch", "tests.handlers.record", after=[copy])
    task = engine.run(t.build(), args={"fail": "switch"}, timeout=30)
    sign_in(page, console.url, "manager")
    page.goto(f"{console.url}/tasks/{task.id}")
    page.click('button[data-action="rollback"]')
    plan = page.locator("dialog#confirm .plan")
    expect(plan).to_be_visible()
    expect(plan.locator(".refusal")).to_contain_text("marked prohibit_rollback")
    expect(plan.locator("ol.waves > li")).to_have_count(2)
    screenshot(page, "console-rollback-plan")
    page.click("#confirm-yes")
    expect(page.locator("#notice")).to_contain_text("error 20004")
    expect(page.locator("#task-status")).to_have_text("FAILED")
    assert engine.get(task.id).status is TaskStatus.FAILED

    # A rollback that is allowed: cancelled first, nothing changes; confirmed, it rolls back.
    allowed = _failing_deploy(engine)
    page.goto(f"{console.url}/tasks/{allowed}")
    page.click('button[data-action="rollback"]')
    expect(page.locator("dialog#confirm .plan .refusal")).to_have_count(0)
    page.click("#confirm-no")
    expect(page.locator("dialog#confirm")).to_be_hidden()
    assert engine.get(allowed).operation.value == "EXECUTE"
    page.click('button[data-action="rollback"]')
    page.click("#confirm-yes")
    expect(page.locator("#notice")).to_contain_text("accepted")
    expect(page.locator("#task-head dd").first).to_have_text("ROLLBACK", timeout=WAIT_MS)
    problems.assert_clean()


def test_a_log_follows_a_running_subtask(
    page: Page, console: ApiServer, problems: PageProblems
) -> None:
    engine = console.engine
    t = TemplateBuilder("Slow logger")
    t.add("talk", "tests.handlers.log_lines")
    task = engine.submit(t.build(), args={"lines": "60", "gap_ms": "50"})
    sid = task.subtasks[0].id
    sign_in(page, console.url, "viewer")
    page.goto(f"{console.url}/tasks/{task.id}/subtasks/{sid}/log")
    log = page.locator("pre#log")
    expect(page.locator("#log-state")).to_contain_text("following")
    # Lines arrive without a reload while the handler writes them...
    expect(log).to_contain_text("line 020", timeout=WAIT_MS)
    assert "line 059" not in log.inner_text()
    screenshot(page, "console-log-following")
    # ...and at the end the page shows the attempt's result.
    expect(log).to_contain_text("line 059", timeout=WAIT_MS)
    expect(page.locator("h1 .status")).to_have_text("SUCCESSFUL", timeout=WAIT_MS)
    assert log.inner_text().count("line 030") == 1
    problems.assert_clean()


def test_the_dag_of_a_300_subtask_task(
    page: Page, console: ApiServer, problems: PageProblems
) -> None:
    engine = console.engine
    t = TemplateBuilder("Batch upgrade")
    plan = t.add("plan", "tests.handlers.record")
    work = t.add("upgrade host", "tests.handlers.record", after=[plan], split_key="hosts")
    t.add("report", "tests.handlers.record", after=[work])
    hosts = [f"h{i}" for i in range(298)]
    task = engine.run(t.build(), lists={"hosts": hosts}, args={"fail": ""}, timeout=120)
    assert len(task.subtasks) == 300
    sign_in(page, console.url, "viewer")
    page.goto(f"{console.url}/tasks/{task.id}")
    group = page.locator('#dag g.node[data-group="upgrade host"]')
    expect(group).to_have_count(1)
    expect(group).to_contain_text("\u00d7298")  # the multiplication sign
    expect(page.locator("#subtasks tr[data-subtask-id]")).to_have_count(300)
    screenshot(page, "console-dag-300")
    group.click()
    page.wait_for_url(re.compile(r"expand="))
    expect(page.locator("#dag g.node")).to_have_count(300)
    box = page.locator("#dag svg").bounding_box()
    assert box is not None and box["height"] < 2000, box
    screenshot(page, "console-dag-300-expanded")
    problems.assert_clean()


def test_workers_hosts_and_templates_pages(
    page: Page, console: ApiServer, problems: PageProblems
) -> None:
    engine = console.engine
    engine.hosts.add("web-1", "127.0.0.1", "/home/admin/ocp_agent")
    _green(engine)
    sign_in(page, console.url, "admin")
    page.click("nav >> text=Workers")
    row = page.locator("#workers tr[data-worker]").first
    expect(row).to_have_attribute("data-status", "ACTIVE")
    expect(row.locator(".c-heartbeat")).to_contain_text("ago")
    screenshot(page, "console-workers")
    page.click("nav >> text=Hosts")
    expect(page.locator("#hosts tr[data-host-id] .c-name")).to_have_text("web-1")
    page.click("nav >> text=Templates")
    page.locator("#templates a", has_text="Rotate certificates").click()
    page.fill("#submit-form textarea[name=args]", "region=east")
    page.click("#submit-form button[type=submit]")
    page.click("#confirm-yes")
    expect(page.locator("#notice")).to_contain_text("submitted")
    expect(page.locator("#task-status")).to_have_text("SUCCESSFUL", timeout=WAIT_MS)
    expect(page.locator("#context")).to_contain_text("east")
    problems.assert_clean()


def test_keyboard_reaches_the_list_and_the_actions(page: Page, console: ApiServer) -> None:
    failed = _failing_deploy(console.engine)
    sign_in(page, console.url, "manager")
    page.goto(f"{console.url}/tasks/{failed}")
    seen: list[str] = []
    for _ in range(40):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.dataset.action || ''"))
        if "retry" in seen:
            break
    assert "retry" in seen, seen
    page.keyboard.press("Enter")
    expect(page.locator("dialog#confirm")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("dialog#confirm")).to_be_hidden()
    assert console.engine.get(failed).status is TaskStatus.FAILED
