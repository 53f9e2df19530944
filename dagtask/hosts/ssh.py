"""SSH to remote hosts: verified connections, remote commands that can be stopped, a pool.

Built on paramiko (the ``dagtask[ssh]`` extra). paramiko is synchronous and its Transport is
thread-safe, which fits dagtask's runner threads: a handler calls :meth:`SshConnection.run` and
blocks, the way :meth:`RunContext.run` blocks on a local command; asyncssh would need an event
loop thread and a bridge for every call (``docs/hosts.md`` says more).

What runs where:

* **Host keys** are verified by dagtask itself, never by paramiko's policies: a key pinned in the
  inventory (``dagtask hosts trust``) must match; otherwise the known-hosts file must list it
  (``~/.ssh/known_hosts`` unless the host names another); an unknown key is refused unless the
  operator set ``accept_new_host_key`` for that host (then it is pinned); a changed key is always
  refused, naming both fingerprints.
* **Remote commands** run as ``exec CMD`` under the login shell, which sshd made a session leader:
  its pid is the process group of the command and of everything it starts. The first line on
  stderr reports that pid (a marker line, not shown); a cancel or a timeout then sends SIGTERM to
  the whole remote group, SIGKILL after :data:`KILL_GRACE_SECONDS`, over a second channel.
* **Connections** are pooled per destination (address, port, user, authentication, jump route):
  the steps of a task reuse one, at most :data:`PER_HOST_LIMIT` commands run on one host at a
  time, and a connection idle for :data:`IDLE_SECONDS` is closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagtask.errors import HostError
from dagtask.handlers import CancellationToken, CancelledError
from dagtask.hosts import access as access_mod
from dagtask.hosts.access import load_paramiko, ssh_settings
from dagtask.hosts.hostkeys import HostKeyError, PinKey, Verify, key_line
from dagtask.models import HostInfo

if TYPE_CHECKING:
    import paramiko

_log = logging.getLogger("dagtask.ssh")

IDLE_SECONDS = float(os.environ.get("DAGTASK_SSH_IDLE_SECONDS", "60"))
"""A pooled connection unused this long is closed."""
PER_HOST_LIMIT = int(os.environ.get("DAGTASK_SSH_PER_HOST", "8"))
"""At most this many commands run at once on one host (sshd's MaxSessions is 10 by default)."""
KILL_GRACE_SECONDS = 3.0
"""Between the SIGTERM and the SIGKILL sent to a cancelled remote command's process group."""
OUTPUT_LIMIT = 1 << 20
"""How much of each stream a :class:`CommandResult` keeps (the log gets every line)."""
_PGID_MARK = "\x1edagtask-pgid "
_POLL = 0.05

Line = Callable[[str, str], None]
"""``on_line(stream, text)``: called for each line of output, stream "stdout" or "stderr"."""
FindHost = Callable[[str], HostInfo]
"""Looks a host up by inventory name (for jump hosts)."""


@dataclass(frozen=True)
class CommandResult:
    """How a remote (or local) command ended."""

    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether it exited with status 0."""
        return self.exit_status == 0


def _short(text: str) -> str:
    return text if len(text) <= 120 else text[:117] + "..."


def _route_key(host: HostInfo, find: FindHost | None, depth: int = 0) -> tuple[Any, ...]:
    access = ssh_settings(host)
    hop: tuple[Any, ...] = ()
    if access.jump_host:
        if find is None or depth > 4:
            raise HostError(f"host {host.id} ({host.name}): cannot resolve its jump host")
        hop = _route_key(find(access.jump_host), find, depth + 1)
    secret = access.key_file or access.password_ref or ""
    # What the host key was checked against is part of the identity: a host record with
    # another pin or known-hosts file gets its own, separately verified connection.
    trust = (host.host_key, access.known_hosts, access.accept_new_host_key)
    return (host.inner_ip, access.port, access.user, access.auth, secret, trust, hop)


class _Link:
    """One authenticated SSH connection as the pool keeps it (shared by every host record that
    routes to the same destination)."""

    def __init__(self, client: paramiko.SSHClient, via: _Link | None, limit: int) -> None:
        self.client = client
        self.via = via
        self.last_used = time.monotonic()
        self.busy = 0
        """Commands and transfers running on it now: the idle reaper never closes a busy link
        (a command may run far longer than the idle time)."""
        self.sftp_lock = threading.Lock()
        self.limit = threading.BoundedSemaphore(limit)
        self._busy_lock = threading.Lock()

    @contextlib.contextmanager
    def using(self) -> Iterator[None]:
        """Mark the link busy while the block runs; idle from its end."""
        with self._busy_lock:
            self.busy += 1
            self.last_used = time.monotonic()
        try:
            yield
        finally:
            with self._busy_lock:
                self.busy -= 1
                self.last_used = time.monotonic()

    @property
    def alive(self) -> bool:
        transport = self.client.get_transport()
        return transport is not None and transport.is_active()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


class SshConnection:
    """A pooled SSH connection, as seen for one host; thread-safe (a channel per command)."""

    def __init__(self, host: HostInfo, link: _Link) -> None:
        self.host = host
        self._link = link

    @property
    def client(self) -> paramiko.SSHClient:
        """The paramiko client (for what this class does not offer)."""
        return self._link.client

    @property
    def alive(self) -> bool:
        """Whether the transport is still up."""
        return self._link.alive

    def close(self) -> None:
        """Close the connection (a jump connection under it stays pooled)."""
        self._link.close()

    def run(
        self,
        command: Sequence[str] | str,
        *,
        timeout: float | None = None,
        input: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
        on_line: Line | None = None,
        token: CancellationToken | None = None,
        label: str | None = None,
    ) -> CommandResult:
        """Run ``command`` (an argv list, or a shell command line as a string) on the host.

        ``label`` says what the command does in messages (default: the command itself).

        Output lines go to ``on_line`` as they arrive. A ``timeout`` (seconds) or a set
        ``token`` stops the remote command's whole process group (SIGTERM, then SIGKILL) and
        raises :class:`HostError` (timeout) or :class:`CancelledError`. A connection lost midway
        raises :class:`HostError` naming the host and the command. ``env`` values are exported
        by the remote shell before it ``exec``\\ s the command.
        """
        text = command if isinstance(command, str) else shlex.join(command)
        shown = label or f"running `{_short(text)}`"
        exports = "".join(
            f"export {name}={shlex.quote(value)}; " for name, value in (env or {}).items()
        )
        target = text if not isinstance(command, str) else f"sh -c {shlex.quote(text)}"
        script = f"printf '%s%s\\n' '{_PGID_MARK}' \"$$\" >&2; {exports}exec {target}"
        with self._link.using(), self._link.limit:
            return self._run(script, shown, timeout, input, on_line, token)

    def _run(
        self,
        script: str,
        shown: str,
        timeout: float | None,
        input: bytes | str | None,
        on_line: Line | None,
        token: CancellationToken | None,
    ) -> CommandResult:
        if token is not None:
            token.raise_if_cancelled()
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise self._lost(shown)
        try:
            chan = transport.open_session(timeout=ssh_settings(self.host).connect_timeout)
            chan.exec_command(script)
            if input is not None:
                chan.sendall(input.encode() if isinstance(input, str) else input)
            chan.shutdown_write()
        except (OSError, EOFError, load_paramiko().SSHException) as exc:
            raise self._lost(shown, exc) from exc
        streams = {
            "stdout": OutputLines(on_line, "stdout"),
            "stderr": OutputLines(on_line, "stderr"),
        }
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                readable, _, _ = select.select([chan], [], [], _POLL)
                if readable or chan.recv_ready() or chan.recv_stderr_ready():
                    while chan.recv_ready():
                        streams["stdout"].feed(chan.recv(65536))
                    while chan.recv_stderr_ready():
                        streams["stderr"].feed(chan.recv_stderr(65536))
                ready = chan.recv_ready() or chan.recv_stderr_ready()
                if chan.exit_status_ready() and not ready:
                    break
                if chan.closed and not chan.exit_status_ready():
                    break
                if token is not None and token.cancelled:
                    self._stop_group(streams["stderr"].pgid)
                    raise CancelledError(token.reason or "cancelled")
                if deadline is not None and time.monotonic() > deadline:
                    self._stop_group(streams["stderr"].pgid)
                    raise HostError(
                        f"{shown} on host {self.host.id} ({self.host.name}) took longer than "
                        f"{timeout:g} s and was stopped (its process group got SIGTERM, then "
                        "SIGKILL)",
                        target=str(self.host.id),
                    )
                if not transport.is_active():
                    break
        finally:
            for stream in streams.values():
                stream.flush()
            with contextlib.suppress(Exception):
                chan.close()
        if not chan.exit_status_ready():
            raise self._lost(shown)
        status = chan.recv_exit_status()
        if status == -1:  # closed without an exit status: the connection went away
            raise self._lost(shown)
        return CommandResult(status, streams["stdout"].text(), streams["stderr"].text())

    def _lost(self, shown: str, exc: BaseException | None = None) -> HostError:
        self.close()
        why = f" ({exc})" if exc is not None and str(exc) else ""
        return HostError(
            f"the SSH connection to host {self.host.id} ({self.host.name}, "
            f"{access_mod.describe(self.host)}) was lost while {shown}{why}; what ran may "
            "still be running there. Check the host, then retry the step",
            target=str(self.host.id),
        )

    def _stop_group(self, pgid: int | None) -> None:
        """SIGTERM the remote process group ``pgid``, SIGKILL it if it is still there later."""
        if pgid is None or pgid <= 1:
            return
        script = (
            f"kill -TERM -- -{pgid} 2>/dev/null || exit 0; i=0; "
            f"while kill -0 -- -{pgid} 2>/dev/null && [ $i -lt {int(KILL_GRACE_SECONDS * 10)} ]; "
            f"do sleep 0.1; i=$((i+1)); done; kill -KILL -- -{pgid} 2>/dev/null; exit 0"
        )
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            return
        try:
            chan = transport.open_session(timeout=ssh_settings(self.host).connect_timeout)
            chan.exec_command(script)
            chan.recv_exit_status()
            chan.close()
        except (OSError, EOFError, load_paramiko().SSHException) as exc:
            _log.warning("could not stop process group %d on host %d: %s", pgid, self.host.id, exc)

    def upload(
        self, local: str | os.PathLike[str] | bytes, remote: str, mode: int | None = None
    ) -> None:
        """Copy a local file (or ``bytes``) to ``remote`` over SFTP, then chmod it to ``mode``."""
        try:
            with self._link.using(), self._link.sftp_lock, self.client.open_sftp() as sftp:
                if isinstance(local, bytes):
                    with sftp.open(remote, "wb") as f:
                        f.write(local)
                else:
                    sftp.put(os.fspath(local), remote)
                if mode is not None:
                    sftp.chmod(remote, mode)
        except OSError as exc:
            raise HostError(
                f"cannot upload to {remote} on host {self.host.id} ({self.host.name}): {exc}",
                target=str(self.host.id),
            ) from exc

    def download(self, remote: str, local: str | os.PathLike[str]) -> None:
        """Copy ``remote`` from the host to the local path ``local`` over SFTP."""
        try:
            with self._link.using(), self._link.sftp_lock, self.client.open_sftp() as sftp:
                sftp.get(remote, os.fspath(local))
        except OSError as exc:
            raise HostError(
                f"cannot download {remote} from host {self.host.id} ({self.host.name}): {exc}",
                target=str(self.host.id),
            ) from exc


@dataclass
class OutputLines:
    """Splits one output stream into lines; picks the process-group marker out of stderr."""

    on_line: Line | None
    name: str
    pgid: int | None = None
    _pending: bytes = b""
    _kept: list[str] = field(default_factory=list)
    _size: int = 0

    def feed(self, data: bytes) -> None:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for raw in lines:
            self._line(raw.decode(errors="replace").rstrip("\r"))

    def flush(self) -> None:
        if self._pending:
            self._line(self._pending.decode(errors="replace"))
            self._pending = b""

    def _line(self, text: str) -> None:
        if self.name == "stderr" and self.pgid is None and text.startswith(_PGID_MARK):
            with contextlib.suppress(ValueError):
                self.pgid = int(text[len(_PGID_MARK) :])
            return
        if self._size < OUTPUT_LIMIT:
            self._kept.append(text)
            self._size += len(text) + 1
        if self.on_line is not None:
            self.on_line(self.name, text)

    def text(self) -> str:
        return "".join(f"{line}\n" for line in self._kept)


class SshPool:
    """Authenticated connections by destination, reused across steps; idle ones are closed."""

    def __init__(
        self, idle_seconds: float = IDLE_SECONDS, per_host_limit: int = PER_HOST_LIMIT
    ) -> None:
        self.idle_seconds = idle_seconds
        self.per_host_limit = per_host_limit
        """Commands that may run at once over one connection (the others wait their turn)."""
        self._lock = threading.Lock()
        self._connections: dict[tuple[Any, ...], _Link] = {}
        self._connecting: dict[tuple[Any, ...], threading.Lock] = {}
        self._reaper: threading.Thread | None = None
        self.connects = 0
        """How many connections this pool opened (tests and benchmarks read it)."""

    def get(
        self, host: HostInfo, *, find: FindHost | None = None, pin: PinKey | None = None
    ) -> SshConnection:
        """A live connection to ``host``, opened (and verified) if there is none."""
        return SshConnection(host, self._link(host, find, pin))

    def _link(self, host: HostInfo, find: FindHost | None, pin: PinKey | None) -> _Link:
        key = _route_key(host, find)
        with self._lock:
            link = self._connections.get(key)
            if link is not None and link.alive:
                link.last_used = time.monotonic()
                return link
            gate = self._connecting.setdefault(key, threading.Lock())
        with gate:  # one connect per destination at a time; the others reuse it
            with self._lock:
                link = self._connections.get(key)
                if link is not None and link.alive:
                    return link
            via = None
            access = ssh_settings(host)
            if access.jump_host:
                assert find is not None  # _route_key checked it
                via = self._link(find(access.jump_host), find, pin)
            link = _connect(host, via, pin, self.per_host_limit)
            with self._lock:
                old = self._connections.get(key)
                self._connections[key] = link
                self.connects += 1
                self._start_reaper()
            if old is not None:
                old.close()
            return link

    def close_idle(self, now: float | None = None) -> int:
        """Close the connections idle for ``idle_seconds``; return how many were closed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [
                (key, link)
                for key, link in self._connections.items()
                if not link.alive or (not link.busy and now - link.last_used >= self.idle_seconds)
            ]
            # A jump connection stays while a connection through it is in the pool.
            in_use = {id(x.via) for x in self._connections.values() if x.via is not None}
            stale = [(k, x) for k, x in stale if id(x) not in in_use or not x.alive]
            for key, _ in stale:
                del self._connections[key]
        for _, link in stale:
            link.close()
        return len(stale)

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            links, self._connections = list(self._connections.values()), {}
        for link in links:
            link.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._connections)

    def _start_reaper(self) -> None:
        if self._reaper is not None and self._reaper.is_alive():
            return
        self._reaper = threading.Thread(target=self._reap, name="dagtask-ssh-idle", daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        while True:
            time.sleep(max(0.05, self.idle_seconds / 4))
            self.close_idle()
            with self._lock:
                if not self._connections:
                    self._reaper = None
                    return


_default_pool: SshPool | None = None
_default_lock = threading.Lock()


def default_pool() -> SshPool:
    """This process's pool (every engine and connector of the process shares it)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = SshPool()
        return _default_pool


def open_socket(host: HostInfo, via: SshConnection | _Link | None) -> Any:
    """A stream to the host's sshd: TCP, or a direct-tcpip channel through ``via``."""
    access = ssh_settings(host)
    where = f"host {host.id} ({host.name}, {host.inner_ip}:{access.port})"
    if via is not None:
        transport = via.client.get_transport()
        try:
            assert transport is not None
            return transport.open_channel(
                "direct-tcpip",
                (host.inner_ip, access.port),
                ("127.0.0.1", 0),
                timeout=access.connect_timeout,
            )
        except (OSError, AssertionError, load_paramiko().SSHException) as exc:
            raise HostError(
                f"cannot reach {where} through jump host {access.jump_host}: {exc or 'refused'}",
                target=str(host.id),
            ) from exc
    try:
        sock = socket.create_connection(
            (host.inner_ip, access.port), timeout=access.connect_timeout
        )
        # Without it every small request waits for the peer's delayed ACK (~40 ms a command).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except TimeoutError as exc:
        raise HostError(
            f"cannot reach {where}: no answer within {access.connect_timeout:g} s (connect "
            "timeout); check that the host is up and the address and port are right",
            target=str(host.id),
        ) from exc
    except OSError as exc:
        raise HostError(
            f"cannot reach {where}: {exc.strerror or exc}; check that sshd runs there and the "
            "address and port are right",
            target=str(host.id),
        ) from exc


def fetch_host_key(host: HostInfo, via: SshConnection | _Link | None = None) -> str:
    """The host key ``host`` presents (a key line), read without authenticating or trusting it."""
    paramiko = load_paramiko()
    sock = open_socket(host, via)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = ssh_settings(host).connect_timeout
        transport.start_client(timeout=ssh_settings(host).connect_timeout)
        return key_line(transport.get_remote_server_key())
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise HostError(
            f"host {host.id} ({host.name}) did not complete the SSH handshake: {exc}",
            target=str(host.id),
        ) from exc
    finally:
        transport.close()


def _connect(host: HostInfo, via: _Link | None, pin: PinKey | None, limit: int) -> _Link:
    paramiko = load_paramiko()
    access = ssh_settings(host)
    where = f"host {host.id} ({host.name}, {access_mod.describe(host)})"
    sock = open_socket(host, via)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(Verify(host, pin))
    kwargs: dict[str, Any] = {
        "hostname": host.inner_ip,
        "port": access.port,
        "username": access.user,
        "sock": sock,
        "timeout": access.connect_timeout,
        "banner_timeout": access.connect_timeout,
        "auth_timeout": access.connect_timeout,
        "channel_timeout": access.connect_timeout,
        "look_for_keys": False,
        "allow_agent": access.auth == "agent",
    }
    if access.auth == "key":
        kwargs["key_filename"] = access.key_file
    elif access.auth == "password":
        assert access.password_ref is not None
        kwargs["password"] = access_mod.resolve_secret(access.password_ref, host)
    how = {
        "key": f"key file {access.key_file}",
        "agent": "the ssh-agent's keys",
        "password": f"the password from {access.password_ref}",
    }[access.auth]
    try:
        client.connect(**kwargs)
    except HostKeyError:
        client.close()
        raise
    except paramiko.AuthenticationException as exc:
        client.close()
        raise HostError(
            f"{where}: authentication as {access.user} with {how} was refused; check the "
            "user, the key or password, and the host's authorized_keys",
            target=str(host.id),
        ) from exc
    except (paramiko.SSHException, EOFError, OSError) as exc:
        client.close()
        text = str(exc) or type(exc).__name__
        # A peer that accepts TCP but never speaks SSH shows up as a banner error, or (when
        # the transport died before authentication) as "No existing session".
        if "banner" in text.lower() or "no existing session" in text.lower():
            text = (
                f"no SSH answer within {access.connect_timeout:g} s (it accepted the TCP "
                "connection but did not complete the SSH handshake)"
            )
        elif isinstance(exc, TimeoutError):
            text = f"no SSH answer within {access.connect_timeout:g} s ({text})"
        raise HostError(f"cannot connect to {where}: {text}", target=str(host.id)) from exc
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(15)
    _log.info("connected to %s", where)
    return _Link(client, via, limit)
