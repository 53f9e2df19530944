"""The task store: one object over one SQL database, assembled from one module per job.

* :mod:`.submit`: templates and new tasks;
* :mod:`.attempts`: the workers' hot path, claim and finish;
* :mod:`.actions`: the operator actions;
* :mod:`.workers`: worker registration, heartbeats, recovery and reconciliation;
* :mod:`.reads`: what the CLI, the API and the views read.

Every status change goes through :mod:`.changes`, which checks the transition table and records
the history event in the same transaction as the change; the statements are prebuilt in
:mod:`.statements` (the hot path never builds a query or opens an ORM session).
"""

from __future__ import annotations

from dagtask.store.actions import ActionStore
from dagtask.store.attempts import AttemptStore, Batch, Claim, FinishOutcome, Report
from dagtask.store.db import RETURNING_DIALECTS, Database
from dagtask.store.reads import StoreReads
from dagtask.store.submit import SubmitStore
from dagtask.store.workers import WorkerStore

__all__ = ["Batch", "Claim", "FinishOutcome", "Report", "Store"]


class Store(SubmitStore, AttemptStore, ActionStore, WorkerStore, StoreReads):
    """Tasks, subtasks, their history and logs in one SQL database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # UPDATE ... RETURNING claims in one statement; MySQL/MariaDB lack it for UPDATE.
        self._returning = db.dialect in RETURNING_DIALECTS
        self._template_ids: dict[str, int] = {}  # digest -> id; stored templates never change
