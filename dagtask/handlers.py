"""The handler contract: what a subtask runs, and how a dotted path becomes one.

A handler is a class with ``execute(self, ctx)`` and optionally ``rollback(self, ctx)``,
``retry(self, ctx)`` and ``cancel(self)``, or a plain function ``fn(ctx)`` used as ``execute``.
It returns ``None`` (the output is the input), a :class:`TaskContext`, or a mapping of stringMap
updates. Raising fails the attempt. A long handler checks ``ctx.token`` (or waits on it) so a
timeout or a cancel can stop it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dagtask.context import TaskContext
from dagtask.errors import HandlerImportError
from dagtask.states import Operation

if TYPE_CHECKING:
    from dagtask.hosts.shell import HostShell
    from dagtask.services import Services

HandlerResult = TaskContext | Mapping[str, str] | None


class CancelledError(Exception):
    """Raised by :meth:`CancellationToken.raise_if_cancelled` once a stop was asked for."""


class CancellationToken:
    """Set by the watchdog (timeout) or by a cancel; handlers poll it or wait on it.

    Callbacks registered with :meth:`on_cancel` run once when the token is set, e.g. to terminate
    a child process the handler started.
    """

    def __init__(self, fence: Callable[[], str | None] | None = None) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self._fence = fence
        self.reason = ""

    @property
    def cancelled(self) -> bool:
        """Whether a stop was asked for.

        Also true the moment the worker's lease can no longer be trusted (``fence`` gives a
        reason): a handler that checks its token stops at once when its process resumes from a
        pause longer than the lease, before the watchdog thread has even been scheduled.
        """
        if self._event.is_set():
            return True
        if self._fence is not None:
            reason = self._fence()
            if reason is not None:
                self.cancel(reason)
                return True
        return False

    def cancel(self, reason: str) -> None:
        """Ask the handler to stop, and run the registered callbacks."""
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a failing callback must not stop the others
                logging.getLogger(__name__).exception("cancellation callback failed")

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the token is set (at once if it already is)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True (early) if the token was set."""
        return self._event.wait(seconds)

    def raise_if_cancelled(self) -> None:
        """Raise :class:`CancelledError` if a stop was asked for."""
        if self.cancelled:
            raise CancelledError(self.reason or "cancelled")


@dataclass
class RunContext:
    """What a handler receives: its input context plus the engine's services for this attempt."""

    context: TaskContext
    task_id: int
    subtask_id: int
    operation: Operation
    run_time: int
    token: CancellationToken
    services: Services
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("dagtask.handler"))
    subtask_name: str = ""

    @property
    def string_map(self) -> dict[str, str]:
        """The input stringMap."""
        return self.context.string_map

    @property
    def list_map(self) -> dict[str, list[str]]:
        """The input listMap."""
        return self.context.list_map

    @property
    def parallel_idx(self) -> int:
        """This copy's index in a fan-out, or -1."""
        return self.context.parallel_idx

    def get(self, key: str, list_key: str | None = None) -> str:
        """This copy's argument: ``listMap[list_key][parallelIdx]`` or ``stringMap[key]``."""
        return self.context.get(key, list_key)

    def host(self, host_id: int | str | None = None) -> HostShell:
        """The host ``host_id`` (default: this subtask's ``host_id`` argument, or this parallel
        copy's element of ``host_ids``) as a :class:`~dagtask.hosts.shell.HostShell`: run
        commands on it, copy files, check processes, over SSH or locally as its connector says.
        """
        from dagtask import secrets
        from dagtask.hosts.shell import HostShell

        if host_id is None:
            host_id = self.get("host_id", "host_ids")
        host = self.services.hosts.get(int(host_id))
        return HostShell(
            host,
            self.services,
            log=self.log,
            token=self.token,
            masked=secrets.secret_values(self.context),
        )

    def output(self, **strings: str) -> TaskContext:
        """The input context with ``strings`` written into its stringMap."""
        return self.context.with_strings(strings)

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> int:
        """Run a command, logging each line of its output into the subtask log.

        The command runs in its own process group; a timeout or a cancel terminates the whole
        group (SIGTERM, then SIGKILL after 3 s) and raises :class:`CancelledError`. With
        ``check``, a non-zero exit raises :class:`CommandError`. Returns the exit code.
        """
        self.token.raise_if_cancelled()
        name = os.path.basename(argv[0])
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.token.on_cancel(lambda: _terminate_group(proc))
        assert proc.stdout is not None
        for text in proc.stdout:
            self.log.info("[%s] %s", name, text.rstrip("\n"))
        code = proc.wait()
        self.token.raise_if_cancelled()
        if check and code != 0:
            raise CommandError(f"command {' '.join(argv)!r} exited with status {code}")
        return code


class CommandError(Exception):
    """A command run with :meth:`RunContext.run` exited with a non-zero status."""


KILL_GRACE_SECONDS = 3.0
"""Between the SIGTERM and the SIGKILL sent to a stopped command's process group."""


def stop_process_group(proc: subprocess.Popen[Any], grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM ``proc``'s process group, and SIGKILL whatever of the group is left after
    ``grace`` seconds (children that ignore SIGTERM too); returns once the leader is reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, so that only live members keep the group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _terminate_group(proc: subprocess.Popen[str]) -> None:
    """:func:`stop_process_group` in the background (a cancel callback must not block)."""
    if proc.poll() is not None:
        return
    threading.Thread(
        target=stop_process_group, args=(proc,), name="dagtask-kill", daemon=True
    ).start()


class HandlerProtocol(Protocol):
    """The methods the engine calls on a handler instance."""

    def execute(self, ctx: RunContext) -> HandlerResult: ...


class Handler:
    """Base class for handlers; subclasses implement :meth:`execute` and may override the rest."""

    prohibit_rollback: bool = False

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Do the work; return the output context, stringMap updates, or None."""
        raise NotImplementedError

    def rollback(self, ctx: RunContext) -> HandlerResult:
        """Undo :meth:`execute`; the default undoes nothing."""
        return None

    def retry(self, ctx: RunContext) -> HandlerResult:
        """Run again after a failure; the default is rollback followed by execute."""
        self.rollback(ctx)
        return self.execute(ctx)

    def cancel(self) -> None:
        """Called (from another thread) when the attempt must stop; the token is set too."""


class FunctionHandler(Handler):
    """Adapts a plain ``fn(ctx)`` to the handler interface."""

    def __init__(self, fn: Callable[[RunContext], HandlerResult]) -> None:
        self.fn = fn

    def execute(self, ctx: RunContext) -> HandlerResult:
        """Call the function."""
        return self.fn(ctx)


HandlerFactory = Callable[[], Handler]


MAIN_MODULE = "__main__"


def dotted_path(obj: object, *, what: str = "handler") -> str:
    """The stable name of a handler (or hook: ``what``) class or function: ``module.QualName``.

    The database stores this name and whichever worker claims the subtask imports it, maybe in
    another process or on another machine. A handler defined in the script being run (module
    ``__main__``) has no such name: in a worker, ``__main__`` is the worker's own program, so the
    subtask would fail there with :class:`HandlerImportError`. So such a handler is refused here,
    when the template is built, unless the script was started as ``python -m package.module``: then
    its real module name is known and used. Define handlers in a module (``greet.py`` next to the
    script works: ``dagtask worker`` imports from the folder it starts in).
    """
    if isinstance(obj, str):
        return obj
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise HandlerImportError(
            f"{what} {obj!r} has no importable dotted path; "
            "define it at module level (not inside a function or as a lambda)"
        )
    if module == MAIN_MODULE:
        module = _main_module_name(qualname, what)
    return f"{module}.{qualname}"


def _main_module_name(qualname: str, what: str) -> str:
    """The importable name of the running script's module, or a HandlerImportError."""
    spec = getattr(sys.modules.get(MAIN_MODULE), "__spec__", None)
    name = getattr(spec, "name", None)
    if isinstance(name, str) and name and name != MAIN_MODULE:
        # `python -m pkg.mod`: the spec names the module every worker can import.
        return name
    raise HandlerImportError(
        f"{what} {qualname!r} is defined in the script being run (module __main__), which no "
        f"worker in another process can import; move it into a module (e.g. {what}s.py) and "
        "import it from there"
    )


@functools.lru_cache(maxsize=1024)
def resolve(path: str) -> HandlerFactory:
    """Import the handler named by ``path`` and return a factory of fresh handler instances.

    Raises :class:`HandlerImportError` naming the path and the reason when it does not import or
    is neither a class with ``execute`` nor a callable.
    """
    obj = _locate(path, "handler", "package.module.ClassName")
    if inspect.isclass(obj):
        if not callable(getattr(obj, "execute", None)):
            raise HandlerImportError(f"handler class {path!r} has no execute(self, ctx) method")
        cls = obj
        if issubclass(cls, Handler):
            return cls
        return functools.partial(_wrap_plain_class, cls)
    if callable(obj):
        fn = obj
        return lambda: FunctionHandler(fn)
    raise HandlerImportError(f"handler {path!r} is neither a class nor a function")


@functools.lru_cache(maxsize=1024)
def resolve_hook(path: str) -> Callable[..., object]:
    """Import the hook function named by ``path`` (docs/templates.md, "Hooks").

    Raises :class:`HandlerImportError` naming the path and the reason when it does not import or
    is not a function (a class would be instantiated, not called, so it is refused).
    """
    obj = _locate(path, "hook", "package.module.function")
    if inspect.isclass(obj) or not callable(obj):
        kind = "a class" if inspect.isclass(obj) else type(obj).__name__
        raise HandlerImportError(f"hook {path!r} is {kind}, not a function; name a function")
    hook: Callable[..., object] = obj
    return hook


def _locate(path: str, what: str, example: str) -> Any:
    """The object a dotted path (``pkg.mod.Name`` or ``pkg.mod:Name``) names, imported;
    ``what`` (handler, hook) and ``example`` word the HandlerImportError when it cannot be."""
    module_name, _, attr_path = path.partition(":")
    if not attr_path:
        module_name, _, attr_path = path.rpartition(".")
    if not module_name or not attr_path:
        raise HandlerImportError(f"{what} {path!r} is not a dotted path; write it as {example}")
    if module_name.split(".")[0] == MAIN_MODULE:
        # Stored by an older dagtask or written by hand: `__main__` here is this process's own
        # program, never the script that defined the handler.
        raise HandlerImportError(
            f"{what} {path!r} was defined in a script run as __main__, which this process "
            f"cannot import; move the {what} into a module and submit the task again"
        )
    obj: Any = None
    # The class may be nested (module.Outer.Inner): import the longest module prefix that works.
    parts = f"{module_name}.{attr_path}".split(".")
    _check_parts(path, parts, what, example)
    error: Exception | None = None
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        try:
            obj = _import(path, module, what)
        except ImportError as exc:
            error = error or exc
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError as exc:
            raise HandlerImportError(
                f"{what} {path!r} does not exist: module {'.'.join(parts[:cut])!r} "
                f"has no attribute {'.'.join(parts[cut:])!r}"
            ) from exc
        return obj
    raise HandlerImportError(
        f"{what} {path!r} does not import ({error}); check the dotted path and that its "
        "package is installed or on PYTHONPATH"
    ) from error


MAX_PATH_PARTS = 32
"""A dotted path deeper than this is a mistake (and would exhaust the import machinery)."""


def _check_parts(path: str, parts: list[str], what: str, example: str) -> None:
    """Refuse a dotted path that cannot name a Python object, before importing anything."""
    if len(parts) > MAX_PATH_PARTS:
        raise HandlerImportError(
            f"{what} {path[:80]!r}... has {len(parts)} dotted parts (at most {MAX_PATH_PARTS}); "
            f"write it as {example}"
        )
    bad = next((part for part in parts if not part.isidentifier()), None)
    if bad is not None:
        raise HandlerImportError(
            f"{what} {path!r} is not a dotted path of Python names ({bad!r} is not one); "
            f"write it as {example}"
        )


def _import(path: str, module: str, what: str) -> Any:
    """Import ``module`` for the handler (or hook: ``what``) ``path``; anything but a missing
    module (ImportError) that importing it raises, even ``sys.exit()``, becomes a
    HandlerImportError naming the module and the cause. KeyboardInterrupt is the user's and
    goes through."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise
    except SyntaxError as exc:
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else "its source"
        raise HandlerImportError(
            f"{what} {path!r}: module {module!r} has a syntax error ({where}: {exc.msg}); "
            "fix the module"
        ) from exc
    except (Exception, SystemExit) as exc:
        cause = " ".join(str(exc).split())
        failure = f"{type(exc).__name__}: {cause}" if cause else type(exc).__name__
        raise HandlerImportError(
            f"{what} {path!r}: importing module {module!r} failed ({failure[:300]}); a {what} "
            "module must import without side effects that fail"
        ) from exc


class _PlainClassHandler(Handler):
    """Adapts a class that has ``execute`` (and maybe more) but does not subclass Handler."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.prohibit_rollback = bool(getattr(inner, "prohibit_rollback", False))

    def execute(self, ctx: RunContext) -> HandlerResult:
        result: HandlerResult = self.inner.execute(ctx)
        return result

    def rollback(self, ctx: RunContext) -> HandlerResult:
        method = getattr(self.inner, "rollback", None)
        result: HandlerResult = method(ctx) if method else None
        return result

    def retry(self, ctx: RunContext) -> HandlerResult:
        method = getattr(self.inner, "retry", None)
        if method is None:
            return super().retry(ctx)
        result: HandlerResult = method(ctx)
        return result

    def cancel(self) -> None:
        method = getattr(self.inner, "cancel", None)
        if method:
            method()


def _wrap_plain_class(cls: type[Any]) -> Handler:
    return _PlainClassHandler(cls())


def prohibits_rollback(path: str) -> bool:
    """Whether the handler named by ``path`` is a class marked ``prohibit_rollback = True``."""
    factory = resolve(path)
    cls = (
        getattr(factory, "args", (factory,))[0]
        if isinstance(factory, functools.partial)
        else factory
    )
    return bool(getattr(cls, "prohibit_rollback", False))


def output_context(result: HandlerResult, given: TaskContext) -> TaskContext:
    """Turn a handler's return value into its output context."""
    if result is None:
        return given
    if isinstance(result, TaskContext):
        return result
    if isinstance(result, Mapping):
        return given.with_strings({str(k): str(v) for k, v in result.items()})
    raise TypeError(
        f"a handler returned {type(result).__name__}; return None, a TaskContext or a mapping "
        "of stringMap updates"
    )
