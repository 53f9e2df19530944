"""Settings: command line > environment > config file > default, and one clear line for a bad
value naming the variable, or the file and key (dagtask.config)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dagtask import config
from dagtask.errors import ConfigError


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    """A parser shaped like dagtask's: --db on top, worker and serve commands, and another."""
    top = argparse.ArgumentParser(prog="dagtask")
    top.add_argument("--db", default=None)
    commands = top.add_subparsers(required=True)
    worker = commands.add_parser("worker")
    worker.add_argument("--concurrency", type=positive_int, default=4)
    worker.add_argument("--stop-timeout", type=float, default=30.0)
    worker.add_argument("--name")
    worker.add_argument("--log-format", choices=["text", "json"], default="text")
    worker.set_defaults(func="worker")
    serve = commands.add_parser("serve")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--trusted-proxy", action="append", default=[])
    serve.add_argument("--quiet", action="store_true")
    serve.set_defaults(func="serve")
    commands.add_parser("list").set_defaults(func="list")
    commands.add_parser("config").set_defaults(func="config")
    return top


def run(
    argv: list[str], tmp_path: Path, env: dict[str, str] | None = None, toml: str | None = None
) -> tuple[argparse.Namespace, dict[str, config.Value]]:
    if toml is not None:
        (tmp_path / "dagtask.toml").write_text(toml, encoding="utf-8")
    p = parser()
    registry = config.Registry(p)
    args = p.parse_args(argv)
    values = registry.apply(args, env or {}, tmp_path)
    return args, {v.setting.name: v for v in values}


def test_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    args, values = run(["worker"], tmp_path)
    assert (args.concurrency, args.stop_timeout, args.name) == (4, 30.0, None)
    assert values["worker.concurrency"].source is config.Source.DEFAULT
    assert values["db"].value == "sqlite:///dagtask.db"
    assert args.db is None  # the store resolves the default itself


def test_command_line_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    toml = "db = 'sqlite:///file.db'\n[worker]\nconcurrency = 2\nstop_timeout = 5\nname = 'f'\n"
    env = {"DAGTASK_WORKER_CONCURRENCY": "3", "DAGTASK_WORKER_STOP_TIMEOUT": "7"}
    args, values = run(["worker", "--conc", "9"], tmp_path, env, toml)
    assert (args.concurrency, args.stop_timeout, args.name) == (9, 7.0, "f")
    assert values["worker.concurrency"].source is config.Source.COMMAND_LINE
    assert values["worker.concurrency"].where == "--concurrency"
    assert values["worker.stop_timeout"].source is config.Source.ENVIRONMENT
    assert values["worker.stop_timeout"].where == "$DAGTASK_WORKER_STOP_TIMEOUT"
    assert values["worker.name"].source is config.Source.FILE
    assert values["worker.name"].where == f"{tmp_path / 'dagtask.toml'} [worker] name"
    assert args.db == "sqlite:///file.db"
    assert values["worker.log_format"].source is config.Source.DEFAULT


def test_a_value_given_equal_to_the_default_still_wins(tmp_path: Path) -> None:
    args, values = run(["worker", "--concurrency", "4"], tmp_path, {}, "[worker]\nconcurrency=8\n")
    assert args.concurrency == 4
    assert values["worker.concurrency"].source is config.Source.COMMAND_LINE


def test_db_from_the_command_line_environment_and_file(tmp_path: Path) -> None:
    toml = "db = 'sqlite:///file.db'\n"
    env = {"DAGTASK_DB_URL": "sqlite:///env.db"}
    args, values = run(["--db", "sqlite:///cli.db", "list"], tmp_path, env, toml)
    assert (args.db, values["db"].source) == ("sqlite:///cli.db", config.Source.COMMAND_LINE)
    args, values = run(["list"], tmp_path, env)
    assert (args.db, values["db"].where) == ("sqlite:///env.db", "$DAGTASK_DB_URL")
    args, values = run(["list"], tmp_path, {"DAGTASK_DB_URL": "  "})
    assert values["db"].source is config.Source.FILE  # blank counts as unset; the file remains


def test_repeatable_options_and_flags(tmp_path: Path) -> None:
    env = {"DAGTASK_SERVE_TRUSTED_PROXY": "10.0.0.1, 10.1.0.0/16", "DAGTASK_SERVE_QUIET": "yes"}
    args, _ = run(["serve"], tmp_path, env)
    assert (args.trusted_proxy, args.quiet) == (["10.0.0.1", "10.1.0.0/16"], True)
    args, _ = run(["serve"], tmp_path, {}, "[serve]\ntrusted_proxy = ['::1']\nquiet = false\n")
    assert (args.trusted_proxy, args.quiet, args.port) == (["::1"], False, 8080)
    args, _ = run(["serve", "--trusted-proxy", "1.2.3.4"], tmp_path, env)
    assert args.trusted_proxy == ["1.2.3.4"]


def test_only_the_running_commands_settings_are_filled(tmp_path: Path) -> None:
    args, values = run(["list"], tmp_path, {"DAGTASK_WORKER_CONCURRENCY": "oops"})
    assert not hasattr(args, "concurrency")
    assert set(values) == {"db", "connect_timeout", "statement_timeout"}


def test_config_sees_every_setting(tmp_path: Path) -> None:
    _, values = run(["config"], tmp_path, {"DAGTASK_SERVE_PORT": "9000"})
    assert values["serve.port"].value == 9000
    assert {"worker.concurrency", "serve.trusted_proxy", "db"} <= set(values)


@pytest.mark.parametrize(
    "env, message",
    [
        (
            {"DAGTASK_WORKER_CONCURRENCY": "abc"},
            "environment variable DAGTASK_WORKER_CONCURRENCY='abc': invalid positive_int value",
        ),
        (
            {"DAGTASK_WORKER_CONCURRENCY": "0"},
            "DAGTASK_WORKER_CONCURRENCY='0': must be more than 0, got 0",
        ),
        ({"DAGTASK_WORKER_LOG_FORMAT": "xml"}, "invalid choice: 'xml' (choose from text, json)"),
        ({"DAGTASK_DB_URL": "dagtask.db"}, "DAGTASK_DB_URL='dagtask.db': 'dagtask.db' is not a"),
        ({"DAGTASK_STATEMENT_TIMEOUT": "-1"}, "DAGTASK_STATEMENT_TIMEOUT='-1': must be between"),
    ],
)
def test_a_bad_environment_value_names_the_variable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        run(["worker"], tmp_path, env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[worker]\nconcurrency = 'many'\n", "[worker] concurrency: invalid positive_int value"),
        ("[worker]\nconcurrency = true\n", "[worker] concurrency: expects text or a number"),
        ("[worker]\nconcurency = 2\n", "[worker] has no setting 'concurency' (did you mean"),
        ("[wroker]\nconcurrency = 2\n", "unknown key 'wroker' (did you mean 'worker'?)"),
        ("worker = 3\n", "worker must be a section [worker], got 3"),
        ("[serve]\nquiet = 'yes'\n", "[serve] quiet: expects true or false, got 'yes'"),
        ("[worker\n", "is not valid TOML"),
    ],
)
def test_a_bad_file_names_the_file_and_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        run(["config"], tmp_path, {}, toml)
    text = str(caught.value)
    assert message in text
    assert str(tmp_path / "dagtask.toml") in text
    assert "\n" not in text


def test_dagtask_config_names_the_file(tmp_path: Path) -> None:
    other = tmp_path / "etc" / "dt.toml"
    other.parent.mkdir()
    other.write_text("[worker]\nconcurrency = 6\n", encoding="utf-8")
    (tmp_path / "dagtask.toml").write_text("[worker]\nconcurrency = 2\n", encoding="utf-8")
    args, values = run(["worker"], tmp_path, {"DAGTASK_CONFIG": "etc/dt.toml"})
    assert args.concurrency == 6
    assert values["worker.concurrency"].where == f"{other} [worker] concurrency"
    with pytest.raises(ConfigError, match=r"config file .*missing.toml does not exist"):
        run(["worker"], tmp_path, {"DAGTASK_CONFIG": "missing.toml"})


def test_a_float_that_is_whole_reaches_an_int_option(tmp_path: Path) -> None:
    args, _ = run(["worker"], tmp_path, {}, "[worker]\nconcurrency = 3.0\nstop_timeout = 2\n")
    assert (args.concurrency, args.stop_timeout) == (3, 2.0)


def test_the_db_variable_is_the_one_the_store_reads() -> None:
    from dagtask.store import db

    assert (config.DB_VAR, config.DEFAULT_DB) == (db.ENV_VAR, db.DEFAULT_URL)
    assert (config.CONNECT_TIMEOUT_VAR, config.STATEMENT_TIMEOUT_VAR) == (
        db.CONNECT_TIMEOUT_VAR,
        db.STATEMENT_TIMEOUT_VAR,
    )
