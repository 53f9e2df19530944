"""dagtask: an embeddable DAG workflow engine modelled on OceanBase Cloud Platform's task engine.

The public API is what this module exports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from dagtask.hooks import HookAbort, SubtaskResult
    from dagtask.models import HostInfo, SubtaskInfo, TaskEvent, TaskInfo, TaskPage
    from dagtask.states import Operation, SubtaskStatus, TaskStatus, TaskType
    from dagtask.template import (
        Hooks,
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
    "HookAbort",
    "Hooks",
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
    "SubtaskResult",
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


_EXPORTS = {
    "TaskContext": "dagtask.context",
    "Engine": "dagtask.engine",
    "ArgumentError": "dagtask.errors",
    "ContextError": "dagtask.errors",
    "CycleError": "dagtask.errors",
    "DagtaskError": "dagtask.errors",
    "HandlerImportError": "dagtask.errors",
    "HostError": "dagtask.errors",
    "HostNotFoundError": "dagtask.errors",
    "OperationNotAllowedError": "dagtask.errors",
    "RollbackProhibitedError": "dagtask.errors",
    "SchemaOutdatedError": "dagtask.errors",
    "StoreError": "dagtask.errors",
    "TaskNotFoundError": "dagtask.errors",
    "TaskTimeoutError": "dagtask.errors",
    "TemplateError": "dagtask.errors",
    "CancellationToken": "dagtask.handlers",
    "CancelledError": "dagtask.handlers",
    "CommandError": "dagtask.handlers",
    "Handler": "dagtask.handlers",
    "HandlerResult": "dagtask.handlers",
    "RunContext": "dagtask.handlers",
    "HookAbort": "dagtask.hooks",
    "SubtaskResult": "dagtask.hooks",
    "HostInfo": "dagtask.models",
    "SubtaskInfo": "dagtask.models",
    "TaskEvent": "dagtask.models",
    "TaskInfo": "dagtask.models",
    "TaskPage": "dagtask.models",
    "Operation": "dagtask.states",
    "SubtaskStatus": "dagtask.states",
    "TaskStatus": "dagtask.states",
    "TaskType": "dagtask.states",
    "Hooks": "dagtask.template",
    "Recovery": "dagtask.template",
    "SplitMethod": "dagtask.template",
    "SubtaskSpec": "dagtask.template",
    "TaskTemplate": "dagtask.template",
    "TemplateBuilder": "dagtask.template",
    "load_template": "dagtask.template",
}
"""Where each public name lives: imported on first use, so `import dagtask` (and with it
`dagtask --version`) does not load SQLAlchemy, Alembic and pydantic until they are needed."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dagtask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
