"""`dagtask hosts add --connector ssh`, `hosts check` and `hosts trust` against real sshd servers,
and the one-line refusals of what a user can get wrong."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dagtask.cli import main
from tests.processes import kill_processes_under
from tests.ssh.sshd import SshLab, SshServer

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def dt(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """``main(["--db", <tmp db>, *ARGS])`` in-process: (exit code, stdout, stderr)."""
    monkeypatch.delenv("DAGTASK_DB_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    url = f"sqlite:///{tmp_path / 'cli.db'}"

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--db", url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    kill_processes_under(tmp_path)


def add(dt: Run, lab: SshLab, server: SshServer, name: str, *more: str) -> tuple[int, str, str]:
    return dt(
        "hosts",
        "add",
        "--name",
        name,
        "--ip",
        server.address,
        "--agent-home",
        "/tmp/dagtask-cli-agent",
        "--connector",
        "ssh",
        "--port",
        str(server.port),
        "--ssh-user",
        lab.user,
        *more,
    )


def one_line(result: tuple[int, str, str], code: int = 2) -> str:
    got, out, err = result
    assert got == code, out + err
    assert re.match(r"dagtask: error( \d+)?: ", err), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_add_check_and_list_an_ssh_host(dt: Run, ssh_lab: SshLab, ssh_server: SshServer) -> None:
    code, out, err = add(
        dt,
        ssh_lab,
        ssh_server,
        "r1",
        "--key-file",
        str(ssh_lab.user_key),
        "--known-hosts",
        str(ssh_lab.known_hosts),
    )
    assert code == 0, err
    where = f"{ssh_lab.user}@{ssh_server.address}:{ssh_server.port}"
    assert f"host 1 added: r1 {ssh_server.address}, connector ssh: {where}" in out
    code, out, err = dt("hosts", "check", "1")
    assert code == 0, out + err
    assert re.search(r"^1\s+r1\s+yes\s+Linux .*STOPPED", out, re.M), out
    code, out, _ = dt("hosts", "list", "--json")
    (host,) = json.loads(out)
    assert host["agent_status"] == "STOPPED" and host["os_info"].startswith("Linux")
    assert host["ssh"]["key_file"] == str(ssh_lab.user_key)


def test_check_all_reports_each_host_and_exits_1_when_one_fails(dt: Run, ssh_lab: SshLab) -> None:
    for i, server in enumerate(ssh_lab.servers[:3]):
        extra = ["--known-hosts", str(ssh_lab.known_hosts)]
        assert (
            add(dt, ssh_lab, server, f"c{i}", "--key-file", str(ssh_lab.user_key), *extra)[0] == 0
        )
    ssh_lab.servers[2].kill()
    code, out, _err = dt("hosts", "check", "--all", "--json")
    assert code == 1
    reports = json.loads(out)
    assert [r["reached"] for r in reports] == [True, True, False]
    assert "Connection refused" in reports[2]["error"]


def test_trust_shows_the_fingerprint_and_pins_only_a_matching_key(
    dt: Run, ssh_lab: SshLab, ssh_server: SshServer, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    args = ["--key-file", str(ssh_lab.user_key), "--known-hosts", str(empty)]
    assert add(dt, ssh_lab, ssh_server, "t1", *args)[0] == 0
    code, out, err = dt("hosts", "check", "1")
    assert code == 1 and "not pinned and not in" in err and "dagtask hosts trust 1" in err
    wrong = "SHA256:" + "A" * 43
    err = one_line(dt("hosts", "trust", "1", "--fingerprint", wrong), code=4)
    assert ssh_server.fingerprint in err and "nothing was pinned" in err
    # Not a terminal and no --yes: refused with what to do, nothing pinned.
    err = one_line(dt("hosts", "trust", "1"))
    assert "--fingerprint SHA256:... or --yes" in err
    code, out, err = dt("hosts", "trust", "1", "--fingerprint", ssh_server.fingerprint)
    assert code == 0, err
    assert f"presents ssh-ed25519 {ssh_server.fingerprint}" in out and "pinned" in out
    code, out, err = dt("hosts", "check", "1")
    assert code == 0, out + err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "exactly one way to authenticate"),
        (["--password-ref", "s3cret-value"], "must be given as a reference"),
        (["--ssh-agent", "--key-file", "/etc/hostname"], "exactly one way to authenticate"),
        (["--key-file", "/no/such/key"], "the private key file /no/such/key does not exist"),
        (["--ssh-agent", "--jump-host", "nowhere"], "jump host 'nowhere' is not in the inventory"),
        (["--ssh-agent", "--agent-kind", "nope"], "agent kind 'nope' is not known"),
    ],
)
def test_bad_ssh_hosts_are_one_line_exit_2_and_nothing_is_stored(
    dt: Run, ssh_lab: SshLab, ssh_server: SshServer, args: list[str], expected: str
) -> None:
    err = one_line(add(dt, ssh_lab, ssh_server, "bad", *args))
    assert expected in err
    assert "s3cret-value" not in err
    code, out, _ = dt("hosts", "list", "--json")
    # Refused before the database was even opened, or opened and left without a host.
    assert (code, out) == (0, "[]\n") or (code != 0 and not Path("cli.db").exists())


def test_ssh_options_without_the_ssh_connector_are_refused(dt: Run) -> None:
    err = one_line(
        dt(
            "hosts",
            "add",
            "--name",
            "l",
            "--ip",
            "127.0.0.1",
            "--agent-home",
            "/tmp/x",
            "--key-file",
            "/etc/hostname",
        )
    )
    assert "--key-file is for SSH hosts; add --connector ssh" in err
