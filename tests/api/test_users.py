"""Users: the password KDF, and `dagtask users add / list / passwd / roles`."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from dagtask import users as users_module
from dagtask.cli import main
from dagtask.errors import ArgumentError
from dagtask.store.db import open_database
from dagtask.store.schema import user as user_table
from dagtask.store.users import UserStore
from dagtask.users import (
    DEFAULT_COST,
    Role,
    ScryptCost,
    hash_password,
    parse_roles,
    verify_password,
)
from tests.api.support import CHEAP

# ---- the KDF -------------------------------------------------------------------------------------


def test_a_hash_is_self_describing_salted_scrypt() -> None:
    first, second = hash_password("s3cret-pass", CHEAP), hash_password("s3cret-pass", CHEAP)
    assert first != second, "a fresh random salt every time"
    scheme, params, salt, key = first.split("$")
    assert (scheme, params) == ("scrypt", "ln=4,r=8,p=1")
    assert len(salt) >= 20 and len(key) >= 40
    assert "s3cret-pass" not in first
    assert verify_password("s3cret-pass", first) and verify_password("s3cret-pass", second)
    assert not verify_password("s3cret-pasS", first)
    assert not verify_password("", first)


def test_the_default_cost_is_deliberately_slow() -> None:
    assert DEFAULT_COST.ln >= 15 and DEFAULT_COST.r >= 8
    assert hash_password("x" * 8).startswith("scrypt$ln=15,r=8,p=1$")


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain-text-password",
        "bcrypt$ln=4,r=8,p=1$AAAA$AAAA",
        "scrypt$ln=4,r=8$AAAA$AAAA",
        "scrypt$ln=40,r=8,p=1$AAAA$AAAA",
        "scrypt$ln=4,r=8,p=1$not base64!$AAAA",
    ],
)
def test_a_malformed_hash_never_matches(stored: str) -> None:
    assert not verify_password("plain-text-password", stored)


def test_roles_parse_from_names_and_comma_lists() -> None:
    assert parse_roles(["task_viewer,HOST_MANAGER", "ADMIN"]) == {
        Role.TASK_VIEWER,
        Role.HOST_MANAGER,
        Role.ADMIN,
    }
    with pytest.raises(ArgumentError, match="'ROOT' is not a role"):
        parse_roles(["ROOT"])
    with pytest.raises(ArgumentError, match="needs a role"):
        parse_roles([","])


# ---- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("DAGTASK_DB_URL", raising=False)
    # New hashes cost little here; production keeps DEFAULT_COST.
    monkeypatch.setattr(users_module, "DEFAULT_COST", CHEAP)
    return f"sqlite:///{tmp_path / 'users.db'}"


def dagtask(
    db: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *args: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    code = main(["--db", db, *args])
    out, err = capsys.readouterr()
    return code, out, err


def stored_hashes(db: str) -> dict[str, str]:
    database = open_database(db)
    try:
        with database.read() as conn:
            rows = conn.execute(sa.select(user_table.c.name, user_table.c.password_hash)).all()
    finally:
        database.dispose()
    return {name: h for name, h in rows}


def test_users_add_list_passwd_roles(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = lambda *args, stdin="": dagtask(db, capsys, monkeypatch, *args, stdin=stdin)  # noqa: E731
    code, out, _ = run(
        "users", "add", "alice", "--role", "ADMIN", "--password-stdin", stdin="first password\n"
    )
    assert code == 0 and "user alice added with roles ADMIN" in out
    code, out, _ = run(
        "users",
        "add",
        "bob",
        "--role",
        "host_manager,TASK_VIEWER",
        "--password-stdin",
        stdin="bobs password\n",
    )
    assert code == 0

    code, out, _ = run("users", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ENABLED", "ROLES"]
    assert lines[1].split() == ["alice", "yes", "ADMIN"]
    assert lines[2].split() == ["bob", "yes", "HOST_MANAGER,TASK_VIEWER"]
    code, out, _ = run("users", "list", "--json")
    listed = json.loads(out)
    assert [(u["name"], u["roles"]) for u in listed] == [
        ("alice", ["ADMIN"]),
        ("bob", ["HOST_MANAGER", "TASK_VIEWER"]),
    ]
    assert not any("hash" in key.lower() or "password" in key.lower() for key in listed[0])

    hashes = stored_hashes(db)
    assert verify_password("first password", hashes["alice"])
    assert "first password" not in hashes["alice"]

    code, out, _ = run("users", "passwd", "alice", "--password-stdin", stdin="second password\n")
    assert code == 0 and "password of alice changed" in out
    assert verify_password("second password", stored_hashes(db)["alice"])
    assert not verify_password("first password", stored_hashes(db)["alice"])

    code, out, _ = run("users", "disable", "bob")
    assert code == 0 and "user bob disabled" in out
    assert run("users", "list")[1].splitlines()[2].split()[:2] == ["bob", "no"]
    assert run("users", "enable", "bob")[1].strip() == "user bob enabled"

    code, out, _ = run("users", "roles", "bob", "--role", "TASK_MANAGER")
    assert code == 0 and "TASK_MANAGER" in out
    database = open_database(db)
    assert UserStore(database).get("bob").roles == {Role.TASK_MANAGER}
    database.dispose()


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("users", "add", "carol", "--role", "ROOT", "--password-stdin"), "password1\n", "ROOT"),
        (
            ("users", "add", "ca:rol", "--role", "ADMIN", "--password-stdin"),
            "password1\n",
            "not a valid user name",
        ),
        (("users", "add", "carol", "--role", "ADMIN", "--password-stdin"), "short\n", "at least 8"),
        (("users", "add", "carol", "--role", "ADMIN", "--password-stdin"), "", "no password"),
        (("users", "add", "carol", "--role", "ADMIN"), "password1\n", "--password-stdin"),
        (("users", "passwd", "nobody", "--password-stdin"), "password1\n", "no user named"),
    ],
)
def test_users_mistakes_are_one_line_errors(
    db: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    stdin: str,
    message: str,
) -> None:
    code, _, err = dagtask(db, capsys, monkeypatch, *args, stdin=stdin)
    refused = message == "no user named"  # the store refused (404): exit 4; a mistake: 2
    assert code == (4 if refused else 2) and err.startswith("dagtask: error") and message in err


def test_a_taken_name_is_refused_before_a_password_is_asked(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ("users", "add", "dave", "--role", "ADMIN", "--password-stdin")
    assert dagtask(db, capsys, monkeypatch, *args, stdin="password1\n")[0] == 0
    code, _, err = dagtask(db, capsys, monkeypatch, *args, stdin="")
    assert code == 4 and "already exists" in err  # refused (409), not a usage mistake


def test_passwords_cannot_be_given_on_the_command_line(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["--db", db, "users", "add", "eve", "--role", "ADMIN", "--password", "x" * 10])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_the_prompt_asks_twice(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter(["typed password", "typed password", "other password", "typo password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    monkeypatch.setattr(sys, "stdin", _Tty())
    assert main(["--db", db, "users", "add", "frank", "--role", "TASK_VIEWER"]) == 0
    assert verify_password("typed password", stored_hashes(db)["frank"])
    assert main(["--db", db, "users", "passwd", "frank"]) == 2
    assert "differ" in capsys.readouterr().err
    assert verify_password("typed password", stored_hashes(db)["frank"])


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_scrypt_cost_limits_are_enforced() -> None:
    with pytest.raises(ArgumentError):
        hash_password("password1", ScryptCost(ln=25))
