"""The tables, as SQLAlchemy Core. Migrations in ``migrations/versions`` create exactly these.

Times are stored as naive UTC. Indexes follow what is polled: READY subtasks by id (claims),
subtasks of a task by status (concurrency and end-of-task checks), runnable PENDING subtasks of a
task, edges by downstream, events and logs by task / subtask.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

# MySQL's DATETIME keeps whole seconds unless told otherwise.
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

id_sequence = sa.Table(
    "dagtask_id_sequence",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("next_value", sa.BigInteger, nullable=False),
)
"""Hi-lo id allocator: a task's ids are taken as one block so its edges can be bulk-inserted."""

task_template = sa.Table(
    "dagtask_template",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.UniqueConstraint("name", "version", name="uq_dagtask_template_name_version"),
)

task = sa.Table(
    "dagtask_task",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("template_id", BigId, sa.ForeignKey("dagtask_template.id"), nullable=True),
    sa.Column("task_definition_id", sa.BigInteger, nullable=False, server_default="-1"),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("operation", sa.String(16), nullable=False),
    sa.Column("creator", sa.String(128), nullable=False),
    sa.Column("executor", sa.String(256), nullable=False),
    sa.Column("context", sa.JSON, nullable=False),
    sa.Column("prohibit_rollback", sa.Boolean, nullable=False),
    sa.Column("host_id", sa.BigInteger, nullable=True),
    sa.Column("cluster_id", sa.BigInteger, nullable=True),
    sa.Column("tenant_id", sa.BigInteger, nullable=True),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column(
        "source_task_id",
        BigId,
        nullable=True,
        comment="the task this one reruns or forks (dagtask rerun), if any",
    ),
    sa.Column(
        "cancel_requested",
        sa.Boolean,
        nullable=False,
        server_default=sa.false(),
        comment="an operator cancelled the task: nothing new starts until a retry or rollback",
    ),
    sa.Column(
        "historical",
        sa.Boolean,
        nullable=False,
        server_default=sa.false(),
        comment="an imported record of a task run elsewhere: nothing here runs or changes it",
    ),
    sa.Column(
        "recorded_status",
        sa.String(16),
        nullable=True,
        comment="a historical task's status as recorded (its live status stays SUCCESSFUL)",
    ),
    sa.Column(
        "origin",
        sa.JSON,
        nullable=True,
        comment="where a historical task was imported from: file, format, original ids",
    ),
    sa.Column(
        "trace_parent",
        sa.String(64),
        nullable=True,
        comment="the W3C traceparent of the task's span, when a tracer recorded its submit",
    ),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Column("start_time", Timestamp, nullable=True),
    sa.Column("finish_time", Timestamp, nullable=True),
    sa.Index("ix_dagtask_task_status", "status"),
    sa.Index("ix_dagtask_task_host", "host_id", "status"),
    sa.Index("ix_dagtask_task_definition", "task_definition_id", "status"),
)

subtask = sa.Table(
    "dagtask_subtask",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=False),
    sa.Column(
        "task_id", BigId, sa.ForeignKey("dagtask_task.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("series_id", sa.Integer, nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("description", sa.String(1024), nullable=False),
    sa.Column("class_name", sa.String(512), nullable=False),
    sa.Column("node_type", sa.String(32), nullable=False),
    sa.Column("operation", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("run_time", sa.Integer, nullable=False),
    sa.Column(
        "ocp_run_time",
        sa.Integer,
        nullable=False,
        server_default="1",
        comment="runTime as OCP counts it: only task retries and automatic retries add 1",
    ),
    sa.Column("timeout", sa.Integer, nullable=False),
    sa.Column("retry_count", sa.Integer, nullable=False),
    sa.Column("parallel", sa.Boolean, nullable=False),
    sa.Column("parallel_idx", sa.Integer, nullable=False),
    sa.Column("prohibit_rollback", sa.Boolean, nullable=False),
    sa.Column(
        "pending_upstreams",
        sa.Integer,
        nullable=False,
        comment="upstreams not SUCCESSFUL; 0 = may become READY (no rescan of the task)",
    ),
    sa.Column("executor", sa.String(256), nullable=True),
    sa.Column(
        "recovery",
        sa.String(8),
        nullable=False,
        server_default="FAIL",
        comment="what happens when the worker running it is lost: FAIL or RETRY",
    ),
    sa.Column(
        "lost_count",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment="attempts recovered from lost workers (caps RETRY recovery)",
    ),
    sa.Column("output_context", sa.JSON, nullable=True),
    sa.Column("message", sa.Text, nullable=True),
    sa.Column(
        "recorded_status",
        sa.String(16),
        nullable=True,
        comment="a historical subtask's status as recorded (its live status is never READY)",
    ),
    sa.Column(
        "original_id",
        sa.BigInteger,
        nullable=True,
        comment="a historical subtask's id in the system it was imported from",
    ),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Column("start_time", Timestamp, nullable=True),
    sa.Column("finish_time", Timestamp, nullable=True),
    sa.Index("ix_dagtask_subtask_claim", "status", "id"),
    sa.Index("ix_dagtask_subtask_task_status", "task_id", "status", "pending_upstreams"),
)

subtask_edge = sa.Table(
    "dagtask_subtask_edge",
    metadata,
    sa.Column("upstream_id", BigId, primary_key=True, autoincrement=False),
    sa.Column("downstream_id", BigId, primary_key=True, autoincrement=False),
    sa.Column(
        "task_id", BigId, sa.ForeignKey("dagtask_task.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Index("ix_dagtask_edge_downstream", "downstream_id"),
    sa.Index("ix_dagtask_edge_task", "task_id"),
)

subtask_log = sa.Table(
    "dagtask_subtask_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("subtask_id", BigId, nullable=False),
    sa.Column("run_time", sa.Integer, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Index("ix_dagtask_log_subtask", "subtask_id", "run_time", "id"),
)

task_event = sa.Table(
    "dagtask_event",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("task_id", BigId, nullable=False),
    sa.Column("subtask_id", BigId, nullable=True),
    sa.Column("time", Timestamp, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("old_status", sa.String(16), nullable=True),
    sa.Column("new_status", sa.String(16), nullable=True),
    sa.Column("old_operation", sa.String(16), nullable=True),
    sa.Column("new_operation", sa.String(16), nullable=True),
    sa.Column("run_time", sa.Integer, nullable=True),
    sa.Column("executor", sa.String(256), nullable=True),
    sa.Column("message", sa.Text, nullable=True),
    sa.Index("ix_dagtask_event_task", "task_id", "id"),
)
"""Append-only: one row per status or operation change, written with the change."""

host = sa.Table(
    "dagtask_host",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(256), nullable=False, unique=True),
    sa.Column("inner_ip", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("agent_status", sa.String(32), nullable=False),
    sa.Column("agent_home", sa.String(1024), nullable=False),
    sa.Column("connector", sa.String(64), nullable=False),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Column("update_time", Timestamp, nullable=False),
    sa.Column("access", sa.Text, nullable=True, comment="JSON: how to reach it over SSH"),
    sa.Column("host_key", sa.Text, nullable=True, comment="the pinned SSH host key"),
    sa.Column("agent_kind", sa.String(64), nullable=False, server_default="ocp"),
    sa.Column("os_info", sa.String(512), nullable=True),
    sa.Column("checked_at", Timestamp, nullable=True),
)

worker = sa.Table(
    "dagtask_worker",
    metadata,
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("host", sa.String(256), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("lease_seconds", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, comment="ACTIVE, STOPPED or LOST"),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("heartbeat_at", Timestamp, nullable=False, comment="database time (UTC)"),
    sa.Column("stopped_at", Timestamp, nullable=True),
)
"""Workers that claim subtasks. A RUNNING subtask's ``executor`` names its worker; a worker whose
``heartbeat_at`` is older than its ``lease_seconds`` is lost and its subtasks are recovered."""

task_host = sa.Table(
    "dagtask_task_host",
    metadata,
    sa.Column("task_id", BigId, primary_key=True, autoincrement=False),
    sa.Column("host_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Index("ix_dagtask_task_host_host", "host_id", "task_id"),
)
"""The hosts a host operation acts on (one for a single-host task, many for a batch)."""

host_lock = sa.Table(
    "dagtask_host_lock",
    metadata,
    sa.Column("host_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("task_id", BigId, nullable=False),
    sa.Column("since", Timestamp, nullable=False),
    sa.Index("ix_dagtask_host_lock_task", "task_id"),
)
"""One host operation per host at a time: a RUNNING host task holds a row per host it acts on
(the primary key makes a second holder impossible, across processes and machines)."""

user = sa.Table(
    "dagtask_user",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(512), nullable=False, comment="a password KDF's output"),
    sa.Column("roles", sa.String(256), nullable=False, comment="comma-separated role names"),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Column("update_time", Timestamp, nullable=False),
)
"""REST API users (passwords only as KDF hashes)."""

# ---- schedules, webhooks (revision 0006) ---------------------------------------------------------

task_definition = sa.Table(
    "dagtask_task_definition",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("template", sa.String(256), nullable=False, comment="the template's name"),
    sa.Column("args", sa.JSON, nullable=False, comment="the stringMap of each task it creates"),
    sa.Column("lists", sa.JSON, nullable=False, comment="the listMap of each task it creates"),
    sa.Column("type", sa.String(16), nullable=False, comment="SCHEDULED or SYS_SCHEDULED"),
    sa.Column("schedule_kind", sa.String(16), nullable=False, comment="CRON, ONCE or MANUAL"),
    sa.Column("cron", sa.String(256), nullable=True),
    sa.Column("run_at", Timestamp, nullable=True, comment="ONCE: when (UTC)"),
    sa.Column("time_zone", sa.String(64), nullable=False, server_default="UTC"),
    sa.Column("start_time", Timestamp, nullable=True, comment="no fire before (UTC)"),
    sa.Column("end_time", Timestamp, nullable=True, comment="no fire after (UTC)"),
    sa.Column("missed_policy", sa.String(16), nullable=False, server_default="SKIP"),
    sa.Column("overlap_policy", sa.String(16), nullable=False, server_default="SKIP"),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("creator", sa.String(128), nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("next_fire_time", Timestamp, nullable=True, comment="the next fire (UTC), if any"),
    sa.Column("last_fire_time", Timestamp, nullable=True),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Column("update_time", Timestamp, nullable=False),
    sa.Index("ix_dagtask_definition_due", "enabled", "next_fire_time"),
)
"""Task definitions (OCP's): a template, its arguments and a schedule."""

schedule_fire = sa.Table(
    "dagtask_schedule_fire",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("definition_id", BigId, nullable=False),
    sa.Column("fire_time", Timestamp, nullable=False, comment="the tick it is for (UTC)"),
    sa.Column(
        "outcome",
        sa.String(16),
        nullable=False,
        comment="CLAIMED (a scheduler took it), FIRED (task_id created), SKIPPED (overlap), "
        "MISSED (after downtime, by the missed-fire policy)",
    ),
    sa.Column("task_id", BigId, nullable=True),
    sa.Column("executor", sa.String(256), nullable=False, comment="the scheduler that took it"),
    sa.Column("claimed_at", Timestamp, nullable=False),
    sa.Column("message", sa.Text, nullable=True),
    sa.UniqueConstraint("definition_id", "fire_time", name="uq_dagtask_fire_tick"),
    sa.Index("ix_dagtask_fire_outcome", "outcome", "claimed_at"),
)
"""One row per (definition, fire time): the unique key is what makes a tick fire once."""

webhook = sa.Table(
    "dagtask_webhook",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("events", sa.String(64), nullable=False, comment="ended or failed"),
    sa.Column("template", sa.String(256), nullable=True, comment="only tasks of this template"),
    sa.Column("secret_ref", sa.String(512), nullable=True, comment="env:NAME or file:PATH"),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column(
        "after_event_id",
        BigId,
        nullable=False,
        server_default="0",
        comment="the history events up to this id have been looked at",
    ),
    sa.Column("create_time", Timestamp, nullable=False),
)
"""HTTP endpoints told when a task ends; fed from the history events (the outbox)."""

webhook_delivery = sa.Table(
    "dagtask_webhook_delivery",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("webhook_id", BigId, nullable=False),
    sa.Column("event_id", BigId, nullable=False, comment="the TASK_STATUS event it reports"),
    sa.Column("task_id", BigId, nullable=False),
    sa.Column("task_status", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, comment="PENDING, DELIVERED or FAILED"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", Timestamp, nullable=False),
    sa.Column("claimed_by", sa.String(256), nullable=True),
    sa.Column("claimed_until", Timestamp, nullable=True),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("create_time", Timestamp, nullable=False),
    sa.Column("delivered_at", Timestamp, nullable=True),
    sa.UniqueConstraint("webhook_id", "event_id", name="uq_dagtask_delivery_event"),
    sa.Index("ix_dagtask_delivery_due", "state", "next_attempt_at"),
)
"""One row per (webhook, ending event): its delivery attempts and outcome."""
