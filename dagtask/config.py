"""Settings of the ``dagtask`` command: the command line, else the environment, else a config
file, else the built-in default.

Every option of ``dagtask worker`` and ``dagtask serve`` is also an environment variable
``DAGTASK_<COMMAND>_<OPTION>`` (``worker --stop-timeout`` is ``DAGTASK_WORKER_STOP_TIMEOUT``) and a
key of a TOML file (``[worker]`` ``stop_timeout = 10``). ``--db`` is ``DAGTASK_DB_URL`` and the
top-level key ``db``; the database timeouts ``DAGTASK_CONNECT_TIMEOUT`` and
``DAGTASK_STATEMENT_TIMEOUT`` are the top-level keys ``connect_timeout`` and
``statement_timeout``. The file is ``$DAGTASK_CONFIG`` when that is set (it must then exist),
else ``./dagtask.toml`` when there is one. A repeatable option is a TOML list, or a
comma-separated variable.

The options are read from the parser itself (:class:`Registry`), so an option added to one of
these commands is a setting without another line here, and a value from the environment or the
file goes through the option's own argparse type: it is refused exactly as the same value on
the command line would be, with the variable (or the file and key) named.

Only the standard library is imported here: this runs before every command.
"""

from __future__ import annotations

import argparse
import difflib
import enum
import math
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagtask.errors import ConfigError

DEFAULT_WORKERS = 64
"""Worker threads of an :class:`~dagtask.Engine`, ``dagtask worker``, ``dagtask serve`` and
``--wait`` when none is given: the count that does best on this project's 2-core machine
(benchmarks/README.md, "64 worker threads"): a worker records the attempts that ended while its
last transaction ran in one transaction, so more slots make larger batches. On SQLite lattice10k
took 2.38 / 1.88 / 1.67 / 1.47 s with 8 / 16 / 32 / 64 threads and fan1k did 4,120 / 4,704 /
5,663 / 6,345 subtasks/s; 100 did no better than 64; chains and single tasks do not change.
Runner threads start only when that many attempts run at once, so an idle slot costs nothing."""

CONFIG_VAR = "DAGTASK_CONFIG"
CONFIG_FILE = "dagtask.toml"
SECTIONS = ("worker", "serve")
"""The commands whose options are settings; each is a ``[section]`` of the file."""
DB_VAR = "DAGTASK_DB_URL"
"""The variable :func:`dagtask.store.db.resolve_url` reads (not imported: that module is heavy)."""
DEFAULT_DB = "sqlite:///dagtask.db"
CONNECT_TIMEOUT_VAR = "DAGTASK_CONNECT_TIMEOUT"
STATEMENT_TIMEOUT_VAR = "DAGTASK_STATEMENT_TIMEOUT"
MAX_TIMEOUT = 365 * 24 * 3600.0
_NOT_SETTINGS = frozenset({"help", "db", "debug", "no_color"})
"""Options of every command that are not a command's own setting."""
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class Source(enum.StrEnum):
    """Where the value in effect came from, highest precedence first."""

    COMMAND_LINE = "command line"
    ENVIRONMENT = "environment"
    FILE = "config file"
    DEFAULT = "default"


@dataclass(frozen=True)
class Setting:
    """One setting: an option of a command (or a top-level one such as the database)."""

    section: str | None
    """The command (``worker``, ``serve``) and file section; None: top level."""
    key: str
    """The key in the file, e.g. ``stop_timeout``."""
    dest: str
    """The attribute of the parsed arguments."""
    convert: Callable[[str], Any]
    """The option's argparse type: text to value, ArgumentTypeError/ValueError if malformed."""
    default: Any
    option: str | None = None
    """The command-line spelling, e.g. ``--stop-timeout`` (None: no option)."""
    variable: str | None = None
    """The environment variable, when it is not ``DAGTASK_<SECTION>_<KEY>``."""
    multiple: bool = False
    """A repeatable option: a list."""
    flag: bool = False
    """An on/off option."""
    choices: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        """The environment variable that holds this setting."""
        if self.variable is not None:
            return self.variable
        prefix = f"DAGTASK_{self.section.upper()}_" if self.section else "DAGTASK_"
        return prefix + self.key.upper()

    @property
    def name(self) -> str:
        """``worker.stop_timeout``, or ``db`` for a top-level one."""
        return f"{self.section}.{self.key}" if self.section else self.key


@dataclass(frozen=True)
class Value:
    """The value of a setting in effect, and where it came from."""

    setting: Setting
    value: Any
    source: Source
    where: str
    """``--concurrency``, ``$DAGTASK_WORKER_CONCURRENCY``, ``/x/dagtask.toml [worker]
    concurrency``; empty for a default."""


@dataclass(frozen=True)
class ConfigFile:
    """A config file's settings: ``tables[None]`` the top-level keys, else ``tables[section]``."""

    path: Path
    tables: Mapping[str | None, Mapping[str, Any]]

    def where(self, setting: Setting) -> str:
        """How a message names ``setting`` in this file."""
        if setting.section is None:
            return f"{self.path} {setting.key}"
        return f"{self.path} [{setting.section}] {setting.key}"


# ---- converting text -----------------------------------------------------------------------------


def _database_url(text: str) -> str:
    if "://" not in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a database URL, e.g. sqlite:///dagtask.db or "
            "postgresql+psycopg://user@host/db"
        )
    return text


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= MAX_TIMEOUT:  # also refuses NaN
        raise argparse.ArgumentTypeError(
            f"must be between 0 (no limit) and {MAX_TIMEOUT:g} seconds, got {text}"
        )
    return value


TOP_LEVEL = (
    Setting(None, "db", "db", _database_url, DEFAULT_DB, option="--db", variable=DB_VAR),
    Setting(
        None, "connect_timeout", "connect_timeout", _timeout, 10.0, variable=CONNECT_TIMEOUT_VAR
    ),
    Setting(
        None,
        "statement_timeout",
        "statement_timeout",
        _timeout,
        30.0,
        variable=STATEMENT_TIMEOUT_VAR,
    ),
)
"""The settings of every command. The two timeouts are read by :mod:`dagtask.store.db` from the
environment where a connection opens; :meth:`Registry.apply` puts a value from the file there."""


def _convert_text(setting: Setting, text: str) -> Any:
    """``text`` through the setting's type, as argparse does; ArgumentTypeError if refused."""
    try:
        value = setting.convert(text)
    except argparse.ArgumentTypeError:
        raise
    except (ValueError, TypeError):
        name = getattr(setting.convert, "__name__", "")
        raise argparse.ArgumentTypeError(f"invalid {name} value: {text!r}") from None
    if setting.choices and value not in setting.choices:
        allowed = ", ".join(setting.choices)
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {allowed})")
    return value


def _flag(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not on or off; use 1/true/yes or 0/false/no")


def _from_env(setting: Setting, text: str) -> Any:
    if setting.flag:
        return _flag(text)
    if setting.multiple:
        return [_convert_text(setting, part.strip()) for part in text.split(",") if part.strip()]
    return _convert_text(setting, text.strip())


def _scalar_text(raw: Any) -> str:
    # TOML gives typed values; a bool where a number or a name is expected is a mistake, not 1.
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise argparse.ArgumentTypeError(f"expects text or a number, got {_toml(raw)}")
    if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        return str(int(raw)) if abs(raw) < 2**63 else repr(raw)
    return str(raw)


def _from_file(setting: Setting, raw: Any) -> Any:
    if setting.flag:
        if not isinstance(raw, bool):
            raise argparse.ArgumentTypeError(f"expects true or false, got {_toml(raw)}")
        return raw
    if setting.multiple:
        items = raw if isinstance(raw, list) else [raw]
        return [_convert_text(setting, _scalar_text(item)) for item in items]
    return _convert_text(setting, _scalar_text(raw))


def _toml(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, list):
        return "a list"
    if isinstance(raw, dict):
        return "a table"
    return repr(raw)


# ---- the file ------------------------------------------------------------------------------------


def find_file(environ: Mapping[str, str], cwd: Path) -> Path | None:
    """The config file in effect: ``$DAGTASK_CONFIG``, else ``./dagtask.toml`` if it exists."""
    named = environ.get(CONFIG_VAR, "").strip()
    if named:
        path = Path(named).expanduser()
        return path if path.is_absolute() else cwd / path
    default = cwd / CONFIG_FILE
    return default if default.is_file() else None


def _suggest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_file(path: Path, settings: Sequence[Setting]) -> ConfigFile:
    """Read and check the TOML file at ``path`` against the known ``settings``: a missing or
    unreadable file, a TOML syntax error, an unknown section or key are each one ConfigError."""
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist (named by ${CONFIG_VAR}); create it or unset "
            f"{CONFIG_VAR}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc.reason}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    keys: dict[str | None, set[str]] = {}
    for setting in settings:
        keys.setdefault(setting.section, set()).add(setting.key)
    tables: dict[str | None, dict[str, Any]] = {None: {}}
    for name, raw in data.items():
        if name in SECTIONS:
            if not isinstance(raw, dict):
                raise ConfigError(
                    f"config file {path}: {name} must be a section [{name}], got {_toml(raw)}"
                )
            for key in raw:
                if key not in keys.get(name, ()):
                    raise ConfigError(
                        f"config file {path}: [{name}] has no setting {key!r}"
                        f"{_suggest(key, keys.get(name, ()))}; see `dagtask config`"
                    )
            tables[name] = dict(raw)
        elif name in keys[None]:
            tables[None][name] = raw
        else:
            known = [*keys[None], *SECTIONS]
            raise ConfigError(
                f"config file {path}: unknown key {name!r}{_suggest(name, known)}; the top "
                f"level holds {', '.join(sorted(keys[None]))} and the sections "
                f"{', '.join(f'[{s}]' for s in SECTIONS)}"
            )
    return ConfigFile(path, tables)


# ---- resolving -----------------------------------------------------------------------------------


def resolve(
    setting: Setting,
    environ: Mapping[str, str],
    file: ConfigFile | None,
    given: tuple[Any, str] | None = None,
) -> Value:
    """The value of ``setting`` in effect: ``given`` (the command line's value and spelling),
    else the environment (an empty variable counts as unset), else ``file``, else the default."""
    if given is not None:
        return Value(setting, given[0], Source.COMMAND_LINE, given[1])
    text = environ.get(setting.env, "")
    if text.strip():
        try:
            value = _from_env(setting, text)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(
                f"environment variable {setting.env}={text!r}: {exc}; set it right or unset it "
                "(`dagtask config` shows each setting and its default)"
            ) from None
        return Value(setting, value, Source.ENVIRONMENT, f"${setting.env}")
    table = file.tables.get(setting.section, {}) if file is not None else {}
    if file is not None and setting.key in table:
        where = file.where(setting)
        try:
            value = _from_file(setting, table[setting.key])
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"config file {where}: {exc}") from None
        return Value(setting, value, Source.FILE, where)
    return Value(setting, setting.default, Source.DEFAULT, "")


def settings_of(parser: argparse.ArgumentParser, section: str) -> list[Setting]:
    """One setting per option of the command ``parser`` (all but --help, --db, --debug,
    --no-color)."""
    found = []
    for action in parser._actions:
        if not action.option_strings or action.dest in _NOT_SETTINGS:
            continue
        flag = action.nargs == 0
        convert = action.type if callable(action.type) else str
        found.append(
            Setting(
                section,
                action.dest,
                action.dest,
                convert,
                action.default,
                option=max(action.option_strings, key=len),
                multiple=isinstance(action, argparse._AppendAction),
                flag=flag,
                choices=tuple(str(c) for c in action.choices or ()),
            )
        )
    return found


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


class Registry:
    """The settings of a ``dagtask`` parser, and the step that fills them in after parsing.

    Building it makes the parser leave out the settings' options that are not given (their
    defaults become ``SUPPRESS``), so that :meth:`apply` can tell a value typed on the command
    line from a default, whatever the spelling or abbreviation used.
    """

    def __init__(self, parser: argparse.ArgumentParser, *, all_command: str = "config") -> None:
        """Read the settings of ``parser``'s ``worker`` and ``serve`` commands. The command
        ``all_command`` is given every setting (it shows them)."""
        self.commands = _commands(parser)
        self.all_command = all_command
        self.sections: dict[str, list[Setting]] = {}
        for section in SECTIONS:
            sub = self.commands.get(section)
            if sub is None:
                continue
            self.sections[section] = settings_of(sub, section)
            dests = {s.dest for s in self.sections[section]}
            for action in sub._actions:
                if action.dest in dests:
                    action.default = argparse.SUPPRESS

    @property
    def settings(self) -> list[Setting]:
        """Every setting: the top-level ones, then each command's."""
        return [*TOP_LEVEL, *(s for section in self.sections.values() for s in section)]

    def _command(self, args: argparse.Namespace) -> str | None:
        func = getattr(args, "func", None)
        for name, sub in self.commands.items():
            if func is not None and sub.get_default("func") is func:
                return name
        return None

    def apply(
        self,
        args: argparse.Namespace,
        environ: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> list[Value]:
        """Fill in ``args`` (parsed by this registry's parser) from the environment and the
        config file, and return every value in effect for the command that runs (for
        ``config``: every setting). Raises ConfigError for a bad value or file."""
        environ = os.environ if environ is None else environ
        path = find_file(environ, Path.cwd() if cwd is None else cwd)
        file = load_file(path, self.settings) if path is not None else None
        command = self._command(args)
        if command == self.all_command:
            wanted = self.settings
        else:
            wanted = [*TOP_LEVEL, *self.sections.get(command or "", [])]
        values = []
        for setting in wanted:
            own = setting in TOP_LEVEL or setting.section == command
            given = self._given(args, setting) if own else None
            value = resolve(setting, environ, file, given)
            values.append(value)
            if not own:
                continue
            if setting.dest == "db":
                # Leave a default to the store, which reads $DAGTASK_DB_URL the same way.
                if value.source is not Source.DEFAULT:
                    args.db = value.value
            elif setting.section is None:
                if value.source is Source.FILE and environ is os.environ:
                    # dagtask.store.db reads these from the environment where it connects.
                    os.environ[setting.env] = str(value.value)
            else:
                setattr(args, setting.dest, value.value)
        return values

    @staticmethod
    def _given(args: argparse.Namespace, setting: Setting) -> tuple[Any, str] | None:
        if setting.dest == "db":
            url = getattr(args, "db", None)
            return (url, "--db") if url is not None else None
        if setting.section is None or not hasattr(args, setting.dest):
            return None
        return getattr(args, setting.dest), setting.option or setting.dest
