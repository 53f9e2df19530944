"""How a remote host is reached: checking an :class:`~dagtask.models.SshAccess` and resolving the
secret it refers to.

A password is never stored: the inventory keeps a *reference* (``env:NAME`` or ``file:PATH``),
and each worker resolves it when it connects, so the value lives only in the environment or the
file of the machines that run workers (``docs/hosts.md``). Resolved values are registered with
:func:`secret_values_in_use` so that what a host operation logs is masked with them too.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from dagtask.errors import ArgumentError, HostError
from dagtask.models import HostInfo, SshAccess

SECRET_REF_FORMS = "env:NAME (an environment variable of the worker) or file:PATH (a file)"
MAX_PORT = 65535

_in_use: tuple[str, ...] = ()
"""Longest first; replaced (never changed in place) when a secret is added."""
_in_use_lock = threading.Lock()


def parse_secret_ref(text: str, host: str = "") -> str:
    """``text`` checked as a secret reference; an :class:`ArgumentError` if it is none.

    A value that looks like a password rather than a reference is refused without being echoed.
    """
    owner = f"host {host!r}" if host else "a host"
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("env", "file") or not rest.strip():
        raise ArgumentError(
            f"{owner}: the password must be given as a reference, {SECRET_REF_FORMS}; "
            "dagtask never stores a password itself (the value given was not shown)"
        )
    if kind == "env" and not rest.replace("_", "a").isalnum():
        raise ArgumentError(f"{owner}: {text!r} is not an environment variable name (env:NAME)")
    return f"{kind}:{rest.strip()}"


def resolve_secret(ref: str, host: HostInfo) -> str:
    """The secret ``ref`` names, read now on this machine; a :class:`HostError` if it is not
    there (the message names the reference, never a value)."""
    kind, _, rest = ref.partition(":")
    if kind == "env":
        value = os.environ.get(rest)
        if not value:
            raise HostError(
                f"host {host.id} ({host.name}): the password reference {ref} names the "
                f"environment variable {rest}, which is not set for this worker; set it where "
                "the workers run, or change the host's --password-ref",
                target=str(host.id),
            )
    elif kind == "file":
        path = Path(rest).expanduser()
        try:
            value = path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise HostError(
                f"host {host.id} ({host.name}): cannot read the password file {path} "
                f"({exc.strerror}); create it on every machine that runs workers "
                "(mode 600), or change the host's --password-ref",
                target=str(host.id),
            ) from exc
        if not value:
            raise HostError(
                f"host {host.id} ({host.name}): the password file {path} is empty",
                target=str(host.id),
            )
    else:
        raise HostError(
            f"host {host.id} ({host.name}) has the password reference {ref!r}, which is neither "
            f"{SECRET_REF_FORMS}; re-add the host",
            target=str(host.id),
        )
    global _in_use
    with _in_use_lock:
        if value not in _in_use:
            _in_use = tuple(sorted({*_in_use, value}, key=lambda v: (-len(v), v)))
    return value


def secret_values_in_use() -> tuple[str, ...]:
    """Every secret this process resolved for a connection, longest first (for masking); the
    same tuple until another one is resolved."""
    return _in_use


def make_access(
    host: str,
    *,
    user: str,
    port: int = 22,
    key_file: str | None = None,
    use_agent: bool = False,
    password_ref: str | None = None,
    jump_host: str | None = None,
    known_hosts: str | None = None,
    accept_new_host_key: bool = False,
    connect_timeout: float = 10.0,
) -> SshAccess:
    """An :class:`SshAccess` from ``dagtask hosts add`` style arguments, checked; exactly one
    way to authenticate must be given. Raises :class:`ArgumentError` with what to change."""
    owner = f"host {host!r}"
    ways = [
        name
        for name, given in (
            ("--key-file", key_file is not None),
            ("--ssh-agent", use_agent),
            ("--password-ref", password_ref is not None),
        )
        if given
    ]
    if len(ways) != 1:
        said = " and ".join(ways) if ways else "none"
        raise ArgumentError(
            f"{owner} needs exactly one way to authenticate over SSH: --key-file PATH, "
            f"--ssh-agent or --password-ref REF (given: {said})"
        )
    if not user.strip():
        raise ArgumentError(f"{owner} needs the SSH user to log in as (--ssh-user)")
    if not 1 <= port <= MAX_PORT:
        raise ArgumentError(f"{owner}: SSH port {port} is not between 1 and {MAX_PORT}")
    if not 0 < connect_timeout <= 600:
        raise ArgumentError(f"{owner}: the connect timeout must be > 0 and <= 600 seconds")
    if key_file is not None:
        path = Path(key_file).expanduser().absolute()
        if not path.is_file():
            raise ArgumentError(
                f"{owner}: the private key file {path} does not exist; give the path of the key "
                "(e.g. ~/.ssh/id_ed25519) as every worker machine sees it"
            )
        key_file = str(path)
    if known_hosts is not None:
        known_hosts = str(Path(known_hosts).expanduser().absolute())
    auth = "key" if key_file is not None else "agent" if use_agent else "password"
    return SshAccess(
        port=port,
        user=user.strip(),
        auth=auth,
        key_file=key_file,
        password_ref=parse_secret_ref(password_ref, host) if password_ref else None,
        jump_host=jump_host or None,
        known_hosts=known_hosts,
        accept_new_host_key=accept_new_host_key,
        connect_timeout=connect_timeout,
    )


def describe(host: HostInfo) -> str:
    """Where ``host`` is reached, for messages: ``user@addr:port`` (via the jump host)."""
    access = host.ssh
    if access is None:
        return f"{host.inner_ip} (connector {host.connector})"
    via = f" via {access.jump_host}" if access.jump_host else ""
    return f"{access.user}@{host.inner_ip}:{access.port}{via}"


def load_paramiko() -> Any:
    """The paramiko module, or a HostError saying how to install it."""
    try:
        import paramiko
    except ImportError:
        raise HostError(
            "SSH hosts need the ssh extra: pip install 'dagtask[ssh]' (paramiko) on every "
            "machine that runs workers"
        ) from None
    return paramiko


def ssh_settings(host: HostInfo) -> SshAccess:
    """The host's SSH settings; a HostError if it has none."""
    if host.ssh is None:
        raise HostError(
            f"host {host.id} ({host.name}) uses connector {host.connector!r} but has no SSH "
            "settings; re-add it with dagtask hosts add --connector ssh --ssh-user ...",
            target=str(host.id),
        )
    return host.ssh
