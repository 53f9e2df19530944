"""Host operations written the way a user writes one: handlers that use ``ctx.host()``."""

from __future__ import annotations

import tempfile
from pathlib import Path

from dagtask import TaskTemplate, TemplateBuilder
from dagtask.handlers import HandlerResult, RunContext

SLEEP_MARK = "987.801"
"""A sleep length no other process on the machine uses: its processes are found by it."""


def remote_sleep(ctx: RunContext) -> HandlerResult:
    """Sleep on the host, with a child that ignores SIGTERM; only a group SIGKILL ends both."""
    ctx.host().run(f"(trap '' TERM; sleep {SLEEP_MARK}) & sleep {SLEEP_MARK}")
    return None


def remote_sleep_template(name: str, timeout: int) -> TaskTemplate:
    """One step on ``stringMap.host_id`` that runs :func:`remote_sleep` with ``timeout``."""
    t = TemplateBuilder(name, host_arg="host_id")
    t.add("Sleep there", remote_sleep, timeout=timeout)
    return t.build()


def remote_files(ctx: RunContext) -> HandlerResult:
    """Upload a file, run a command that reads it with env and stdin, download the result,
    check a process: every HostShell call, on whatever host ``host_id`` names."""
    host = ctx.host()
    folder = ctx.string_map["folder"]
    host.upload(b"hello from the worker\n", f"{folder}/in.txt", mode=0o600)
    result = host.run(
        [
            "sh",
            "-c",
            'cat "$1" - > "$1.out"; echo "$GREETING"; echo oops >&2',
            "sh",
            f"{folder}/in.txt",
        ],
        input="and from stdin\n",
        env={"GREETING": "hi there"},
    )
    local = Path(tempfile.mkdtemp()) / "out.txt"
    host.download(f"{folder}/in.txt.out", local)
    return {
        "stdout": result.stdout.strip(),
        "stderr": result.stderr.strip(),
        "downloaded": local.read_text(),
        "init_alive": str(host.process_alive(1)),
        "missing_alive": str(host.process_alive(2**22 + 12345)),
    }
