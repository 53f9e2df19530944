"""Where dagtask departs from OCP's observable behaviour on purpose, and the switch back to OCP's.

Each departure is kept for a reason written in docs/design.md ("OCP fidelity"); the
``DAGTASK_OCP_COMPAT`` environment variable turns any of them back to OCP's behaviour for the
whole process (a REST server, a worker, a CLI command), as a comma-separated list of:

``run_time``
    ``runTime`` in task JSON (REST, ``--json``) counts as OCP's does: only a task retry
    and an automatic retry add 1. dagtask numbers every attempt (a subtask retry, a skip and a
    failed rollback step re-run also add 1), and its logs, history and fences stay numbered so;
    with the switch the JSON carries the OCP count as ``runTime`` and dagtask's own number as
    ``attempt``.
``retry_in_rollback``
    A subtask retry is refused only when that subtask's own operation is ROLLBACK, as in OCP.
    dagtask also refuses it while the task is rolling back (a forward retry in the middle of a
    rollback redoes work the rollback is undoing; rolling back again is the remedy).
``http_400``
    Refusals 20003 and 20004 answer HTTP 400 with the code in the body, as OCP does. dagtask
    answers 409 Conflict: the request was well formed, the task's state refused it.

``all`` turns on every switch; unset or empty, none. :func:`configure` sets them from code (an
application embedding dagtask); an unknown word is a :class:`~dagtask.errors.ConfigError`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, fields

from dagtask.errors import ConfigError

VARIABLE = "DAGTASK_OCP_COMPAT"


@dataclass(frozen=True)
class OcpCompat:
    """Which of dagtask's departures from OCP are switched back to OCP's behaviour."""

    run_time: bool = False
    retry_in_rollback: bool = False
    http_400: bool = False

    @classmethod
    def parse(cls, text: str, where: str = f"${VARIABLE}") -> OcpCompat:
        """``run_time,http_400`` (or ``all``, or empty) as switches."""
        names = [f.name for f in fields(cls)]
        words = {w.strip().lower() for w in text.split(",") if w.strip()}
        if "all" in words:
            return cls(**dict.fromkeys(names, True))
        unknown = sorted(words - set(names))
        if unknown:
            raise ConfigError(
                f"{where}: unknown OCP switch {unknown[0]!r}; use a comma-separated list of "
                f"{', '.join(names)}, or all"
            )
        return cls(**{name: name in words for name in names})


_lock = threading.Lock()
_current: OcpCompat | None = None


def current() -> OcpCompat:
    """The switches in effect: :func:`configure`'s, else ``$DAGTASK_OCP_COMPAT``'s (read once)."""
    global _current
    found = _current
    if found is None:
        with _lock:
            if _current is None:
                _current = OcpCompat.parse(os.environ.get(VARIABLE, ""))
            found = _current
    return found


def configure(compat: OcpCompat | None) -> None:
    """Use ``compat`` from now on (None: read ``$DAGTASK_OCP_COMPAT`` again at next use)."""
    global _current
    with _lock:
        _current = compat
