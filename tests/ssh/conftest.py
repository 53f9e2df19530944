"""Fixtures with real OpenSSH servers on loopback: ``ssh_lab`` (five of them, one session) and
``ssh_server`` (the first one, healthy at the start of each test).

Without sshd the tests skip, unless ``DAGTASK_REQUIRE_SERVERS=1`` (CI), where they fail: CI must
never pass by skipping them. ``DAGTASK_KEEP_SSHLAB=1`` keeps the lab's folder (configs, keys,
sshd logs) after the session; its path is in ``ssh_lab.root``.

Every test under tests/ssh is marked ``ssh`` (select with ``-m ssh``, leave out with
``-m "not ssh"``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from dagtask import Engine
from tests.processes import kill_processes_under
from tests.ssh.sshd import SshLab, SshServer, find_sshd

REQUIRE_SERVERS = os.environ.get("DAGTASK_REQUIRE_SERVERS") == "1"
KEEP_LAB = os.environ.get("DAGTASK_KEEP_SSHLAB") == "1"
LAB_SIZE = 5
_HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``ssh`` marker (the run uses --strict-markers)."""
    config.addinivalue_line("markers", "ssh: runs against real OpenSSH servers (tests/ssh)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests under tests/ssh ``ssh`` (this hook sees every collected item)."""
    for item in items:
        if item.path.resolve().is_relative_to(_HERE):
            item.add_marker(pytest.mark.ssh)


def _missing(message: str) -> NoReturn:
    if REQUIRE_SERVERS:
        pytest.fail(f"{message}; DAGTASK_REQUIRE_SERVERS=1 forbids skipping", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def ssh_lab() -> Iterator[SshLab]:
    """Five sshd servers on 127.0.0.11-15 sharing a user key, known_hosts and client config."""
    sshd = find_sshd()
    if sshd is None:
        _missing("sshd is not installed: apt-get install openssh-server")
    lab = SshLab(LAB_SIZE, sshd=sshd, keep=KEEP_LAB)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(autouse=True)
def _heal_ssh_lab(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the lab, bring back whatever it broke (killed or stopped servers,
    regenerated host keys, extra config), so the next test starts from a healthy lab."""
    yield
    if "ssh_lab" in request.fixturenames:
        lab: SshLab = request.getfixturevalue("ssh_lab")
        for server in lab.servers:
            server.reset(probe=False)


@pytest.fixture
def ssh_server(ssh_lab: SshLab) -> SshServer:
    """``ssh_lab.servers[0]``, up, with its original host key (matching ``known_hosts``) and
    config, whatever an earlier test did to it."""
    server = ssh_lab.servers[0]
    server.reset()
    return server


@pytest.fixture(scope="session")
def ssh_client() -> str:
    """The path of the system ``ssh`` client."""
    path = shutil.which("ssh")
    if path is None:
        _missing("ssh is not installed: apt-get install openssh-client")
    return path


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine with background workers on a fresh SQLite file in the test's folder; every
    process under that folder (agents started through SSH included) dies afterwards."""
    eng = Engine("sqlite:///" + str(tmp_path / "ssh.db"), workers=8, poll_interval=0.05)
    try:
        eng.start()
        yield eng
    finally:
        eng.close()
        kill_processes_under(tmp_path)
