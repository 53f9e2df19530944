"""The ``dagtask`` argument parser, assembled from each command module's ``add_commands``.

Only the standard library is imported at the top: the command modules (and SQLAlchemy with
them) are imported when the parser is built, so that importing :mod:`dagtask.cli` is cheap.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import shutil
import textwrap
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from dagtask import __version__

if TYPE_CHECKING:
    from dagtask.cli.common import Commands

Parser = argparse.ArgumentParser

REGISTRARS = (
    "dagtask.cli.tasks:add_commands",
    "dagtask.cli.admin:add_commands",
    "dagtask.cli.history:add_commands",
    "dagtask.cli.retention:add_commands",
    "dagtask.cli.schedules:add_commands",
    "dagtask.cli.webhooks:add_commands",
    "dagtask.cli.api:add_commands",
    "dagtask.cli.admin:add_db_commands",
    "dagtask.cli.parser:add_config_command",
    "dagtask.cli.completion:add_commands",
)
"""Who registers which subcommands, in the order ``dagtask --help`` lists them."""

EXAMPLES = {
    "demo": "dagtask demo",
    "run": "dagtask run stop-ocp-agent --set host_id=1 --wait",
    "show": "dagtask show 7",
    "list": "dagtask list --status FAILED --since 2026-01-31 --host 1",
    "logs": "dagtask logs 7 'Stop agent'",
    "retry": "dagtask retry 7 --wait",
    "rollback": "dagtask rollback 7 --plan",
    "cancel": "dagtask cancel 7",
    "subtask retry": "dagtask subtask retry 7 12 --wait",
    "subtask skip": "dagtask subtask skip 7 12",
    "subtask cancel": "dagtask subtask cancel 7 12",
    "templates": "dagtask templates",
    "hosts add": "dagtask hosts add --name local-1 --ip 127.0.0.1 --agent-home ./agent-home",
    "hosts list": "dagtask hosts list",
    "hosts check": "dagtask hosts check --all",
    "hosts trust": "dagtask hosts trust 3 --fingerprint SHA256:1lSp2Ck0...",
    "worker": "dagtask worker --concurrency 8 --name worker-1",
    "workers": "dagtask workers",
    "history": "dagtask history 7",
    "schedule add": "dagtask schedule add nightly-check check-hosts --cron '0 0 2 * * ?' --tz UTC",
    "schedule list": "dagtask schedule list",
    "schedule show": "dagtask schedule show nightly-check",
    "schedule enable": "dagtask schedule enable nightly-check",
    "schedule disable": "dagtask schedule disable nightly-check",
    "schedule delete": "dagtask schedule delete nightly-check",
    "schedule run-now": "dagtask schedule run-now nightly-check",
    "schedule set": "dagtask schedule set purge-finished-tasks --set older_than=90d",
    "webhooks add": "dagtask webhooks add https://ci.example.com/hook --secret-ref env:HOOK_KEY",
    "webhooks list": "dagtask webhooks list",
    "webhooks remove": "dagtask webhooks remove 1",
    "webhooks enable": "dagtask webhooks enable 1",
    "webhooks disable": "dagtask webhooks disable 1",
    "webhooks deliveries": "dagtask webhooks deliveries --webhook 1 --limit 20",
    "replay": "dagtask replay 7 --step 5",
    "export": "dagtask export 7 > task.jsonl",
    "import": "dagtask import task.jsonl",
    "rerun": "dagtask rerun 7 --from 'Restart agent' --wait",
    "timeline": "dagtask timeline 7 --html timeline.html",
    "compat": "dagtask compat 7 --template v2.yaml",
    "purge": "dagtask purge --older-than 30d --dry-run",
    "serve": "dagtask serve --port 8080",
    "users add": "dagtask users add alice --role ADMIN",
    "users list": "dagtask users list",
    "users passwd": "dagtask users passwd alice",
    "users roles": "dagtask users roles alice --role VIEWER",
    "users disable": "dagtask users disable alice",
    "users enable": "dagtask users enable alice",
    "db upgrade": "dagtask db upgrade",
    "config": "DAGTASK_WORKER_CONCURRENCY=8 dagtask config",
    "completion": "source <(dagtask completion bash)",
}
"""One example per command, shown at the end of its ``--help``."""

EXIT_CODES = """\
exit codes:
  0    done
  1    a task ended FAILED (or a check failed: rollback --plan, replay, compat, hosts check)
  2    a mistake in the command, its settings or arguments, or a database that cannot be
       used (one line on stderr)
  3    a bug (one line; --debug or DAGTASK_DEBUG=1 prints the traceback)
  4    refused by the engine: no such task, subtask, host or user (error 20000, 404), not
       allowed in this state (error 20003), rollback prohibited (error 20004), host busy or
       name taken (409)
  130  Ctrl-C
  141  the reader of the output went away (e.g. `| head`)
"""

SETTINGS = """\
settings:
  Every option of `worker` and `serve`, and --db, is also an environment variable
  (DAGTASK_WORKER_CONCURRENCY, DAGTASK_SERVE_PORT, DAGTASK_DB_URL ...) and a key of the
  config file $DAGTASK_CONFIG or ./dagtask.toml ([worker] concurrency = 8, db = "...").
  The command line wins over the environment, which wins over the file. `dagtask config`
  shows what is in effect and from where. Database timeouts: DAGTASK_CONNECT_TIMEOUT
  (default 10 s) and DAGTASK_STATEMENT_TIMEOUT (default 30 s), 0 for no limit.
"""

_HIDDEN = "__complete"
_INVALID_CHOICE = re.compile(r"argument (?P<arg>.+?): invalid choice: '(?P<word>[^']*)' ")


def _closest(word: str, candidates: Sequence[str]) -> str | None:
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Leaves out commands whose help is SUPPRESS (Python 3.11 lists them anyway)."""

    def _iter_indented_subactions(
        self, action: argparse.Action
    ) -> Generator[argparse.Action, None, None]:
        for sub in super()._iter_indented_subactions(action):
            if sub.help != argparse.SUPPRESS:
                yield sub


class DagtaskParser(argparse.ArgumentParser):
    """An argument parser that suggests the closest command or option for a misspelled one
    (Python 3.11's argparse does not)."""

    root = False
    """Only the top-level parser; a subcommand's parser reports its own unknown options."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse; a subcommand's parser refuses what it does not know, with a suggestion."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and not self.root:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        """Print the usage and ``message`` (with a "did you mean" when one is close), exit 2."""
        if message.startswith("unrecognized arguments: "):
            options = [o for o in self._option_string_actions if o.startswith("--")]
            for word in message.removeprefix("unrecognized arguments: ").split():
                if word.startswith("--"):
                    close = _closest(word.partition("=")[0], options)
                    if close is not None:
                        message += f" (did you mean {close}?)"
                        break
        match = _INVALID_CHOICE.match(message)
        if match is not None:
            message = message.replace(f"'{_HIDDEN}', ", "").replace(f", '{_HIDDEN}'", "")
            close = _closest(match["word"], [c for c in self._choices() if c != _HIDDEN])
            if close is not None:
                message += f"; did you mean {close!r}?"
        super().error(message)

    def _choices(self) -> list[str]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return list(action.choices)
        return []


def subcommands(parser: Parser, path: str = "") -> Iterator[tuple[str, Parser]]:
    """Every command's parser with its path (``"hosts add"``), groups included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{path} {name}".strip()
                yield full, sub
                yield from subcommands(sub, full)


def _add_examples(parser: Parser) -> None:
    """End each command's --help with its example (wrapping its epilog ourselves, as the raw
    formatter that keeps the example on its own line does not)."""
    width = max(min(shutil.get_terminal_size().columns, 100) - 2, 40)
    for path, sub in subcommands(parser):
        example = EXAMPLES.get(path)
        if example is None:
            continue
        text = textwrap.fill(" ".join(sub.epilog.split()), width) + "\n\n" if sub.epilog else ""
        sub.epilog = f"{text}example:\n  {example}"
        sub.formatter_class = argparse.RawDescriptionHelpFormatter


def build_parser() -> Parser:
    """The argument parser of the ``dagtask`` command."""
    from dagtask.cli.common import DB_HELP, DEBUG_HELP, PROG, Commands

    parser = DagtaskParser(
        prog=PROG,
        description="dagtask: an embeddable DAG workflow engine modelled on OCP's task engine.",
        epilog="Start with `dagtask demo`; see `dagtask COMMAND --help` for each command.\n"
        "Shell completion: source <(dagtask completion bash) (or zsh, fish).\n\n"
        f"{EXIT_CODES}\n{SETTINGS}",
        formatter_class=HelpFormatter,
    )
    parser.root = True
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=DEBUG_HELP,
    )
    parser.add_argument("--db", metavar="URL", default=None, help=DB_HELP)
    parser.add_argument(
        "--no-color",
        action="store_true",
        help="no colour in the live view and summaries (also: NO_COLOR set to anything)",
    )
    commands = Commands(parser)
    for where in REGISTRARS:
        module, _, name = where.partition(":")
        register: Callable[[Commands], None] = getattr(importlib.import_module(module), name)
        register(commands)
    _add_examples(parser)
    return parser


def cmd_config(args: argparse.Namespace) -> int:
    """Show every setting in effect and where it comes from (command line, environment, file)."""
    from dagtask import config
    from dagtask.cli import output as out

    values: list[config.Value] = args.settings
    path = config.find_file(os.environ, Path.cwd())

    def shown(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, list):
            return ",".join(map(str, value)) or "-"
        return str(value)

    rows = [
        [
            v.setting.name,
            out.safe_url(v.value) if v.setting.key == "db" else shown(v.value),
            # The file is named above and the variable beside: only the option needs saying.
            v.source.value + (f" ({v.where})" if v.source is config.Source.COMMAND_LINE else ""),
            v.setting.env,
        ]
        for v in values
    ]
    if args.json:
        out.print_json(
            [
                {
                    "setting": v.setting.name,
                    "value": out.safe_url(v.value) if v.setting.key == "db" else v.value,
                    "source": v.source.value,
                    "where": v.where or None,
                    "variable": v.setting.env,
                }
                for v in values
            ]
        )
        return 0
    where = f"${config.CONFIG_VAR}, else ./{config.CONFIG_FILE}"
    print(f"config file: {path} ({where})" if path else f"config file: none ({where})")
    print(out.table(["SETTING", "VALUE", "SOURCE", "VARIABLE"], rows))
    return 0


def add_config_command(commands: Commands) -> None:
    """Add ``dagtask config``."""
    from dagtask.cli.common import json_flag

    json_flag(commands.add("config", cmd_config), "the settings as JSON")
