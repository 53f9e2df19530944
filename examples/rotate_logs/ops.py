"""Handlers of the "Rotate agent logs" host operation: Prepare -> Rotate -> Finish.

The task acts on one host (``stringMap.host_id``) and rotates the OCP agent's logs in
``<agent_home>/log``: every ``NAME.log`` becomes ``NAME.log.1`` (older generations shift to
``.2``, ``.3``, ...) and a fresh, empty ``NAME.log`` takes its place.

Context keys (stringMap):

``host_id``
    The host whose agent logs are rotated (the task's argument).
``log_dir``
    Written by Prepare: the absolute path of the host's log folder.
``rotation_id``
    Written by Prepare: a random id that names this task's rotation journal.
``rotated_logs``
    Written by Rotate: the comma-separated names of the logs it rotated.
``rotated_files``
    Written by Finish: how many logs were rotated, e.g. ``"3"``.
``simulate_failure``
    Optional, for demonstrations: ``"true"`` makes Finish fail before it commits, so that the
    task can be rolled back (``run.py --demo-rollback``).

Rotate is undoable: before each rename or file creation it appends a line to a journal
(``<log_dir>/.rotate-<rotation_id>.journal``), and its rollback replays that journal backwards.
The journal, not the context, is what rollback trusts: an attempt that failed half-way (the
rollback that precedes a retry) wrote no output, yet it may have renamed some of the files.
Finish deletes the journal, which commits the rotation.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

from dagtask import Handler, HostError, HostInfo, RunContext
from dagtask.handlers import HandlerResult

HOST_ID = "host_id"
LOG_DIR = "log_dir"
ROTATION_ID = "rotation_id"
ROTATED_LOGS = "rotated_logs"
ROTATED_FILES = "rotated_files"
SIMULATE_FAILURE = "simulate_failure"


def host_of(ctx: RunContext) -> HostInfo:
    """The host named by ``stringMap.host_id`` (HostNotFoundError if it is not registered)."""
    return ctx.services.hosts.get(int(ctx.get(HOST_ID)))


def _generation(path: Path, log: Path) -> int:
    """N for ``NAME.log.N`` next to ``NAME.log``, else 0."""
    match = re.fullmatch(re.escape(log.name) + r"\.([1-9][0-9]*)", path.name)
    return int(match.group(1)) if match else 0


class Journal:
    """The record of what one task's Rotate did to one log folder, so that it can be undone."""

    def __init__(self, log_dir: Path, rotation_id: str) -> None:
        self.log_dir = log_dir
        self.path = log_dir / f".rotate-{rotation_id}.journal"

    @classmethod
    def of(cls, ctx: RunContext) -> Journal:
        """The journal of the task ``ctx`` belongs to (named by Prepare's output)."""
        return cls(Path(ctx.get(LOG_DIR)), ctx.get(ROTATION_ID))

    def exists(self) -> bool:
        """Whether this task has an uncommitted rotation in the folder."""
        return self.path.exists()

    def _record(self, **entry: str) -> None:
        # Written (and flushed by close) before the change it describes: after a crash the
        # journal may list a change that never happened, which undo tolerates, but never misses
        # one that did.
        with self.path.open("a", encoding="utf-8") as journal:
            journal.write(json.dumps(entry) + "\n")

    def rename(self, src: Path, dst: Path) -> None:
        """Rename ``src`` to ``dst`` (both in the log folder), refusing to overwrite."""
        if dst.exists():
            raise HostError(f"cannot rotate {src} to {dst}: {dst.name} already exists")
        self._record(op="rename", src=src.name, dst=dst.name)
        src.rename(dst)

    def create(self, path: Path) -> None:
        """Create ``path`` as a new empty file."""
        self._record(op="create", path=path.name)
        path.touch(exist_ok=False)

    def undo(self, ctx: RunContext) -> int:
        """Revert every recorded change, newest first; return how many were reverted."""
        if not self.exists():
            return 0
        entries = [
            json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line
        ]
        undone = 0
        for entry in reversed(entries):
            if entry["op"] == "create":
                undone += self._undo_create(ctx, self.log_dir / entry["path"])
            else:
                undone += self._undo_rename(
                    ctx, self.log_dir / entry["src"], self.log_dir / entry["dst"]
                )
        self.path.unlink()
        return undone

    def _undo_create(self, ctx: RunContext, path: Path) -> int:
        if not path.exists():
            return 0
        rotated = path.with_name(path.name + ".1")
        data = path.read_bytes()
        if data and not rotated.exists():
            # Cannot happen through Rotate (a fresh log is created only after the old one moved
            # away), so the folder was changed by hand: keep the lines rather than guess.
            ctx.log.warning("Keeping %s: it has data and %s is missing", path.name, rotated.name)
            return 0
        if data:
            # The agent wrote to the fresh log since the rotation: those lines must survive the
            # rollback, after the old content that is about to move back.
            with rotated.open("ab") as old:
                old.write(data)
            ctx.log.info("Moved %d new bytes of %s to %s", len(data), path.name, rotated.name)
        path.unlink()
        return 1

    def _undo_rename(self, ctx: RunContext, src: Path, dst: Path) -> int:
        if not dst.exists():
            return 0  # recorded but never done (the attempt died before the rename)
        if src.exists():
            raise HostError(
                f"cannot roll back the rotation of {src}: both {src.name} and {dst.name} exist; "
                "merge or remove one of them by hand, then retry the rollback"
            )
        dst.rename(src)
        ctx.log.info("Renamed %s back to %s", dst.name, src.name)
        return 1


class PrepareRotateLogs(Handler):
    """Check the host and its log folder; output ``log_dir`` and ``rotation_id``."""

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Fail early, with advice, if the rotation cannot work on this host."""
        ctx.token.raise_if_cancelled()
        host = host_of(ctx)
        ctx.log.info("Preparing log rotation on host %d (%s)", host.id, host.name)
        if host.connector != "local":
            raise HostError(
                f"host {host.id} ({host.name}) is reached through the {host.connector!r} "
                "connector; this example only rotates logs on local hosts",
                target=str(host.id),
            )
        log_dir = Path(host.agent_home) / "log"
        if not log_dir.is_dir():
            raise HostError(
                f"host {host.id} ({host.name}) has no log folder {log_dir}; check its agent_home "
                "in the host inventory",
                target=str(host.id),
            )
        logs = sorted(path.name for path in log_dir.glob("*.log"))
        ctx.log.info("Found %d log(s) to rotate in %s: %s", len(logs), log_dir, ", ".join(logs))
        # Not the task id: ids restart in every database, and two databases may well share one
        # agent home (each demo run uses a fresh one), so a task could take another's journal.
        return {LOG_DIR: str(log_dir), ROTATION_ID: uuid.uuid4().hex[:12]}


class RotateAgentLogs(Handler):
    """Rotate every ``*.log`` of the log folder, journaling each change so rollback can undo it."""

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Rotate the logs; output their names as ``rotated_logs``."""
        journal = Journal.of(ctx)
        log_dir = journal.log_dir
        if journal.exists():
            # An earlier attempt of this task died half-way (e.g. its worker vanished and the
            # subtask was claimed again): start from the original files, not from its leftovers.
            ctx.log.info("Undoing an unfinished rotation of this task first")
            journal.undo(ctx)
        rotated: list[str] = []
        for log in sorted(log_dir.glob("*.log")):
            # Between files, not inside one: a timeout or cancel then leaves whole rotations
            # behind, which the journal undoes.
            ctx.token.raise_if_cancelled()
            # Oldest first, so that no rename lands on a file that is still to be moved.
            older = sorted(
                ((n, path) for path in log_dir.iterdir() if (n := _generation(path, log))),
                reverse=True,
            )
            for n, path in older:
                journal.rename(path, log.with_name(f"{log.name}.{n + 1}"))
            journal.rename(log, log.with_name(f"{log.name}.1"))
            journal.create(log)
            ctx.log.info(
                "Rotated %s -> %s.1 (%d older generation(s))", log.name, log.name, len(older)
            )
            rotated.append(log.name)
        return {ROTATED_LOGS: ",".join(rotated)}

    def rollback(self, ctx: RunContext) -> HandlerResult:
        """Put every log back as it was before this task's rotation."""
        journal = Journal.of(ctx)
        if not journal.exists():
            ctx.log.info("Nothing to roll back: this task left no rotation journal")
            return None
        undone = journal.undo(ctx)
        ctx.log.info("Rolled back the rotation: %d change(s) reverted", undone)
        return None

    # retry() is the base class's rollback-then-execute: exactly what a half-done rotation needs.


class FinishRotateLogs(Handler):
    """Commit the rotation (drop the journal) and output ``rotated_files``."""

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Output how many logs were rotated."""
        ctx.token.raise_if_cancelled()
        rotated = [name for name in ctx.get(ROTATED_LOGS).split(",") if name]
        if ctx.string_map.get(SIMULATE_FAILURE) == "true":
            raise RuntimeError(
                f"simulated failure (stringMap.{SIMULATE_FAILURE}=true) before the rotation of "
                f"{len(rotated)} log(s) was committed; roll the task back to undo it"
            )
        # Past this point the rotation is final: Rotate's rollback finds no journal to replay.
        Journal.of(ctx).path.unlink(missing_ok=True)
        ctx.log.info("Rotated %d log(s) on host %s", len(rotated), ctx.get(HOST_ID))
        return {ROTATED_FILES: str(len(rotated))}
