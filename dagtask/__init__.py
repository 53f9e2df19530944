"""dagtask: an embeddable DAG workflow engine modelled on OceanBase Cloud Platform's task engine.

The public API is what this module exports.
"""

from __future__ import annotations

from dagtask.context import TaskContext
from dagtask.engine import Engine
from dagtask.errors import (
    ArgumentError,
    ContextError,
    CycleError,
    DagtaskError,
    HandlerImportError,
    HostError,
    HostNotFoundError,
    OperationNotAllowedError,
    RollbackProhibitedError,
    SchemaOutdatedError,
    StoreError,
    TaskNotFoundError,
    TaskTimeoutError,
    TemplateError,
)
from dagtask.handlers import (
    CancellationToken,
    CancelledError,
    CommandError,
    Handler,
    HandlerResult,
    RunContext,
)
from dagtask.models import HostInfo, SubtaskInfo, TaskEvent, TaskInfo, TaskPage
from dagtask.states import Operation, SubtaskStatus, TaskStatus, TaskType
from dagtask.template import (
    Recovery,
    SplitMethod,
    SubtaskSpec,
    TaskTemplate,
    TemplateBuilder,
    load_template,
)

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "CancellationToken",
    "CancelledError",
    "CommandError",
    "ContextError",
    "CycleError",
    "DagtaskError",
    "Engine",
    "Handler",
    "HandlerImportError",
    "HandlerResult",
    "HostError",
    "HostInfo",
    "HostNotFoundError",
    "Operation",
    "OperationNotAllowedError",
    "Recovery",
    "RollbackProhibitedError",
    "RunContext",
    "SchemaOutdatedError",
    "SplitMethod",
    "StoreError",
    "SubtaskInfo",
    "SubtaskSpec",
    "SubtaskStatus",
    "TaskContext",
    "TaskEvent",
    "TaskInfo",
    "TaskNotFoundError",
    "TaskPage",
    "TaskStatus",
    "TaskTemplate",
    "TaskTimeoutError",
    "TaskType",
    "TemplateBuilder",
    "TemplateError",
    "__version__",
    "load_template",
]
