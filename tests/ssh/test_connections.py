"""Reaching a remote host: host keys (unknown, changed, pinned, accepted), authentication (key,
password by reference), hosts that are down or never answer, jump hosts, the pool's idle expiry.
Every test talks to real sshd servers on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dagtask import Engine
from dagtask.errors import ArgumentError
from dagtask.hosts import hostkeys, ssh
from dagtask.states import TaskStatus
from tests.processes import wait_until
from tests.ssh.sshd import SshLab, SshServer
from tests.ssh.support import WAIT_SECONDS, add_ssh_host, all_logs, connector


def run_on(engine: Engine, host_id: int, command: str, **more: str) -> int:
    """Submit "Run command on hosts" on one host; the task id."""
    task = engine.submit(
        "Run command on hosts",
        args={"command": command, **more},
        lists={"host_ids": [str(host_id)]},
    )
    return task.id


def test_an_unknown_host_key_is_refused_until_trusted(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    host = add_ssh_host(engine, ssh_lab, ssh_server, tmp_path, name="new", known_hosts=empty)
    marker = tmp_path / "ran"
    task_id = run_on(engine, host.id, f"touch {marker}")
    done = engine.wait(task_id, timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.FAILED
    message = done.subtasks[0].message or ""
    assert ssh_server.fingerprint in message and "not pinned and not in" in message
    assert f"dagtask hosts trust {host.id}" in message
    assert not marker.exists()  # nothing ran

    from dagtask.hosts.check import presented_key

    offered = presented_key(engine.services, host)
    assert hostkeys.fingerprint(offered) == ssh_server.fingerprint
    engine.hosts.set_host_key(host.id, offered)
    done = engine.wait(run_on(engine, host.id, f"touch {marker}"), timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.SUCCESSFUL, all_logs(engine, done.id)
    assert marker.exists()


def test_a_changed_host_key_is_refused_with_both_fingerprints(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    host = add_ssh_host(engine, ssh_lab, ssh_server, tmp_path, name="rekeyed")
    old = ssh_server.fingerprint
    ssh_server.regenerate_host_key()
    new = ssh_server.fingerprint
    assert old != new
    marker = tmp_path / "ran"
    done = engine.wait(run_on(engine, host.id, f"touch {marker}"), timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.FAILED
    message = done.subtasks[0].message or ""
    assert "CHANGED" in message and old in message and new in message, message
    assert not marker.exists()

    # A pinned key wins over known_hosts, and a changed pinned key is refused as well.
    engine.hosts.set_host_key(host.id, ssh_server.host_public_key)
    again = engine.wait(run_on(engine, host.id, "true"), timeout=WAIT_SECONDS)
    assert again.status is TaskStatus.SUCCESSFUL, all_logs(engine, again.id)
    ssh_server.restore_host_key()
    pinned = engine.wait(run_on(engine, host.id, f"touch {marker}"), timeout=WAIT_SECONDS)
    assert pinned.status is TaskStatus.FAILED
    assert f"but {new} is pinned" in (pinned.subtasks[0].message or "")
    assert not marker.exists()


def test_accept_new_pins_the_first_key_and_still_refuses_a_change(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    host = add_ssh_host(
        engine,
        ssh_lab,
        ssh_server,
        tmp_path,
        name="tofu",
        known_hosts=empty,
        accept_new_host_key=True,
    )
    done = engine.wait(run_on(engine, host.id, "true"), timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.SUCCESSFUL, all_logs(engine, done.id)
    pinned = engine.hosts.get(host.id).host_key
    assert pinned is not None and hostkeys.fingerprint(pinned) == ssh_server.fingerprint
    assert empty.read_text() == ""  # pinned in the inventory, the file is left alone

    ssh_server.regenerate_host_key()
    connector(engine, host).pool.close()
    refused = engine.wait(run_on(engine, host.id, "true"), timeout=WAIT_SECONDS)
    assert refused.status is TaskStatus.FAILED
    assert "is pinned" in (refused.subtasks[0].message or "")


def test_password_authentication_by_reference_and_the_secret_never_shows(
    engine: Engine,
    ssh_lab: SshLab,
    ssh_server: SshServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if ssh_lab.password_user is None or ssh_lab.password is None:
        pytest.skip("password authentication needs root to create a local user")
    # The password lives in a file only the workers' machines have; the host names the file.
    secret_file = Path("/tmp") / f"dagtask-test-pw-{tmp_path.name}"
    secret_file.write_text(ssh_lab.password + "\n")
    secret_file.chmod(0o644)  # the remote user prints it below, as a careless script would
    host = add_ssh_host(
        engine,
        ssh_lab,
        ssh_server,
        Path("/tmp"),
        name="pw",
        user=ssh_lab.password_user,
        password_ref=f"file:{secret_file}",
    )
    stored = engine.hosts.get(host.id)
    assert stored.ssh is not None and stored.ssh.password_ref == f"file:{secret_file}"
    task_id = run_on(engine, host.id, f"id -un; echo pw is $(cat {secret_file})")
    done = engine.wait(task_id, timeout=WAIT_SECONDS)
    secret_file.unlink()
    assert done.status is TaskStatus.SUCCESSFUL, all_logs(engine, task_id)
    log = all_logs(engine, task_id)
    assert f"[pw] {ssh_lab.password_user}" in log
    assert "[pw] pw is ******" in log
    export = tmp_path / "export.json"
    engine.export(task_id, export)
    history = engine.history(task_id)
    everywhere = [
        log,
        export.read_text(),
        repr(history),
        engine.hosts.get(host.id).model_dump_json(),
    ]
    # The database file and its write-ahead log, as they are on disk.
    db_bytes = b"".join(path.read_bytes() for path in tmp_path.glob("ssh.db*"))
    for text in everywhere:
        assert ssh_lab.password not in text
    assert ssh_lab.password.encode() not in db_bytes

    # By environment variable, and a wrong one: refused, naming the reference only.
    monkeypatch.setenv("DAGTASK_TEST_SSH_PASSWORD", "wrong-password")
    other = add_ssh_host(
        engine,
        ssh_lab,
        ssh_server,
        Path("/tmp"),
        name="pw-env",
        user=ssh_lab.password_user,
        password_ref="env:DAGTASK_TEST_SSH_PASSWORD",
    )
    refused = engine.wait(run_on(engine, other.id, "true"), timeout=WAIT_SECONDS)
    message = refused.subtasks[0].message or ""
    assert "authentication as dagtask-sshtest with the password from env:" in message
    assert "wrong-password" not in message
    monkeypatch.setenv("DAGTASK_TEST_SSH_PASSWORD", ssh_lab.password)
    accepted = engine.wait(run_on(engine, other.id, "true"), timeout=WAIT_SECONDS)
    assert accepted.status is TaskStatus.SUCCESSFUL, all_logs(engine, accepted.id)


def test_a_password_is_refused_as_a_value_and_nothing_is_stored(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    with pytest.raises(ArgumentError, match="must be given as a reference") as raised:
        add_ssh_host(engine, ssh_lab, ssh_server, tmp_path, name="pw", password_ref="hunter22")
    assert "hunter22" not in str(raised.value)
    with pytest.raises(ArgumentError, match="exactly one way to authenticate"):
        add_ssh_host(
            engine,
            ssh_lab,
            ssh_server,
            tmp_path,
            name="two",
            key_file=str(ssh_lab.user_key),
            use_agent=True,
        )
    assert engine.hosts.list() == []


def test_a_host_that_is_down_or_silent_fails_fast_with_its_name(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    down_addr, down_port = ssh_lab.down_address()
    silent_addr, silent_port = ssh_lab.black_hole()
    dead_addr, dead_port = ssh_lab.unreachable()
    cases = {
        "down": (down_addr, down_port, "Connection refused"),
        "silent": (silent_addr, silent_port, "no SSH answer within 1 s"),
        "dead": (dead_addr, dead_port, "no answer within 1 s (connect timeout)"),
    }
    for name, (address, port, expected) in cases.items():
        host = add_ssh_host(
            engine,
            ssh_lab,
            ssh_server,
            tmp_path,
            name=name,
            address=address,
            port=port,
            connect_timeout=1.0,
        )
        started = time.monotonic()
        done = engine.wait(run_on(engine, host.id, "true"), timeout=WAIT_SECONDS)
        took = time.monotonic() - started
        message = done.subtasks[0].message or ""
        assert done.status is TaskStatus.FAILED
        assert f"host {host.id} ({name}" in message and expected in message, message
        assert took < 10, f"{name}: {took:.1f} s"


def test_a_jump_host_carries_the_connection(
    engine: Engine, ssh_lab: SshLab, tmp_path: Path
) -> None:
    jump_server, target_server = ssh_lab.servers[3], ssh_lab.servers[4]
    add_ssh_host(engine, ssh_lab, jump_server, tmp_path, name="bastion")
    target = add_ssh_host(
        engine, ssh_lab, target_server, tmp_path, name="inner", jump_host="bastion"
    )
    done = engine.wait(run_on(engine, target.id, "echo $SSH_CONNECTION"), timeout=WAIT_SECONDS)
    assert done.status is TaskStatus.SUCCESSFUL, all_logs(engine, done.id)
    # The target's sshd saw the connection come from the jump host's sshd (its loopback
    # address bound by the forwarding), and the log names the way there.
    log = all_logs(engine, done.id)
    seen = next(line for line in log.splitlines() if "[inner]" in line and "127.0.0." in line)
    assert f" {target_server.address} {target_server.port}" in seen

    with pytest.raises(ArgumentError, match="jump host 'nowhere' is not in the inventory"):
        add_ssh_host(engine, ssh_lab, target_server, tmp_path, name="x", jump_host="nowhere")


def test_idle_connections_are_closed_and_reopened_on_demand(
    ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    eng = Engine("sqlite:///" + str(tmp_path / "idle.db"), workers=0)
    with eng:
        host = add_ssh_host(eng, ssh_lab, ssh_server, tmp_path, name="idle")
        pool = ssh.SshPool(idle_seconds=0.3)
        conn = pool.get(host)
        assert conn.run("echo one").stdout == "one\n"
        assert pool.get(host).run("echo two").stdout == "two\n"
        assert (pool.connects, len(pool)) == (1, 1)
        deadline = time.monotonic() + 10
        while len(pool) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool) == 0 and not conn.alive  # closed by the idle reaper
        assert pool.get(host).run("echo three").stdout == "three\n"
        assert pool.connects == 2
        pool.close()


def test_a_command_longer_than_the_idle_time_keeps_its_connection(
    ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    """The idle reaper closes connections nobody uses, never one a command runs on."""
    eng = Engine("sqlite:///" + str(tmp_path / "busy.db"), workers=0)
    with eng:
        host = add_ssh_host(eng, ssh_lab, ssh_server, tmp_path, name="busy")
        pool = ssh.SshPool(idle_seconds=0.2)
        try:
            conn = pool.get(host)
            result = conn.run("sleep 1.2; echo still-here")
            assert result.stdout == "still-here\n"
            assert pool.connects == 1
        finally:
            pool.close()


def test_ssh_agent_authentication(
    engine: Engine,
    ssh_lab: SshLab,
    ssh_server: SshServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = shutil.which("ssh-agent")
    if agent is None:
        pytest.skip("ssh-agent is not installed: apt-get install openssh-client")
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen([agent, "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        wait_until(sock.exists, "the ssh-agent socket", 10)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", str(ssh_lab.user_key)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        host = add_ssh_host(engine, ssh_lab, ssh_server, tmp_path, name="agent", use_agent=True)
        assert engine.hosts.get(host.id).ssh.auth == "agent"  # type: ignore[union-attr]
        done = engine.wait(run_on(engine, host.id, "echo via-agent"), timeout=WAIT_SECONDS)
        assert done.status is TaskStatus.SUCCESSFUL, all_logs(engine, done.id)
        assert "[agent] via-agent" in all_logs(engine, done.id)
    finally:
        proc.kill()
        proc.wait()


def test_at_most_the_per_host_limit_of_commands_run_at_once(
    ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    eng = Engine("sqlite:///" + str(tmp_path / "limit.db"), workers=0)
    with eng:
        host = add_ssh_host(eng, ssh_lab, ssh_server, tmp_path, name="limited")
        pool = ssh.SshPool(per_host_limit=2)
        spans: list[tuple[float, float]] = []

        def one() -> None:
            out = pool.get(host).run("date +%s.%N; sleep 0.4; date +%s.%N").stdout.split()
            spans.append((float(out[0]), float(out[1])))

        threads = [threading.Thread(target=one) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        pool.close()
    assert len(spans) == 6
    # The most commands whose remote run times overlap at any one start moment.
    overlap = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert overlap == 2, spans
    assert pool.connects == 1


def test_a_frozen_host_fails_the_step_at_its_timeout(
    engine: Engine, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    from tests.ssh import handlers

    host = add_ssh_host(engine, ssh_lab, ssh_server, tmp_path, name="frozen")
    engine.register_template(handlers.remote_sleep_template("Remote sleep (frozen)", timeout=2))
    task = engine.submit("Remote sleep (frozen)", args={"host_id": str(host.id)})
    wait_until(lambda: "$ (trap" in all_logs(engine, task.id), "the remote command", 30)
    frozen = [ssh_server.pid or 0, *ssh_server.session_pids()]
    for pid in frozen:  # the host hangs: nothing answers, nothing closes
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        done = engine.wait(task.id, timeout=WAIT_SECONDS)
        took = time.monotonic() - started
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert done.status is TaskStatus.FAILED
    assert "timed out" in (done.subtasks[0].message or "").lower()
    # The timeout (2 s) plus at most one connect timeout (5 s) spent trying to stop the command.
    assert took < 2 + 5 + 5, took
