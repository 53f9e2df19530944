"""The "Rotate agent logs" template, built in Python (rotate_logs.yaml is the same in YAML)."""

from __future__ import annotations

from dagtask import TaskTemplate, TemplateBuilder
from examples.rotate_logs import ops

NAME = "Rotate agent logs"
PREPARE = "Prepare rotate agent logs"
ROTATE = "Rotate agent log files"
FINISH = "Finish rotate agent logs"


def rotate_logs_template() -> TaskTemplate:
    """Prepare (60 s) -> Rotate (300 s, 2 automatic retries) -> Finish (60 s)."""
    t = TemplateBuilder(
        NAME,
        # The engine then checks the host exists before it stores the task, and records it as
        # the task's hostId.
        host_arg=ops.HOST_ID,
        description="Rotate the OCP agent logs of one host (stringMap.host_id)",
    )
    # Passing the classes (not strings) lets the builder derive their dotted paths, e.g.
    # examples.rotate_logs.ops.RotateAgentLogs, which is what the task stores as className.
    t.add(PREPARE, ops.PrepareRotateLogs, timeout=60)
    # A rotation can meet a transient error (a file briefly locked, a full disk being cleaned);
    # a retry first rolls back what the failed attempt did, so retrying is safe.
    t.add(ROTATE, ops.RotateAgentLogs, timeout=300, retry_count=2, after=[PREPARE])
    t.add(FINISH, ops.FinishRotateLogs, timeout=60, after=[ROTATE])
    return t.build()
