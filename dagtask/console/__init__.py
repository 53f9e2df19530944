"""The operator console: OCP's Task Center as web pages, served by ``dagtask serve`` at ``/``.

Server-rendered HTML (Jinja2 templates in ``console/templates``) with one small hand-written
script (``console/static/console.js``) for live refreshes, confirmations and following a log; no
build step and nothing loaded from another host. Every page reads and acts through the
:class:`~dagtask.Engine`'s public API; which actions a page offers comes from the same pure rules
the engine enforces (:mod:`dagtask.planner`), so a button is shown exactly when the action would
be accepted, and a refusal that races with another operator still shows the engine's message.

Sign-in uses the REST API's users and roles (:mod:`dagtask.console.session`): TASK_VIEWER
reads; TASK_MANAGER reads too, acts on tasks and subtasks and submits templates; HOST_MANAGER
submits host operations; ADMIN does everything. ``docs/console.md`` shows the pages.

Mount it with :func:`dagtask.api.create_app` (which includes it), or on an app of your own::

    app.include_router(create_console_router(engine, authenticator))
"""

from __future__ import annotations

from dagtask.console.pages import STATIC_DIR, create_console_router

__all__ = ["STATIC_DIR", "create_console_router"]
