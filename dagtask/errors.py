"""Every error a dagtask user can meet, with OCP's error codes where OCP has one.

Each error says what was wrong and what to do about it. ``code`` is the OCP error code carried in
the REST error envelope (``error.code``) and ``http_status`` the HTTP status it maps to
(docs/api.md).
"""

from __future__ import annotations


class DagtaskError(Exception):
    """Base class of all dagtask errors."""

    code: int = 20000 - 1  # overridden by subclasses that have an OCP code
    http_status: int = 500

    def __init__(self, message: str, *, target: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.target = target

    def __str__(self) -> str:
        return self.message


class TaskNotFoundError(DagtaskError):
    """The task (or subtask) id does not exist (OCP 20000)."""

    code = 20000
    http_status = 404


class CycleError(DagtaskError):
    """A template's links close a cycle (OCP 20001)."""

    code = 20001
    http_status = 400

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        path = " -> ".join([*cycle, cycle[0]]) if cycle else "?"
        super().__init__(
            f"error 20001: the subtask links form a cycle: {path}; "
            "remove one of these upstream links so the template is a DAG"
        )


class ContextError(DagtaskError):
    """A task context is invalid or upstream contexts disagree (OCP 20002)."""

    code = 20002
    http_status = 400


class OperationNotAllowedError(DagtaskError):
    """The operation is not supported in the task's or subtask's current state (OCP 20003)."""

    code = 20003
    http_status = 409


class RollbackProhibitedError(DagtaskError):
    """The task cannot be rolled back (OCP 20004)."""

    code = 20004
    http_status = 409


class TemplateError(DagtaskError):
    """A template is malformed: unknown upstream, duplicate name, bad handler, bad value."""

    code = 400
    http_status = 400


class HandlerImportError(TemplateError):
    """A handler's dotted path does not resolve to an importable class or function."""


class ArgumentError(DagtaskError):
    """A task argument (stringMap / listMap value) is missing or invalid."""

    code = 400
    http_status = 400


class HostNotFoundError(DagtaskError):
    """No host with this id is in the inventory."""

    code = 404
    http_status = 404


class HostError(DagtaskError):
    """A host or its agent is not in a state the operation can work with."""

    code = 409
    http_status = 409


class HostBusyError(HostError):
    """A host already has a running host operation (one per host at a time)."""

    def __init__(self, message: str, *, host_id: int, task_id: int) -> None:
        super().__init__(message, target=f"hostId={host_id}")
        self.host_id = host_id
        self.task_id = task_id
        """The running task that holds the host."""


class StoreError(DagtaskError):
    """The database could not be opened or used."""

    code = 500
    http_status = 500


class SchemaOutdatedError(StoreError):
    """The database schema is older than this version of dagtask needs."""


class TaskTimeoutError(DagtaskError):
    """Waiting for a task did not end within the deadline."""

    code = 408
    http_status = 408


class AuthenticationError(DagtaskError):
    """No credentials, or credentials that name no enabled user with that password (401)."""

    code = 401
    http_status = 401


class PermissionDeniedError(DagtaskError):
    """The user lacks the role the endpoint needs (403); ``target`` names the role."""

    code = 403
    http_status = 403


class RateLimitedError(DagtaskError):
    """The caller has used up its requests of the current window (429)."""

    code = 429
    http_status = 429


class UserError(DagtaskError):
    """A user cannot be added or changed (name taken)."""

    code = 409
    http_status = 409


class UserNotFoundError(DagtaskError):
    """No user has this name."""

    code = 404
    http_status = 404


class SchemaMissingError(StoreError):
    """The database has no dagtask schema, and the command only reads (it never creates one)."""


class ConcurrentChangeError(StoreError):
    """A subtask changed between the read that planned a change and the change itself (a
    worker's claim or finish crossed an operator action). The transaction was rolled back, so
    it is safe to try again; the store does so before this reaches anyone."""

    code = 409
    http_status = 409


class ConfigError(ArgumentError):
    """A setting from the environment or a config file is malformed; the message names the
    variable, or the file and key."""


class DefinitionNotFoundError(DagtaskError):
    """No task definition with that id or name (404 over REST)."""

    code = 404
    http_status = 404


class WebhookNotFoundError(DagtaskError):
    """No webhook with that id (404 over REST)."""

    code = 404
    http_status = 404
