"""Every user mistake on the command line is one line on stderr and exit 2, never a traceback;
a bug is one line and exit 3 (the traceback with --debug / DAGTASK_DEBUG=1); commands that only
read never create a schema or a SQLite file; importing the same export twice stores it once.

All through real ``python -m dagtask`` processes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dagtask.errors import HandlerImportError
from dagtask.handlers import resolve
from tests.integration.cli.support import CLI_TIMEOUT, Cli

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "ocp"
HANDLERS = {
    "syntax": ("def broken(:\n", "has a syntax error"),
    "raises": ("raise ValueError('no config here')\n", "ValueError: no config here"),
    "exits": ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
}
READ_ONLY = [
    ("list",),
    ("show", "1"),
    ("logs", "1", "1"),
    ("history", "1"),
    ("replay", "1"),
    ("export", "1"),
    ("timeline", "1"),
    ("workers",),
    ("hosts", "list"),
    ("rollback", "1", "--plan"),
    ("users", "list"),
]


def dagtask(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m dagtask ARGS`` (no --db added) in ``cwd``."""
    clean = dict(os.environ if env is None else env)
    clean.pop("DAGTASK_DB_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "dagtask", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def one_line(done: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The single stderr line of a refused command (exit ``code``, nothing on stdout)."""
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def usage_error(done: subprocess.CompletedProcess[str]) -> str:
    """The error line of an argparse usage error (after argparse's usage line), exit 2."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("usage: dagtask"), done.stderr
    assert re.match(r"dagtask [\w ]+: error: argument ", lines[-1]), done.stderr
    return lines[-1]


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    line = one_line(done)
    assert re.match(r"dagtask( \w+)?: error", line), line
    return line


@pytest.mark.parametrize(
    "args, expected",
    [
        (("show", str(10**23)), "ids are between 1 and 9223372036854775807"),
        (("logs", "1", str(2**63)), "ids are between 1 and 9223372036854775807"),
        (("list", "--page", str(10**30)), "--page: must be at most"),
        (("list", "--size", "2001"), "--size: must be at most 2000"),
        (("run", "x", "--wait", "--timeout", "inf"), "--timeout: must be at most"),
        (("worker", "--concurrency", str(10**9)), "--concurrency: must be at most 1024"),
        (("worker", "--lease", str(10**20)), "--lease: must be at most"),
    ],
)
def test_numbers_out_of_range_are_refused_before_touching_the_database(
    cli: Cli, tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    line = usage_error(cli(*args))
    assert expected in line, line
    assert not (tmp_path / "x.db").exists()


def test_a_binary_template_file_is_one_line(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_bytes(b"\x00\xff\xfe\x00binary")
    line = error_line(cli("run", "flow.yaml"))
    assert "template file 'flow.yaml' is not UTF-8 text" in line


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_a_handler_module_that_fails_to_import_is_one_line_naming_it(
    cli: Cli, tmp_path: Path, kind: str
) -> None:
    source, cause = HANDLERS[kind]
    (tmp_path / f"bad_{kind}.py").write_text(source)
    (tmp_path / "flow.yaml").write_text(
        f"name: Bad {kind}\nsubtasks:\n  - name: one\n    handler: bad_{kind}.Step\n"
    )
    line = error_line(cli("run", "flow.yaml"))
    assert f"module 'bad_{kind}'" in line and cause in line, line
    assert cli("list").stdout.strip().startswith("no tasks")  # nothing was submitted


def test_resolve_turns_any_import_failure_into_handler_import_error(tmp_path: Path) -> None:
    deep = ".".join(["pkg"] * 400) + ".Step"
    with pytest.raises(HandlerImportError, match="401 dotted parts"):
        resolve(deep)
    with pytest.raises(HandlerImportError, match="not a dotted path of Python names"):
        resolve("my-pkg.Step")


@pytest.mark.parametrize(
    "url, expected",
    [
        ("", "the database URL is empty"),
        ("foo://", "unknown database type 'foo'"),
        ("postgres://u@127.0.0.1/db", "write postgresql+psycopg://... instead"),
        ("mysql://u@127.0.0.1/db", "use mysql+pymysql://..."),
        ("not a url", "is not a database URL"),
    ],
)
def test_a_database_url_that_cannot_work_says_what_to_write(
    tmp_path: Path, url: str, expected: str
) -> None:
    line = error_line(dagtask("--db", url, "list", cwd=tmp_path))
    assert expected in line, line
    assert list(tmp_path.iterdir()) == []  # in particular no ./dagtask.db


def test_a_file_that_is_not_sqlite_is_one_line_and_left_alone(tmp_path: Path) -> None:
    garbage = tmp_path / "notes.db"
    garbage.write_bytes(b"these are my notes, not a database " * 10)
    for args in (
        ("list",),
        ("hosts", "add", "--name", "h", "--ip", "10.0.0.1", "--agent-home", "x"),
    ):
        line = error_line(dagtask("--db", f"sqlite:///{garbage}", *args, cwd=tmp_path))
        assert "is not a SQLite database" in line, line
    assert garbage.read_bytes() == b"these are my notes, not a database " * 10


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """Makes a file read-only even for root (``chattr +i``), and writable again afterwards."""
    done: list[Path] = []

    def freeze(path: Path) -> None:
        result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot make a file immutable here: {result.stderr.strip()}")
        done.append(path)

    yield freeze
    for path in done:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_database_reads_but_refuses_writes_in_one_line(
    tmp_path: Path, immutable: Callable[[Path], None]
) -> None:
    db = tmp_path / "x.db"
    url = f"sqlite:///{db}"
    assert dagtask("--db", url, "db", "upgrade", cwd=tmp_path).returncode == 0
    immutable(db)
    done = dagtask("--db", url, "list", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("no tasks"), done.stderr
    add = ("hosts", "add", "--name", "h", "--ip", "10.0.0.1", "--agent-home", "x")
    line = error_line(dagtask("--db", url, *add, cwd=tmp_path))
    assert line == (
        f"dagtask: error: database {url} is read-only (attempt to write a readonly database); "
        "give this process write access to the file and its folder, or use another database"
    )


def test_templates_lists_the_built_in_ones_without_creating_a_database(tmp_path: Path) -> None:
    done = dagtask("--db", f"sqlite:///{tmp_path / 'new.db'}", "templates", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Stop OCP agent" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_hosts_need_an_ip_address_not_a_name(cli: Cli) -> None:
    for ip in ("not-an-ip", "db1.example.com", "10.0.0.300"):
        line = error_line(cli("hosts", "add", "--name", "h", "--ip", ip, "--agent-home", "x"))
        assert f"{ip!r} is not an IP address" in line, line
    done = cli("hosts", "add", "--name", "h6", "--ip", "FD00:0:0::7", "--agent-home", "x")
    assert done.returncode == 0, done.stderr
    assert "fd00::7" in done.stdout  # stored in canonical form
    assert cli("hosts", "list", "--json").stdout.count('"inner_ip"') == 1


def test_an_unexpected_error_is_one_line_with_how_to_see_the_traceback(tmp_path: Path) -> None:
    # A bug planted in a real process: a command that raises something no user causes.
    program = (
        "import sys, dagtask.cli as c, dagtask.cli.admin as admin\n"
        "def broken(args):\n    '''Lists templates.'''\n    raise RuntimeError('planted bug')\n"
        "admin.cmd_templates = broken\n"
        "sys.exit(c.main(sys.argv[1:]))\n"
    )
    args = [sys.executable, "-c", program, "--db", f"sqlite:///{tmp_path}/x.db", "templates"]
    env = {k: v for k, v in os.environ.items() if k not in ("DAGTASK_DB_URL", "DAGTASK_DEBUG")}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT)
    line = one_line(done, code=3)
    assert line.startswith("dagtask: internal error: RuntimeError: planted bug"), line
    assert "--debug" in line and "DAGTASK_DEBUG=1" in line
    for extra_env, extra_args in (({"DAGTASK_DEBUG": "1"}, []), ({}, ["--debug"])):
        done = subprocess.run(
            [*args[:3], *extra_args, *args[3:]],
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )
        assert done.returncode == 3
        assert "Traceback (most recent call last)" in done.stderr
        assert done.stderr.rstrip().splitlines()[-1].startswith("dagtask: internal error:")


@pytest.mark.parametrize("args", READ_ONLY, ids=" ".join)
def test_read_only_commands_do_not_create_a_sqlite_file(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    db = tmp_path / "new.db"
    line = error_line(dagtask("--db", f"sqlite:///{db}", *args, cwd=tmp_path))
    assert "does not exist" in line and "dagtask db upgrade" in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "server", [pytest.param("pg_url", marks=pytest.mark.postgres),
               pytest.param("mysql_url", marks=pytest.mark.mysql)],
)  # fmt: skip
def test_read_only_commands_do_not_create_tables_on_a_server(
    tmp_path: Path, request: pytest.FixtureRequest, server: str
) -> None:
    url = str(request.getfixturevalue(server))
    for args in (("list",), ("export", "1"), ("hosts", "list")):
        line = error_line(dagtask("--db", url, *args, cwd=tmp_path))
        assert "has no dagtask schema" in line and "dagtask db upgrade" in line, line
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
    finally:
        engine.dispose()
    # The advice works: after `db upgrade` the same command reads the (empty) database.
    assert dagtask("--db", url, "db", "upgrade", cwd=tmp_path).returncode == 0
    done = dagtask("--db", url, "list", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("no tasks"), done.stderr


def test_importing_the_same_export_twice_stores_it_once(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "steps.py").write_text("def hello(ctx):\n    return {'said': 'hello'}\n")
    (tmp_path / "flow.yaml").write_text(
        "name: Hello\nsubtasks:\n  - name: hi\n    handler: steps.hello\n"
    )
    ran = cli("run", "flow.yaml", "--wait")
    assert ran.returncode == 0, ran.stderr
    source = int(re.search(r"task (\d+)", ran.stdout).group(1))  # type: ignore[union-attr]
    assert cli("export", str(source), "-o", "task.jsonl").returncode == 0
    other = f"sqlite:///{tmp_path / 'other.db'}"
    first = cli("import", "--db", other, "task.jsonl")
    assert first.returncode == 0, first.stderr
    imported = int(re.search(r"^task (\d+) ", first.stdout).group(1))  # type: ignore[union-attr]

    again = cli("import", "--db", other, "task.jsonl")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"task.jsonl: dagtask task {source} (Hello) is already imported as task {imported}; "
        "not imported again (--allow-duplicate imports another copy)"
    ]
    listed = cli("list", "--db", other, "--json")
    assert [t["id"] for t in json.loads(listed.stdout)["contents"]] == [imported]

    copy = cli("import", "--db", other, "--allow-duplicate", "task.jsonl")
    assert copy.returncode == 0, copy.stderr
    assert "1 task imported" in copy.stdout


def test_importing_files_of_which_some_are_imported_already_imports_nothing(cli: Cli) -> None:
    first, second = SAMPLES / "task-detail.json", SAMPLES / "restart-ocp-agent.json"
    assert cli("import", str(first)).returncode == 0
    mixed = cli("import", str(first), str(second))
    assert mixed.returncode == 2, mixed.stdout + mixed.stderr
    lines = mixed.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in mixed.stderr, mixed.stderr
    assert lines[0].startswith("task-detail.json: OCP task ") and "is already imported" in lines[0]
    assert lines[1].startswith("dagtask: error: 1 task of these files are already imported")
    listed = json.loads(cli("list", "--json").stdout)["contents"]
    assert len(listed) == 1  # the second file was not imported either
