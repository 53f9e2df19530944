"""A host as a handler sees it: ``ctx.host(host_id)`` (docs/hosts.md, "Writing a host operation").

:class:`HostShell` runs commands on the host, copies files to and from it and checks processes,
the same way whatever the host's connector: over SSH for an ``ssh`` host, as local processes for a
``local`` one. Every line a command prints goes into the subtask's log as it comes, with the
task's secret values and the host's resolved password masked; a cancel or the subtask's timeout
stops the command's whole process group, remote or local.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence

from dagtask import secrets
from dagtask.errors import HostError
from dagtask.handlers import CancellationToken, CancelledError, stop_process_group
from dagtask.hosts import access
from dagtask.hosts.inventory import SSH_CONNECTOR
from dagtask.hosts.ssh import CommandResult, Line, OutputLines, SshConnection
from dagtask.models import HostInfo
from dagtask.services import Services


class CommandFailed(HostError):
    """A command run with ``check=True`` exited with a non-zero status."""

    def __init__(self, message: str, *, result: CommandResult, host_id: int) -> None:
        super().__init__(message, target=str(host_id))
        self.result = result


class HostShell:
    """Commands and files on one host, for a handler (thread-confined: one per attempt)."""

    def __init__(
        self,
        host: HostInfo,
        services: Services,
        *,
        log: logging.Logger,
        token: CancellationToken,
        masked: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.services = services
        self.log = log
        self.token = token
        self._masked = list(masked)
        self._seen: tuple[str, ...] | None = None
        self._values: list[str] = []

    @property
    def remote(self) -> bool:
        """Whether the host is reached over SSH (else it is this machine)."""
        return self.host.connector == SSH_CONNECTOR

    def _mask(self, text: str) -> str:
        in_use = access.secret_values_in_use()
        if in_use is not self._seen:  # a password was resolved since: merge once, not per line
            self._seen = in_use
            self._values = sorted({*self._masked, *in_use}, key=lambda v: -len(v))
        return secrets.mask_values(text, self._values)

    def _emit(self, stream: str, text: str) -> None:
        tag = self.host.name if stream == "stdout" else f"{self.host.name} stderr"
        self.log.info("[%s] %s", tag, self._mask(text))

    def run(
        self,
        command: Sequence[str] | str,
        *,
        timeout: float | None = None,
        input: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Run ``command`` (an argv list, or a shell command line) on the host.

        Each output line is logged as it comes (``[host] line``; stderr as ``[host stderr]``).
        ``timeout`` seconds, or a cancel, stops the command's process group (SIGTERM, SIGKILL
        after 3 s). With ``check`` a non-zero exit raises :class:`CommandFailed`.
        """
        text = command if isinstance(command, str) else shlex.join(command)
        self.log.info("[%s] $ %s", self.host.name, self._mask(text))
        started = time.monotonic()
        if self.remote:
            conn = self._connection()
            result = conn.run(
                command, timeout=timeout, input=input, env=env, on_line=self._emit, token=self.token
            )
        else:
            result = _run_local(
                command, timeout=timeout, input=input, env=env, on_line=self._emit, token=self.token
            )
        self.log.info(
            "[%s] exit status %d after %.2f s",
            self.host.name,
            result.exit_status,
            time.monotonic() - started,
        )
        if check and not result.ok:
            raise CommandFailed(
                f"`{self._mask(text)[:200]}` exited with status {result.exit_status} on host "
                f"{self.host.id} ({self.host.name})",
                result=result,
                host_id=self.host.id,
            )
        return result

    def upload(
        self, local: str | os.PathLike[str] | bytes, remote: str, mode: int | None = None
    ) -> None:
        """Copy a local file (or ``bytes``) to the path ``remote`` on the host."""
        self.token.raise_if_cancelled()
        self.log.info("[%s] upload to %s", self.host.name, remote)
        if self.remote:
            self._connection().upload(local, remote, mode)
            return
        if isinstance(local, bytes):
            with open(remote, "wb") as f:
                f.write(local)
        else:
            shutil.copyfile(local, remote)
        if mode is not None:
            os.chmod(remote, mode)

    def download(self, remote: str, local: str | os.PathLike[str]) -> None:
        """Copy the file ``remote`` from the host to the local path ``local``."""
        self.token.raise_if_cancelled()
        self.log.info("[%s] download %s", self.host.name, remote)
        if self.remote:
            self._connection().download(remote, local)
        else:
            shutil.copyfile(remote, local)

    def process_alive(self, pid: int, match: str | None = None) -> bool:
        """Whether ``pid`` is a live (not zombie) process on the host, and, with ``match``,
        whether its command line contains ``match``."""
        script = (
            f"st=$(sed 's/.*) //' /proc/{int(pid)}/stat 2>/dev/null | cut -d' ' -f1); "
            'case "$st" in Z|X|"") exit 1;; esac; '
        )
        if match is not None:
            script += f"tr '\\0' ' ' < /proc/{int(pid)}/cmdline | grep -qF -- {shlex.quote(match)}"
        result = self._quiet(script)
        return result.ok

    def _quiet(self, script: str) -> CommandResult:
        if self.remote:
            return self._connection().run(script, timeout=30, token=self.token)
        return _run_local(script, timeout=30, input=None, env=None, on_line=None, token=self.token)

    def _connection(self) -> SshConnection:
        from dagtask.hosts.remote import SshConnector

        connector = self.services.connector(self.host)
        assert isinstance(connector, SshConnector)
        return connector.connection(self.host)


def _run_local(
    command: Sequence[str] | str,
    *,
    timeout: float | None,
    input: bytes | str | None,
    env: Mapping[str, str] | None,
    on_line: Line | None,
    token: CancellationToken,
) -> CommandResult:
    """The local twin of :meth:`SshConnection.run`: own process group, streamed lines."""
    token.raise_if_cancelled()
    argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=None if env is None else {**os.environ, **env},
        start_new_session=True,
    )
    if input is not None:
        assert proc.stdin is not None
        data = input.encode() if isinstance(input, str) else input
        threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True).start()
    streams = {
        "stdout": OutputLines(on_line, "stdout"),
        "stderr": OutputLines(on_line, "stderr"),
    }
    # No marker line locally: the process group is the child's pid.
    streams["stderr"].pgid = proc.pid
    selector = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
    selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
    deadline = None if timeout is None else time.monotonic() + timeout
    open_streams = 2
    try:
        while open_streams:
            for key, _ in selector.select(0.05):
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                streams[key.data].feed(data)
            if token.cancelled:
                stop_process_group(proc)
                raise CancelledError(token.reason or "cancelled")
            if deadline is not None and time.monotonic() > deadline:
                stop_process_group(proc)
                raise HostError(
                    f"`{_short_cmd(argv)}` did not end within {timeout:g} s and was stopped"
                )
        code = proc.wait()
    finally:
        selector.close()
        for stream in streams.values():
            stream.flush()
        proc.stdout.close()
        proc.stderr.close()
    return CommandResult(code, streams["stdout"].text(), streams["stderr"].text())


def _feed(pipe: object, data: bytes) -> None:
    with contextlib.suppress(OSError):
        pipe.write(data)  # type: ignore[attr-defined]
        pipe.close()  # type: ignore[attr-defined]


def _short_cmd(argv: Sequence[str]) -> str:
    text = shlex.join(argv)
    return text if len(text) <= 120 else text[:117] + "..."
