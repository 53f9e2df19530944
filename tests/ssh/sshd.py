"""Real OpenSSH servers on loopback for tests: one ``sshd`` process per simulated host.

Each :class:`SshServer` listens on its own loopback address (127.0.0.11, .12, ...; Linux routes
all of 127.0.0.0/8 to ``lo``, nothing to set up) with a free port, its own ed25519 host key,
config, pid file and log, in its own folder. :class:`SshLab` starts several of them with one
client side: a user key that every server accepts (one shared, absolute ``AuthorizedKeysFile``),
a ``known_hosts`` file with every server's host key, an ssh client config, and (as root) a local
user with a password for password authentication.

Failure modes for client tests: :meth:`SshServer.kill` (host crashed mid-step: listener and
every session process SIGKILLed), :meth:`SshServer.regenerate_host_key` (changed host key),
:meth:`SshLab.down_address` (connection refused), :meth:`SshLab.black_hole` (TCP connects, no
SSH banner ever) and :meth:`SshLab.unreachable` (TCP connect itself never completes).

No fixture is needed: the library also works from a script or a REPL (the SSH benchmark uses
it).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import getpass
import hashlib
import os
import pwd
import re
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import is_running as pid_alive

LOOPBACK_PREFIX = "127.0.0."
FIRST_HOST = 11
"""Servers get 127.0.0.11, 127.0.0.12, ... (127.0.0.1 stays for everything else)."""
DOWN_ADDRESS = "127.0.0.250"
BLACK_HOLE_ADDRESS = "127.0.0.251"
UNREACHABLE_ADDRESS = "127.0.0.252"
PASSWORD_USER = "dagtask-sshtest"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PRIVSEP_DIR = Path("/run/sshd")
_POLL = 0.01


class SshdError(RuntimeError):
    """An sshd could not be started or stopped."""


class PortInUseError(SshdError):
    """sshd could not bind its address:port (someone took the port after we picked it)."""


# --------------------------------------------------------------------------------------------
# Small helpers


def find_sshd() -> str | None:
    """The absolute path of ``sshd`` (on PATH or /usr/sbin/sshd), or None when not installed.

    sshd re-executes itself per connection, which needs an absolute path.
    """
    found = shutil.which("sshd")
    if found is None and os.access("/usr/sbin/sshd", os.X_OK):
        found = "/usr/sbin/sshd"
    return str(Path(found).resolve()) if found else None


def _tool(name: str) -> str:
    """The path of an OpenSSH or shadow tool, also looked for in /usr/sbin and /usr/bin."""
    found = shutil.which(name)
    if found is None:
        for folder in ("/usr/sbin", "/usr/bin", "/sbin"):
            if os.access(f"{folder}/{name}", os.X_OK):
                return f"{folder}/{name}"
        raise SshdError(f"{name} is not installed")
    return found


@functools.cache
def sshd_version(sshd: str) -> tuple[int, int] | None:
    """(major, minor) of the OpenSSH behind ``sshd``, or None when it does not say."""
    result = subprocess.run(
        [sshd, "-V"], stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", result.stdout + result.stderr)
    return (int(match[1]), int(match[2])) if match else None


def free_port(address: str) -> int:
    """A TCP port free on ``address`` right now (bind port 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def read_banner(address: str, port: int, timeout: float = 1.0) -> bytes | None:
    """The SSH identification line of ``address:port`` (``SSH-2.0-...``), or None.

    None when nothing accepts the connection or no ``SSH-`` line comes within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            data = b""
            while b"\n" not in data and len(data) < 512:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                sock.settimeout(remaining)
                chunk = sock.recv(512)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    return line if line.startswith(b"SSH-") else None


def generate_key(path: Path, comment: str) -> None:
    """An ed25519 key pair without passphrase at ``path`` and ``path.pub`` (replaced if there)."""
    for stale in (path, _pub(path)):
        stale.unlink(missing_ok=True)
    subprocess.run(
        [_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
    )


def _generate_keys(keys: Iterable[tuple[Path, str]]) -> None:
    """:func:`generate_key` for several keys at once (in parallel: startup stays fast)."""
    procs = []
    for path, comment in keys:
        for stale in (path, _pub(path)):
            stale.unlink(missing_ok=True)
        argv = [_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment]
        procs.append(
            subprocess.Popen(
                [*argv, "-f", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    failures = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            failures.append(out.decode(errors="replace"))
    if failures:
        raise SshdError("ssh-keygen failed: " + "; ".join(failures))


def _pub(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def public_key_line(pub_path: Path) -> str:
    """``"ssh-ed25519 AAAA..."``: the key type and blob of an OpenSSH public key file."""
    return public_key_line_from_bytes(pub_path.read_bytes())


def public_key_line_from_bytes(data: bytes) -> str:
    """``"ssh-ed25519 AAAA..."`` from the bytes of an OpenSSH public key file (no comment)."""
    kind, blob = data.decode().split()[:2]
    return f"{kind} {blob}"


def fingerprint(public_key: str) -> str:
    """The SHA256 fingerprint of an OpenSSH public key line, as ``ssh-keygen -lf`` prints it."""
    blob = base64.b64decode(public_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def ensure_privsep_dir() -> None:
    """Create /run/sshd (sshd's privilege separation chroot) when running as root without it.

    sshd started as root refuses to run without it ("Missing privilege separation
    directory"); on a machine without systemd nothing else creates it.
    """
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        PRIVSEP_DIR.chmod(0o755)


def ensure_password_user(name: str = PASSWORD_USER) -> str | None:
    """Create the local user ``name`` if missing and give it a fresh random password.

    Returns the password, or None when not running as root (no user to create then).
    """
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        _run_checked([_tool("useradd"), "-m", "-s", "/bin/sh", name])
    password = secrets.token_urlsafe(18)
    _run_checked([_tool("chpasswd")], stdin=f"{name}:{password}\n")
    return password


def _run_checked(argv: list[str], stdin: str | None = None) -> None:
    result = subprocess.run(
        argv,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        raise SshdError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}")


# --------------------------------------------------------------------------------------------
# Processes from /proc


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
            parents[int(entry.name)] = int(stat.rpartition(b")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return parents


def _own_lineage(parents: dict[int, int]) -> set[int]:
    """This process and its ancestors: never signalled."""
    pid, lineage = os.getpid(), set()
    while pid > 0 and pid not in lineage:
        lineage.add(pid)
        pid = parents.get(pid, 0)
    return lineage


def _descendants(root: int, parents: dict[int, int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def _with_ssh_connection_to(address: str, port: int, pids: Iterable[int]) -> set[int]:
    """The processes whose environment has ``SSH_CONNECTION=... <address> <port>``.

    Catches session processes that left the listener's tree (daemonized, or orphaned when
    their sshd died and re-parented to init).
    """
    wanted = f" {address} {port}".encode()
    found = set()
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(b"SSH_CONNECTION=") and var.endswith(wanted):
                found.add(pid)
                break
    return found


def _signal(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)
    return True


# --------------------------------------------------------------------------------------------
# One server


@dataclass(eq=False)
class SshServer:
    """One ``sshd`` on ``address:port``, our child, with its files in ``root``.

    ``port`` 0 picks a free port at the first :meth:`start`; from then on the port stays (a
    :meth:`restart` comes back on the same address, port and host key). Lines in
    ``extra_config`` are appended to the generated ``sshd_config`` at each start
    (``server.extra_config.append("MaxSessions 1"); server.restart()``); :meth:`reset`
    drops them again.
    """

    name: str
    address: str
    root: Path
    authorized_keys: Path
    sshd: str
    port: int = 0
    extra_config: list[str] = field(default_factory=list)
    host_key_path: Path = field(init=False)
    host_public_key: str = field(init=False, default="")
    fingerprint: str = field(init=False, default="")
    config_path: Path = field(init=False)
    pid_file: Path = field(init=False)
    log_path: Path = field(init=False)
    home: Path = field(init=False)
    _process: subprocess.Popen[bytes] | None = field(init=False, default=None, repr=False)
    _port_fixed: bool = field(init=False, default=False, repr=False)
    _log_offset: int = field(init=False, default=0, repr=False)
    _original_key: tuple[bytes, bytes] | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.host_key_path = self.root / "ssh_host_ed25519_key"
        self.config_path = self.root / "sshd_config"
        self.pid_file = self.root / "sshd.pid"
        self.log_path = self.root / "sshd.log"
        # Sessions get a home of their own (``SetEnv HOME``): the login shell then reads no
        # rc file of the machine's real users (a ``pyenv init`` in root's ~/.bashrc takes a
        # lock that a killed session can leave behind, and every later login waits 60 s).
        self.home = self.root / "home"
        self.home.mkdir(exist_ok=True)
        self.home.chmod(0o1777)
        if self.host_key_path.exists():
            self._load_host_key()

    # -- host key ------------------------------------------------------------------------

    def _load_host_key(self) -> None:
        self.host_public_key = public_key_line(_pub(self.host_key_path))
        self.fingerprint = fingerprint(self.host_public_key)
        if self._original_key is None:
            self._original_key = (
                self.host_key_path.read_bytes(),
                _pub(self.host_key_path).read_bytes(),
            )

    def generate_host_key(self) -> None:
        """Create the host key if there is none yet (:meth:`start` does it when needed)."""
        if not self.host_key_path.exists():
            generate_key(self.host_key_path, f"{self.name} host key")
        self._load_host_key()

    @property
    def host_key_changed(self) -> bool:
        """Whether the host key differs from the first one (after :meth:`regenerate_host_key`)."""
        return self._original_key is not None and (
            _pub(self.host_key_path).read_bytes() != self._original_key[1]
        )

    def regenerate_host_key(self) -> None:
        """Give the server a new host key and restart it with that key.

        The lab's ``known_hosts`` keeps the original key: clients checking it now see a
        changed host key. :meth:`restore_host_key` (or :meth:`reset`) brings the original back.
        """
        if self._original_key is None:
            self.generate_host_key()
        self.stop()
        generate_key(self.host_key_path, f"{self.name} host key (regenerated)")
        self._load_host_key()
        self.start()

    def restore_host_key(self) -> None:
        """Put the original host key back (restarting the server) if it was regenerated."""
        if not self.host_key_changed:
            return
        assert self._original_key is not None
        self.stop()
        private, public = self._original_key
        self.host_key_path.unlink(missing_ok=True)
        fd = os.open(self.host_key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(private)
        _pub(self.host_key_path).write_bytes(public)
        self._load_host_key()
        self.start()

    def known_hosts_line(self) -> str:
        """``"[address]:port ssh-ed25519 AAAA..."`` for the current host key."""
        return f"[{self.address}]:{self.port} {self.host_public_key}"

    # -- config --------------------------------------------------------------------------

    def config_text(self) -> str:
        """The ``sshd_config`` the next start uses."""
        lines = [
            f"ListenAddress {self.address}:{self.port}",
            f"HostKey {self.host_key_path}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "StrictModes no",
            "UsePAM no",
            "PermitRootLogin yes",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "AllowTcpForwarding yes",
            "MaxSessions 64",
            "MaxStartups 100:30:200",
            "LogLevel VERBOSE",
            "UseDNS no",
            "PrintMotd no",
            "AcceptEnv DAGTASK_*",
            "PermitUserEnvironment no",
            f"SetEnv HOME={self.home}",
            "Subsystem sftp internal-sftp",
        ]
        version = sshd_version(self.sshd)
        if version is not None and version >= (9, 8):
            # 9.8+ penalizes (refuses) a source address after failed logins or crashed
            # sessions; every client here is 127.0.0.1 and tests fail on purpose.
            lines.append("PerSourcePenalties no")
        lines.extend(self.extra_config)
        return "\n".join(lines) + "\n"

    # -- process -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The listener's pid while it runs, else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def is_running(self) -> bool:
        """Whether the listener process is alive (cheap: no connection)."""
        return self._process is not None and self._process.poll() is None

    def is_up(self, timeout: float = 2.0) -> bool:
        """Whether the listener is alive and answers with an SSH banner within ``timeout``."""
        return self.is_running() and read_banner(self.address, self.port, timeout) is not None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start sshd and wait until it answers with its SSH banner (no-op if running).

        Raises :class:`SshdError` with the tail of the log when it does not come up within
        ``timeout`` seconds.
        """
        self._begin_start()
        self._finish_start(timeout)

    def _begin_start(self) -> None:
        if self.is_running():
            return
        if not self.host_key_path.exists() or not self.host_public_key:
            self.generate_host_key()
        if not self.port:
            self.port = free_port(self.address)
        self._launch()

    def _finish_start(self, timeout: float = START_TIMEOUT) -> None:
        attempts = 1
        while True:
            try:
                self._await_ready(timeout)
                break
            except PortInUseError:
                if self._port_fixed or attempts >= 5:
                    raise
                attempts += 1
                self.port = free_port(self.address)
                self._launch()
        self._port_fixed = True

    def _launch(self) -> None:
        ensure_privsep_dir()
        self.pid_file.unlink(missing_ok=True)
        self.config_path.write_text(self.config_text())
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.sshd, "-D", "-f", str(self.config_path), "-E", str(self.log_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.root,
                start_new_session=True,
            )

    def _await_ready(self, timeout: float) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                self._process = None
                new = self._new_log()
                if "Address already in use" in new:
                    raise PortInUseError(f"{self.name}: {self.address}:{self.port} is taken")
                raise SshdError(
                    f"{self.name}: sshd exited with status {process.returncode} on start; "
                    f"log {self.log_path}:\n{new or self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if self._pid_file_is_ours(process.pid) and read_banner(
                self.address, self.port, max(0.1, min(1.0, remaining))
            ):
                return
            if remaining <= 0:
                self._kill_all()
                raise SshdError(
                    f"{self.name}: no SSH banner on {self.address}:{self.port} after "
                    f"{timeout} s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(_POLL)

    def _pid_file_is_ours(self, pid: int) -> bool:
        # sshd writes its pid file once it is bound: a banner before that could be another
        # server's on the same port (ours would then exit with "Address already in use").
        try:
            return int(self.pid_file.read_text().strip() or 0) == pid
        except (OSError, ValueError):
            return False

    def _new_log(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of this server's sshd log (for assertion messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def session_pids(self) -> set[int]:
        """Every process of this server's sessions (per-connection sshd and what they run).

        The listener's descendants (per-connection sshd processes call setsid, so they are
        not in the listener's process group), plus processes whose ``SSH_CONNECTION`` names
        this server (those that left the tree). Never includes this process or its ancestors.
        """
        parents = _parents()
        found = set()
        if self.is_running():
            assert self._process is not None
            found = _descendants(self._process.pid, parents)
        found |= _with_ssh_connection_to(self.address, self.port, parents)
        return found - _own_lineage(parents)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server and its sessions: SIGTERM, then SIGKILL after ``timeout`` seconds.

        Returns once the listener and every session process are gone.
        """
        process = self._process
        if process is None or process.poll() is not None:
            self._kill_all()
            return
        sessions = self.session_pids()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        _signal(sessions, signal.SIGTERM)
        _wait_for(lambda: process.poll() is not None and not any(map(pid_alive, sessions)), timeout)
        self._kill_all(sessions)

    def kill(self) -> None:
        """SIGKILL the listener and all its session processes at once (a crashed host).

        Clients with open connections see them reset; new connections are refused.
        """
        self._kill_all()

    def _kill_all(self, also: Iterable[int] = ()) -> None:
        process = self._process
        listener_alive = process is not None and process.poll() is None
        if listener_alive:
            assert process is not None
            # Freeze first: no new connections, and no orphan re-parented to init (out of
            # our sight) while we walk the tree.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGSTOP)
        frozen: set[int] = set()
        extra = set(also)
        while True:
            found = {pid for pid in (self.session_pids() | extra) - frozen if pid_alive(pid)}
            extra = set()
            if not found:
                break
            _signal(found, signal.SIGSTOP)
            frozen |= found
        _signal(frozen, signal.SIGKILL)
        if process is not None:
            if listener_alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                raise SshdError(f"{self.name}: sshd {process.pid} survived SIGKILL") from None
        self._process = None
        if not _wait_for(lambda: not any(map(pid_alive, frozen)), 10):
            left = sorted(pid for pid in frozen if pid_alive(pid))
            raise SshdError(f"{self.name}: session processes {left} survived SIGKILL")
        self.pid_file.unlink(missing_ok=True)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop (if running) and start again on the same address, port and host key."""
        self.stop()
        self.start(timeout)

    def reset(self, probe: bool = True) -> None:
        """Back to the original state: original host key and config, and running.

        ``probe`` also checks the banner (a stopped-but-alive listener is restarted);
        without it only a dead listener is restarted.
        """
        changed = False
        if self.extra_config:
            self.extra_config.clear()
            changed = True
        if self.host_key_changed:
            self.restore_host_key()
        elif changed or not (self.is_up() if probe else self.is_running()):
            self.restart()


# --------------------------------------------------------------------------------------------
# Unanswering endpoints


class _BlackHole:
    """A listener that accepts TCP connections and never sends a byte.

    Accepting (in a thread) rather than leaving connections in the backlog keeps it a black
    hole forever: a full accept queue would make the kernel drop SYNs instead (which is what
    :meth:`SshLab.unreachable` wants, not this).
    """

    def __init__(self, address: str) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((address, 0))
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.address: tuple[str, int] = self.listener.getsockname()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="ssh-black-hole", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            for key, _ in self._selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._wake_r:
                    for other in list(self._selector.get_map().values()):
                        other.fileobj.close()  # type: ignore[union-attr]
                    self._selector.close()
                    return
                if sock is self.listener:
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = self.listener.accept()
                        conn.setblocking(False)
                        self._selector.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(4096)  # swallow the client's banner; answer nothing
                except OSError:
                    data = b""
                if not data:
                    self._selector.unregister(sock)
                    sock.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(5)
        self._wake_w.close()


# --------------------------------------------------------------------------------------------
# The lab


class SshLab:
    """``count`` servers on 127.0.0.11, .12, ... sharing one client side.

    Attributes: ``servers``; ``root`` (the lab's folder); ``user`` (login for key
    authentication: root as root, else the current user); ``user_key`` (private key path)
    and ``user_public_key`` (its ``ssh-ed25519 AAAA...`` line); ``authorized_keys``;
    ``known_hosts`` (every server's original host key as ``[address]:port ...``);
    ``ssh_config`` (a client config using all of these, for ``ssh -F``); ``password_user``
    and ``password`` (a local user with a fresh random password, as root only, else None).

    The folder is a fresh ``mkdtemp`` under ``parent`` (default: the system temp dir), mode
    0755 so the password user's sshd can read the shared authorized_keys (pytest's own tmp
    dirs are 0700). It is removed on :meth:`close` unless ``keep``.
    """

    def __init__(
        self,
        count: int = 5,
        *,
        sshd: str | None = None,
        parent: Path | None = None,
        keep: bool = False,
        password_user: bool = True,
    ) -> None:
        found = sshd or find_sshd()
        if found is None:
            raise SshdError("sshd is not installed: apt-get install openssh-server")
        if not 0 < count <= 250 - FIRST_HOST:
            raise ValueError(f"count must be 1..{250 - FIRST_HOST}, not {count}")
        self.sshd = found
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="dagtask-sshlab-", dir=parent))
        self.root.chmod(0o755)
        self.servers: list[SshServer] = []
        self.user = "root" if os.geteuid() == 0 else getpass.getuser()
        self.user_key = self.root / "client" / "id_ed25519"
        self.authorized_keys = self.root / "authorized_keys"
        self.known_hosts = self.root / "client" / "known_hosts"
        self.ssh_config = self.root / "client" / "ssh_config"
        self.user_public_key = ""
        self.password_user: str | None = None
        self.password: str | None = None
        self._down: socket.socket | None = None
        self._black_hole: _BlackHole | None = None
        self._unreachable: list[socket.socket] = []
        self._closed = False
        atexit.register(self.close)
        try:
            self._build(count, password_user)
        except BaseException:
            self.close()
            raise

    def _build(self, count: int, password_user: bool) -> None:
        self.user_key.parent.mkdir(mode=0o700)
        for i in range(count):
            self.servers.append(
                SshServer(
                    name=f"ssh-{i + 1}",
                    address=f"{LOOPBACK_PREFIX}{FIRST_HOST + i}",
                    root=self.root / f"ssh-{i + 1}",
                    authorized_keys=self.authorized_keys,
                    sshd=self.sshd,
                )
            )
        _generate_keys(
            [(self.user_key, "dagtask-sshlab user key")]
            + [(s.host_key_path, f"{s.name} host key") for s in self.servers]
        )
        self.user_public_key = public_key_line(_pub(self.user_key))
        self.authorized_keys.write_text(self.user_public_key + "\n")
        self.authorized_keys.chmod(0o644)
        if password_user:
            password = ensure_password_user(PASSWORD_USER)
            if password is not None:
                self.password_user, self.password = PASSWORD_USER, password
        for server in self.servers:
            server.generate_host_key()
            server._begin_start()
        for server in self.servers:
            server._finish_start()
        self.write_known_hosts()
        self.ssh_config.write_text(
            "Host *\n"
            f"  User {self.user}\n"
            f"  IdentityFile {self.user_key}\n"
            "  IdentitiesOnly yes\n"
            "  IdentityAgent none\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n"
            "  ConnectTimeout 5\n"
        )

    def write_known_hosts(self, servers: Iterable[SshServer] | None = None) -> None:
        """Write ``known_hosts`` with the *original* host key of ``servers`` (default: all)."""
        lines = []
        for server in self.servers if servers is None else servers:
            assert server._original_key is not None
            original = public_key_line_from_bytes(server._original_key[1])
            lines.append(f"[{server.address}]:{server.port} {original}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def server(self, name: str) -> SshServer:
        """The server called ``name`` (``"ssh-1"``...)."""
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)

    def ssh_command(self, server: SshServer, *command: str, user: str | None = None) -> list[str]:
        """argv of the system ``ssh`` running ``command`` on ``server`` with the lab's client."""
        return [
            _tool("ssh"),
            "-F",
            str(self.ssh_config),
            "-p",
            str(server.port),
            f"{user or self.user}@{server.address}",
            *command,
        ]

    def down_address(self) -> tuple[str, int]:
        """(address, port) where nothing listens: connecting is refused at once.

        The port stays reserved (bound, never listening) until :meth:`close`, so no other
        program can start listening there meanwhile.
        """
        if self._down is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((DOWN_ADDRESS, 0))
            self._down = sock
        address, port = self._down.getsockname()
        return str(address), int(port)

    def black_hole(self) -> tuple[str, int]:
        """(address, port) that accepts TCP connections but never sends an SSH banner.

        For banner / handshake timeouts. Closed at :meth:`close`.
        """
        if self._black_hole is None:
            self._black_hole = _BlackHole(BLACK_HOLE_ADDRESS)
        address, port = self._black_hole.address
        return str(address), int(port)

    def unreachable(self) -> tuple[str, int]:
        """(address, port) where a TCP connect never completes (SYNs dropped), for connect
        timeouts: a listener with a zero backlog, filled by one connection of ours."""
        if not self._unreachable:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind((UNREACHABLE_ADDRESS, 0))
            listener.listen(0)
            filler = socket.create_connection(listener.getsockname(), timeout=5)
            self._unreachable = [listener, filler]
        address, port = self._unreachable[0].getsockname()
        return str(address), int(port)

    def close(self) -> None:
        """Stop every server, close the unanswering endpoints, remove the folder (unless
        ``keep``). Idempotent; also registered with atexit."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors = []
        for server in self.servers:
            try:
                server.stop()
            except Exception as exc:  # stop the others anyway
                errors.append(exc)
        if self._black_hole is not None:
            self._black_hole.close()
        for sock in [*self._unreachable, *([self._down] if self._down else [])]:
            sock.close()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise errors[0]

    def __enter__(self) -> SshLab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = [
    "BLACK_HOLE_ADDRESS",
    "DOWN_ADDRESS",
    "PASSWORD_USER",
    "UNREACHABLE_ADDRESS",
    "PortInUseError",
    "SshLab",
    "SshServer",
    "SshdError",
    "ensure_password_user",
    "find_sshd",
    "fingerprint",
    "free_port",
    "read_banner",
]
