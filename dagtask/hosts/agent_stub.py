"""A stand-in OCP agent daemon: ``python -m dagtask.hosts.agent_stub --home HOME --name NAME``.

It writes its pid to ``HOME/run/NAME.pid`` once its signal handlers are in place (so whoever
started it knows a SIGTERM will now be handled), then sleeps until a signal ends it. SIGTERM makes
it exit 0, unless ``--ignore-sigterm`` is given: then only SIGKILL stops it. It imports nothing
but the standard library so that it starts fast; the local connector runs it by file path
(``python -P .../agent_stub.py``) so that not even the dagtask package is imported.

To simulate an agent that cannot start (tests, demos), create the file ``HOME/FAIL_START``: while
it exists every agent process of that home exits with status 1 at start, before writing its pid
file, and its last log line says why. Remove the file and the agent starts again::

    touch /path/to/agent_home/FAIL_START     # the next start of this agent fails
    rm /path/to/agent_home/FAIL_START        # and now it works again

``HOME/IGNORE_SIGTERM`` makes the processes started while it exists ignore SIGTERM (as
``--ignore-sigterm`` does), so only SIGKILL stops them. ``HOME/CRASH_AFTER_START`` is the subtler
failure: the process starts (writes its pid file), then
logs a line and exits with status 3 at once, as an agent that crashes right after start-up.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType

FAIL_START = "FAIL_START"
"""A file of this name in the agent home makes every start fail (see the module docstring)."""
CRASH_AFTER_START = "CRASH_AFTER_START"
"""A file of this name in the agent home makes every process crash once started."""
IGNORE_SIGTERM = "IGNORE_SIGTERM"
"""A file of this name in the agent home makes every process started after it ignore SIGTERM."""


def _exit_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    sys.exit(0)


def _write_pid_file(home: str, name: str) -> None:
    run = Path(home) / "run"
    tmp = run / f".{name}.pid.{os.getpid()}"
    try:
        run.mkdir(parents=True, exist_ok=True)
        tmp.write_text(f"{os.getpid()}\n")
        # Atomic: a reader never sees a half-written pid.
        tmp.replace(run / f"{name}.pid")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        sys.exit(f"agent_stub {name}: cannot write its pid file {run / name}.pid: {exc}")


def main(argv: list[str] | None = None) -> int:
    """Run the fake agent process until a signal stops it."""
    parser = argparse.ArgumentParser(prog="agent_stub", description=__doc__)
    # Installed on a remote host as HOME/bin/NAME (dagtask.hosts.remote.install_agent_stub), it
    # is started with no arguments: the home and the name come from its own path.
    own = Path(sys.argv[0]).absolute()
    parser.add_argument("--home", default=str(own.parent.parent), help="the agent home directory")
    parser.add_argument("--name", default=own.name, help="the process name, e.g. ocp_agentd")
    parser.add_argument("--ignore-sigterm", action="store_true", help="only SIGKILL stops it")
    args = parser.parse_args(argv)
    if (Path(args.home) / IGNORE_SIGTERM).exists():
        args.ignore_sigterm = True
    marker = Path(args.home) / FAIL_START
    if marker.exists():
        # Before the pid file: to whoever starts it, this is an agent that died while starting.
        sys.exit(f"agent_stub {args.name}: refusing to start because {marker} exists")
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # The pid file is left behind on exit on purpose: removing stale records is the
    # connector's job, as with a real agent that was SIGKILLed.
    _write_pid_file(args.home, args.name)
    crash = Path(args.home) / CRASH_AFTER_START
    if crash.exists():
        print(f"agent_stub {args.name}: crashed after start-up because {crash} exists", flush=True)
        return 3
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
