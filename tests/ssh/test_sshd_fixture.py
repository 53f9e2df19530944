"""The sshd fixtures themselves, checked with the system OpenSSH client (``ssh``, ``sftp``)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.ssh.sshd import SshLab, SshServer, read_banner

TIMEOUT = 15


def key_login(ssh_client: str, lab: SshLab, server: SshServer, command: str) -> list[str]:
    """The brief's explicit client command line: key, known_hosts, strict checking, batch."""
    return [
        ssh_client,
        "-F",
        "/dev/null",
        "-i",
        str(lab.user_key),
        "-o",
        f"UserKnownHostsFile={lab.known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        "-p",
        str(server.port),
        f"{lab.user}@{server.address}",
        command,
    ]


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=env,
    )


def test_every_server_takes_the_lab_key(ssh_lab: SshLab, ssh_client: str) -> None:
    assert [s.address for s in ssh_lab.servers] == [f"127.0.0.{11 + i}" for i in range(5)]
    procs = [
        subprocess.Popen(
            key_login(ssh_client, ssh_lab, server, "echo hello"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for server in ssh_lab.servers
    ]
    for server, proc in zip(ssh_lab.servers, procs, strict=True):
        out, err = proc.communicate(timeout=TIMEOUT)
        assert (proc.returncode, out) == (0, "hello\n"), (err, server.log_tail())


def test_keys_and_known_hosts_match_ssh_keygen(ssh_lab: SshLab) -> None:
    known = ssh_lab.known_hosts.read_text().splitlines()
    assert known == [server.known_hosts_line() for server in ssh_lab.servers]
    for server in ssh_lab.servers:
        assert server.host_public_key.startswith("ssh-ed25519 AAAA")
        printed = run(["ssh-keygen", "-lf", f"{server.host_key_path}.pub"]).stdout.split()
        assert printed[1] == server.fingerprint
    assert ssh_lab.authorized_keys.read_text() == ssh_lab.user_public_key + "\n"
    assert ssh_lab.authorized_keys.stat().st_mode & 0o444 == 0o444


def test_a_changed_host_key_is_refused(
    ssh_lab: SshLab, ssh_server: SshServer, ssh_client: str
) -> None:
    port, before = ssh_server.port, ssh_server.fingerprint
    ssh_server.regenerate_host_key()
    assert ssh_server.is_up()
    assert (ssh_server.port, ssh_server.host_key_changed) == (port, True)
    assert ssh_server.fingerprint != before

    refused = run(key_login(ssh_client, ssh_lab, ssh_server, "echo hello"))
    assert refused.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr

    ssh_server.restore_host_key()
    assert (ssh_server.fingerprint, ssh_server.host_key_changed) == (before, False)
    assert run(key_login(ssh_client, ssh_lab, ssh_server, "echo hello")).stdout == "hello\n"


def test_a_killed_server_drops_its_sessions_and_comes_back_on_restart(
    ssh_lab: SshLab, ssh_server: SshServer, ssh_client: str
) -> None:
    session = subprocess.Popen(
        key_login(ssh_client, ssh_lab, ssh_server, "echo started; exec sleep 60"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert session.stdout is not None
        assert session.stdout.readline() == "started\n"
        sessions = ssh_server.session_pids()
        commands = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in sessions}
        assert "sleep" in commands, commands
        listener, port = ssh_server.pid, ssh_server.port

        ssh_server.kill()

        assert not ssh_server.is_running()
        assert session.wait(timeout=TIMEOUT) == 255  # the connection died under the client
        assert not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in sessions)
        assert read_banner(ssh_server.address, port, timeout=0.5) is None
        refused = run(key_login(ssh_client, ssh_lab, ssh_server, "echo hello"))
        assert refused.returncode == 255
        assert "Connection refused" in refused.stderr
    finally:
        session.kill()
        session.wait()

    ssh_server.restart()
    assert ssh_server.pid != listener
    assert ssh_server.port == port
    assert run(key_login(ssh_client, ssh_lab, ssh_server, "echo hello")).stdout == "hello\n"


def test_password_and_key_login_for_the_password_user(
    ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    if ssh_lab.password_user is None:
        pytest.skip("no password user without root")
    assert ssh_lab.password is not None
    password_only = [
        "-o",
        "BatchMode=no",
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "NumberOfPasswordPrompts=1",
    ]
    command = ssh_lab.ssh_command(ssh_server, "id -un", user=ssh_lab.password_user)
    argv = [command[0], *password_only, *command[1:]]

    def with_password(password: str) -> subprocess.CompletedProcess[str]:
        askpass = tmp_path / "askpass"
        askpass.write_text(f"#!/bin/sh\necho '{password}'\n")
        askpass.chmod(0o700)
        env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
        return run(argv, env=env)

    accepted = with_password(ssh_lab.password)
    assert (accepted.returncode, accepted.stdout) == (0, f"{ssh_lab.password_user}\n"), (
        accepted.stderr
    )
    denied = with_password("wrong")
    assert denied.returncode == 255
    assert "Permission denied" in denied.stderr
    by_key = run(command)
    assert by_key.stdout == f"{ssh_lab.password_user}\n", by_key.stderr


def test_sftp_env_and_jump_host(ssh_lab: SshLab, tmp_path: Path) -> None:
    first, second = ssh_lab.servers[:2]
    source, target = tmp_path / "upload.txt", tmp_path / "uploaded.txt"
    source.write_text("payload\n")
    batch = tmp_path / "batch"
    batch.write_text(f"put {source} {target}\n")
    login = f"{ssh_lab.user}@{first.address}"
    config = str(ssh_lab.ssh_config)
    sftp = run(["sftp", "-F", config, "-P", str(first.port), "-b", str(batch), login])
    assert sftp.returncode == 0, sftp.stderr
    assert target.read_text() == "payload\n"

    command = ssh_lab.ssh_command(second, 'echo "$DAGTASK_PROBE/$OTHER_PROBE"')
    env = ["-o", "SetEnv=DAGTASK_PROBE=42 OTHER_PROBE=no"]
    assert run([command[0], *env, *command[1:]]).stdout == "42/\n"  # only DAGTASK_* pass

    accepted_before = first.log_tail(10_000).count("Accepted publickey")
    jump = ["-J", f"{ssh_lab.user}@{first.address}:{first.port}"]
    hopped = run([command[0], *jump, *command[1:]])
    assert hopped.returncode == 0, hopped.stderr
    assert first.log_tail(10_000).count("Accepted publickey") == accepted_before + 1


def test_down_black_hole_and_unreachable_endpoints(ssh_lab: SshLab, ssh_client: str) -> None:
    down = ssh_lab.down_address()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(down, timeout=1).close()

    hole = ssh_lab.black_hole()
    with socket.create_connection(hole, timeout=1) as sock:
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)
    started = time.monotonic()
    config, timeout = str(ssh_lab.ssh_config), "ConnectTimeout=1"
    silent = run([ssh_client, "-F", config, "-o", timeout, "-p", str(hole[1]), hole[0], "true"])
    assert silent.returncode == 255
    assert "banner exchange" in silent.stderr, silent.stderr
    assert time.monotonic() - started < 5

    unreachable = ssh_lab.unreachable()
    with pytest.raises(TimeoutError):
        socket.create_connection(unreachable, timeout=0.3).close()
    assert len({down[0], hole[0], unreachable[0]} | {s.address for s in ssh_lab.servers}) == 8


def test_tests_here_are_marked_ssh(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("ssh") is not None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
