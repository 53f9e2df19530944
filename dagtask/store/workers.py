"""Workers in the database: registration, heartbeats, and recovery of what a lost worker held.

The database is the only coordinator (no cluster protocol). Each worker process has a row in
``dagtask_worker`` and renews ``heartbeat_at`` (the *database's* clock) every few seconds. A RUNNING
or CANCELING subtask belongs to the worker its ``executor`` names. Any worker sweeps now and then:
a worker whose heartbeat is older than its lease is declared LOST (one conditional UPDATE, so of
two sweepers only one recovers it) and its subtasks are recovered in the same transaction, by the
policy their template set (:func:`dagtask.planner.after_lost`):

* CANCELING → FAILED / CANCEL (the cancel the operator asked for);
* RUNNING, policy FAIL (default, as in OCP) → FAILED, "worker … lost"; the operator decides;
* RUNNING, policy RETRY → READY as a new attempt (runTime + 1) that another worker takes.

Every recovery writes its history events and a line in the attempt's log. A worker that was
declared lost but is in fact alive (a long pause, a network partition) finds out at its next
heartbeat; its late results are discarded because the attempts they belong to have ended.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from dagtask import logs, planner
from dagtask.clock import utcnow
from dagtask.errors import ArgumentError
from dagtask.states import Operation, SubtaskStatus
from dagtask.store import changes
from dagtask.store import statements as q
from dagtask.store.db import Database, retrying

S = SubtaskStatus


@dataclass(frozen=True)
class Reconciled:
    """What :meth:`WorkerStore.reconcile_worker` found and did."""

    held: frozenset[tuple[int, int]]
    """``(subtask id, runTime)`` of what the worker still holds and runs."""
    never_started: int = 0
    handed_back: int = 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class WorkerRecord:
    """A worker as the database knows it."""

    name: str
    host: str
    pid: int
    concurrency: int
    lease_seconds: int
    status: str
    """ACTIVE, STOPPED or LOST."""
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None


class WorkerStore:
    """The worker side of :class:`dagtask.store.sql.Store`."""

    db: Database

    # ---- registration and heartbeats -------------------------------------------------------

    def register_worker(self, name: str, *, concurrency: int, lease_seconds: int) -> int:
        """Record worker ``name`` as ACTIVE; return how many orphaned subtasks it handed back.

        A name is one worker at a time: registering a name whose row is ACTIVE with a fresh
        heartbeat from another process is refused. A name whose previous holder is gone (it
        stopped, was lost, or was killed and restarted under the same name) is taken over, and
        whatever that holder left RUNNING is recovered first, since no one else would.
        """
        host, pid = socket.gethostname(), os.getpid()
        params = {
            "w_name": name,
            "w_host": host,
            "w_pid": pid,
            "w_concurrency": concurrency,
            "w_lease_seconds": lease_seconds,
        }
        for _attempt in range(3):
            try:
                with self.db.begin() as conn:
                    row = conn.execute(q.worker_row, {"w_name": name}).one_or_none()
                    if row is None:
                        conn.execute(q.insert_worker, params)
                        return 0
                    now = conn.execute(q.db_now).scalar_one()
                    fresh = row.heartbeat_at + timedelta(seconds=row.lease_seconds) > now
                    # A holder on this host whose process is gone (killed, then restarted at
                    # once by a service manager) is taken over now, not when its lease ends.
                    dead = row.host == host and row.pid != pid and not _pid_alive(row.pid)
                    if (
                        row.status == "ACTIVE"
                        and fresh
                        and not dead
                        and (row.host, row.pid) != (host, pid)
                    ):
                        raise ArgumentError(
                            f"worker name {name!r} is in use by {row.host} pid {row.pid} "
                            f"(heartbeat {(now - row.heartbeat_at).total_seconds():.0f} s ago); "
                            "give this worker another --name"
                        )
                    orphans = self._recover_in(
                        conn, name, f"worker {name} restarted before it ended", name
                    )
                    conn.execute(q.reregister_worker, params)
                    return orphans
            except sa.exc.IntegrityError:
                continue  # another process inserted the same name first: look again
        raise ArgumentError(f"could not register worker {name!r}; is another one starting?")

    def append_logs(self, parts: Sequence[tuple[int, int, str]]) -> None:
        """Append ``(subtask id, runTime, text)`` to running attempts' logs, in one
        transaction (a worker's periodic flush)."""
        if not parts:
            return
        now = utcnow()
        rows = [
            {"subtask_id": sid, "run_time": rt, "text": text, "create_time": now}
            for sid, rt, text in parts
        ]
        with self.db.begin() as conn:
            conn.execute(q.insert_log, rows)

    def reconcile_worker(
        self,
        name: str,
        *,
        live: Mapping[int, int],
        fenced: Mapping[int, tuple[int, str]],
    ) -> Reconciled:
        """Settle what worker ``name`` holds in the database against what it runs, in one
        transaction (after a write whose outcome it did not learn, or after fencing).

        ``live`` maps the subtasks it runs (or whose result it has yet to record) to their
        runTime; ``fenced`` those it stopped without a result, to (runTime, reason). A subtask
        it holds in neither was claimed by a commit whose reply it never got: its handler never
        ran, so it goes back to READY. A fenced one is recovered by its policy, like a lost
        worker's. Returns what it still holds of ``live``.
        """

        def attempt() -> Reconciled:
            with self.db.begin() as conn:
                held = conn.execute(q.held_by, {"executor": name}).all()
                unknown = {r.id for r in held if r.id not in live and r.id not in fenced}
                stopped = {r.id for r in held if r.id in fenced and fenced[r.id][0] == r.run_time}
                never = 0
                if unknown:
                    never = self._recover_in(
                        conn,
                        name,
                        f"worker {name} never started it (the reply to its claim was lost)",
                        name,
                        skip={r.id for r in held if r.id not in unknown},
                        never_started=True,
                    )
                handed = 0
                for reason in sorted({fenced[sid][1] for sid in stopped}):
                    handed += self._recover_in(
                        conn,
                        name,
                        reason,
                        name,
                        skip={
                            r.id for r in held if r.id not in stopped or fenced[r.id][1] != reason
                        },
                    )
                kept = frozenset((r.id, r.run_time) for r in held if live.get(r.id) == r.run_time)
                return Reconciled(kept, never, handed)

        return retrying(attempt)

    def heartbeat(self, name: str) -> bool:
        """Renew ``name``'s lease; False if it was declared lost (it must re-register)."""
        with self.db.begin() as conn:
            return bool(conn.execute(q.heartbeat, {"w_name": name}).rowcount)

    def stop_worker(self, name: str) -> None:
        """Record that worker ``name`` stopped cleanly (nothing of it is left to recover)."""
        with self.db.begin() as conn:
            conn.execute(q.stop_worker, {"w_name": name})

    def workers(self) -> list[WorkerRecord]:
        """Every worker the database has seen, by name."""
        with self.db.read() as conn:
            rows = conn.execute(q.all_workers).all()
        return [
            WorkerRecord(
                name=r.name,
                host=r.host,
                pid=r.pid,
                concurrency=r.concurrency,
                lease_seconds=r.lease_seconds,
                status=r.status,
                started_at=r.started_at,
                heartbeat_at=r.heartbeat_at,
                stopped_at=r.stopped_at,
            )
            for r in rows
        ]

    # ---- recovery --------------------------------------------------------------------------

    def recover_lost_workers(self, sweeper: str) -> list[str]:
        """Declare LOST every ACTIVE worker whose lease ran out and recover its subtasks.

        Cheap when nobody is late: one read of the (small) worker table. Returns the names of the
        workers this call recovered.
        """
        with self.db.read() as conn:
            rows = conn.execute(q.active_workers).all()
            late = late_workers(rows)
            # A worker declared lost while a claim of its was in flight holds that claim and
            # may never come back to hand it over: recover what silent non-ACTIVE workers hold.
            holding = {r.executor for r in conn.execute(q.holders)} - {sweeper}
            quiet = late_workers(conn.execute(q.silent_workers).all()) if holding else []
        recovered = []
        for row in quiet:
            if row.name in holding:
                with self.db.begin() as conn:
                    if self._recover_in(
                        conn,
                        row.name,
                        f"worker {row.name} lost before it handed them back",
                        sweeper,
                    ):
                        recovered.append(row.name)
        for row in late:
            silent = (row.now - row.heartbeat_at).total_seconds()
            reason = (
                f"worker {row.name} lost: no heartbeat for {silent:.0f} s "
                f"(lease {row.lease_seconds} s)"
            )
            with self.db.begin() as conn:
                won = conn.execute(
                    q.declare_lost,
                    {"w_name": row.name, "w_seen": row.heartbeat_at},
                ).rowcount
                if won:
                    self._recover_in(conn, row.name, reason, sweeper)
                    recovered.append(row.name)
        return recovered

    def hand_back(self, name: str, reason: str) -> int:
        """Recover what worker ``name`` still holds, as if it were lost (a stop that could not
        wait for its handlers); returns how many subtasks were recovered."""
        with self.db.begin() as conn:
            return self._recover_in(conn, name, reason, name)

    def hand_back_unknown(self, name: str, known: Collection[int]) -> int:
        """Put back to READY the subtasks worker ``name`` holds but does not know of: a claim
        that committed although the worker saw it fail (the connection broke at commit). Their
        handlers never ran, so they simply run again as a new attempt."""
        with self.db.begin() as conn:
            return self._recover_in(
                conn,
                name,
                f"worker {name} never started it (its claim was interrupted)",
                name,
                skip=set(known),
                never_started=True,
            )

    def _recover_in(
        self,
        conn: sa.Connection,
        name: str,
        reason: str,
        sweeper: str,
        *,
        skip: Collection[int] = (),
        never_started: bool = False,
    ) -> int:
        """Recover the RUNNING / CANCELING subtasks of worker ``name`` (caller's transaction),
        but those in ``skip``."""
        held = [r for r in conn.execute(q.held_by, {"executor": name}).all() if r.id not in skip]
        if not held:
            return 0
        now = utcnow()
        events: list[dict[str, Any]] = []
        # Lock the tasks first, in id order as every transaction does, then each subtask.
        task_ids = sorted({row.task_id for row in held})
        tasks = {row.id: row for row in conn.execute(q.lock_tasks, {"ids": task_ids}).all()}
        touched: set[int] = set()
        recovered = 0
        for sub in held:
            current = conn.execute(q.lock_subtask, {"sid": sub.id}).one()
            if current.status != sub.status or current.run_time != sub.run_time:
                continue  # it ended meanwhile
            self._recover_one(conn, sub, reason, sweeper, now, events, never_started)
            touched.add(sub.task_id)
            recovered += 1
        for task_id in sorted(touched):
            changes.progress(conn, task_id, tasks[task_id], now, events)
        if events:
            conn.execute(q.insert_event, events)
        changes.notify_ready(conn)
        return recovered

    def _recover_one(
        self,
        conn: sa.Connection,
        sub: Any,
        reason: str,
        sweeper: str,
        now: datetime,
        events: list[dict[str, Any]],
        never_started: bool,
    ) -> None:
        status, operation = S(sub.status), Operation(sub.operation)
        policy = "RETRY" if never_started else sub.recovery
        steps = planner.after_lost(status, operation, sub.run_time, policy, sub.lost_count)
        final = steps[-1]
        if never_started:
            message = f"{reason}; it runs again"
        elif status is S.CANCELING:
            message = f"cancelled by the operator; {reason}"
        elif final.status is S.READY:
            message = f"{reason}; running it again (recovery policy RETRY)"
        elif sub.recovery == "RETRY":
            message = (
                f"{reason}; not run again: it lost its worker {sub.lost_count + 1} times "
                f"(RETRY recovery stops after {planner.MAX_LOST_RETRIES})"
            )
        else:
            message = f"{reason}; retry or skip it (recovery policy FAIL)"
        text = logs.line(message, "ERROR")
        text += logs.transition_lines(
            sub.id, status.value, [(s.status.value, s.operation.value) for s in steps], when=now
        )
        changes.insert_log(conn, sub.id, sub.run_time, text, now)
        changes.change_subtasks(
            conn,
            sub.task_id,
            [sub.id],
            status,
            steps,
            now,
            sweeper,
            message,
            operation,
            events,
        )
        conn.execute(
            q.mark_lost,
            {
                "sid": sub.id,
                "lost": 1 if status is S.RUNNING and not never_started else 0,
                "message": message,
                "finish_time": now if final.status is S.FAILED else None,
            },
        )


def late_workers(rows: Sequence[Any]) -> list[Any]:
    """The rows of :data:`statements.active_workers` whose lease ran out."""
    return [r for r in rows if r.heartbeat_at + timedelta(seconds=r.lease_seconds) < r.now]
