"""SSH host keys: fingerprints, the known-hosts lookup and dagtask's own check (docs/hosts.md).

paramiko's host-key policies are not used: the client is given no known keys, so paramiko hands
every key to :class:`Verify`, which applies dagtask's rule (a pinned key first, then the
known-hosts file; unknown keys refused unless the host accepts new ones; changed keys refused).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagtask.errors import HostError
from dagtask.hosts.access import load_paramiko, ssh_settings
from dagtask.models import HostInfo

if TYPE_CHECKING:
    import paramiko

_log = logging.getLogger("dagtask.ssh")

PinKey = Callable[[HostInfo, str], None]
"""Pins an accepted host key (OpenSSH public key line) in the inventory."""


class HostKeyError(HostError):
    """The host's SSH key is unknown or differs from the pinned or known one."""


def fingerprint(key_line_or_key: str | paramiko.PKey) -> str:
    """The SHA256 fingerprint of a host key, as ``ssh-keygen -lf`` prints it."""
    if isinstance(key_line_or_key, str):
        blob = base64.b64decode(key_line_or_key.split()[1])
    else:
        blob = key_line_or_key.asbytes()
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def key_line(key: paramiko.PKey) -> str:
    """``ssh-ed25519 AAAA...``: the OpenSSH public key line of ``key``."""
    return f"{key.get_name()} {key.get_base64()}"


def known_hosts_name(address: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts: ``addr`` on port 22, else ``[addr]:port``."""
    return address if port == 22 else f"[{address}]:{port}"


def default_known_hosts() -> Path:
    """``$DAGTASK_KNOWN_HOSTS`` or ``~/.ssh/known_hosts``."""
    return Path(os.environ.get("DAGTASK_KNOWN_HOSTS") or "~/.ssh/known_hosts").expanduser()


def check_host_key(host: HostInfo, offered: str, pin: PinKey | None) -> None:
    """Accept ``offered`` (a key line) for ``host`` or raise :class:`HostKeyError`."""
    access = ssh_settings(host)
    shown = fingerprint(offered)
    where = f"host {host.id} ({host.name}, {host.inner_ip}:{access.port})"
    if host.host_key:
        if host.host_key.split()[:2] == offered.split()[:2]:
            return
        raise HostKeyError(
            f"{where} presented host key {shown}, but {fingerprint(host.host_key)} is pinned: "
            "the host was reinstalled, or someone is in between. Nothing was run. If the change "
            f"is expected, check the new key out of band and pin it: dagtask hosts trust "
            f"{host.id}",
            target=str(host.id),
        )
    path = Path(access.known_hosts).expanduser() if access.known_hosts else default_known_hosts()
    known = _known_keys(path, known_hosts_name(host.inner_ip, access.port))
    kind, blob = offered.split()[:2]
    if known:
        if known.get(kind) == blob:
            return
        listed = ", ".join(f"{k} {fingerprint(f'{k} {b}')}" for k, b in sorted(known.items()))
        raise HostKeyError(
            f"{where} presented host key {kind} {shown}, but {path} lists {listed} for it: the "
            "host key CHANGED (reinstalled host, or someone in between). Nothing was run. If "
            f"the change is expected, remove the old line from {path} or pin the new key with "
            f"dagtask hosts trust {host.id}",
            target=str(host.id),
        )
    if access.accept_new_host_key and pin is not None:
        _log.warning("%s: accepting and pinning its new host key %s (accept-new)", where, shown)
        pin(host, offered)
        return
    raise HostKeyError(
        f"{where} presented host key {kind} {shown}, which is not pinned and not in {path}; "
        "nothing was run. Check the fingerprint out of band (ssh-keygen -lf on the host), then "
        f"pin it with: dagtask hosts trust {host.id}",
        target=str(host.id),
    )


def _known_keys(path: Path, name: str) -> dict[str, str]:
    """The key lines ``path`` lists for ``name`` (hashed entries included), by key type."""
    if not path.is_file():
        return {}
    paramiko = load_paramiko()
    try:
        keys = paramiko.HostKeys(str(path))
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise HostKeyError(f"cannot read the known-hosts file {path}: {exc}") from exc
    entry = keys.lookup(name)
    if entry is None:
        return {}
    return {kind: key.get_base64() for kind, key in entry.items()}


class Verify:
    """paramiko's missing-host-key hook: dagtask's own check (the client knows no keys)."""

    def __init__(self, host: HostInfo, pin: PinKey | None) -> None:
        self.host = host
        self.pin = pin

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        check_host_key(self.host, key_line(key), self.pin)
