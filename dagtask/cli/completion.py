"""Shell completion without another dependency: ``dagtask completion bash|zsh|fish`` prints a
script to source, and the script asks the hidden ``dagtask __complete WORD... CURRENT`` for the
candidates (one per line) by walking the argument parser itself.

Commands and options come from the parser; template slugs, task ids, subtask ids, host ids and
statuses from small completers chosen by an argument's ``dest`` (see :data:`COMPLETERS`), so the
command modules need no completion code. A completer that needs the database opens it read-only
and never creates it; whatever goes wrong, completion prints nothing rather than an error.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from dagtask.builtin import builtin_templates
from dagtask.cli import output as out
from dagtask.cli.common import Commands, Parser
from dagtask.cli.parser import build_parser
from dagtask.engine import Engine
from dagtask.states import TaskStatus, TaskType
from dagtask.store.db import open_database, resolve_url

HIDDEN = "__complete"
TASK_LIMIT = 200
"""Task ids offered: the newest ones."""

BASH = """\
# dagtask completion for bash: source <(dagtask completion bash)
_dagtask_complete() {
    local IFS=$'\\n'
    COMPREPLY=($(dagtask __complete -- "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null))
}
complete -o default -o nosort -F _dagtask_complete dagtask 2>/dev/null \\
    || complete -o default -F _dagtask_complete dagtask
"""

ZSH = """\
#compdef dagtask
# dagtask completion for zsh: source <(dagtask completion zsh)
(( $+functions[compdef] )) || { autoload -Uz compinit && compinit }
_dagtask() {
    local -a candidates
    candidates=("${(@f)$(dagtask __complete -- "${(@)words[2,CURRENT]}" 2>/dev/null)}")
    if [[ -n ${candidates[1]} ]]; then
        compadd -Q -- "${candidates[@]}"
    else
        _files
    fi
}
compdef _dagtask dagtask
"""

FISH = """\
# dagtask completion for fish: dagtask completion fish | source
function __dagtask_complete
    set -l words (commandline -opc)
    set -l current (commandline -ct)
    dagtask __complete -- $words[2..-1] "$current" 2>/dev/null
end
complete -c dagtask -f -a '(__dagtask_complete)'
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH, "fish": FISH}


@dataclass
class Position:
    """Where the words before the cursor leave the parser."""

    parser: Parser
    positionals: list[str] = field(default_factory=list)
    """The positional words given to ``parser`` so far."""
    pending: argparse.Action | None = None
    """An option whose value is the word at the cursor."""
    db: str | None = None


def _subparsers(parser: Parser) -> dict[str, Parser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def locate(root: Parser, words: Sequence[str], db: str | None = None) -> Position:
    """Follow ``words`` (those before the cursor) through the parser tree; ``db``: the
    database in effect unless the words name one."""
    at = Position(root, db=db)
    for word in words:
        if at.pending is not None:
            if at.pending.dest == "db":
                at.db = word
            at.pending = None
            continue
        if word.startswith("-") and word != "-":
            option, eq, value = word.partition("=")
            action = at.parser._option_string_actions.get(option)
            if action is not None and action.nargs != 0 and not eq:
                at.pending = action
            elif action is not None and action.dest == "db" and eq:
                at.db = value
            continue
        commands = _subparsers(at.parser)
        if commands and not at.positionals and word in commands:
            at = Position(commands[word], db=at.db)
            continue
        at.positionals.append(word)
    return at


# ---- completers ----------------------------------------------------------------------------------

Completer = Callable[[Position, str], Iterable[str]]


def _engine(at: Position) -> Engine:
    """An engine on the database of the words' --db (else the settings'); one without a dagtask
    schema, or a SQLite file that does not exist, is refused rather than created."""
    url = resolve_url(at.db)
    open_database(url, create=False).dispose()
    return Engine(url, workers=0)


def templates(at: Position, prefix: str) -> list[str]:
    """The slugs ``run`` accepts (built-in, and stored in the database if there is one)."""
    names = {t.name for t in builtin_templates()}
    try:
        with _engine(at) as engine:
            names |= {t.name for t in engine.templates()}
    except Exception:  # no database yet: the built-in templates still complete
        pass
    start = out.template_slug(prefix)
    return sorted({s for s in map(out.template_slug, names) if s.startswith(start)})


def task_ids(at: Position, prefix: str) -> list[str]:
    """The newest tasks' ids."""
    with _engine(at) as engine:
        page = engine.list(size=TASK_LIMIT)
    return [str(t.id) for t in page.tasks if str(t.id).startswith(prefix)]


def subtask_ids(at: Position, prefix: str) -> list[str]:
    """The subtask ids of the task given before (``logs ID <tab>``)."""
    if not at.positionals or not at.positionals[0].isdigit():
        return []
    with _engine(at) as engine:
        task = engine.get(int(at.positionals[0]))
    return [str(s.id) for s in task.subtasks if str(s.id).startswith(prefix)]


def host_ids(at: Position, prefix: str) -> list[str]:
    """The ids of the inventory's hosts."""
    with _engine(at) as engine:
        hosts = engine.hosts.list()
    return [str(h.id) for h in hosts if str(h.id).startswith(prefix)]


def statuses(at: Position, prefix: str) -> list[str]:
    """Task statuses; after a comma, the next one of a list."""
    head, comma, last = prefix.rpartition(",")
    start = head + comma
    return [start + s.value for s in TaskStatus if s.value.startswith(last.upper())]


def task_types(at: Position, prefix: str) -> list[str]:
    """Task types."""
    return [t.value for t in TaskType if t.value.startswith(prefix.upper())]


COMPLETERS: dict[str, Completer] = {
    "template": templates,
    "id": task_ids,
    "subtask_id": subtask_ids,
    "subtask": subtask_ids,
    "from_subtask": subtask_ids,
    "host": host_ids,
    "host_id": host_ids,
    "status": statuses,
    "type": task_types,
}
"""Which completer an argument gets, by its ``dest``."""


def candidates(root: Parser, words: Sequence[str], db: str | None = None) -> list[str]:
    """What may come at the cursor, given the words after ``dagtask`` (the last one is the
    word being completed, possibly empty) and the database in effect (``db``, None: the
    default)."""
    *before, current = words or [""]
    at = locate(root, before, db)
    if at.pending is not None:
        if at.pending.choices:
            return [str(c) for c in at.pending.choices if str(c).startswith(current)]
        complete = COMPLETERS.get(at.pending.dest)
        return list(complete(at, current)) if complete else []
    if current.startswith("-"):
        options = sorted(o for o in at.parser._option_string_actions if o.startswith("--"))
        return [o for o in options if o.startswith(current)]
    commands = _subparsers(at.parser)
    if commands and not at.positionals:
        return [c for c in commands if c.startswith(current) and not c.startswith("__")]
    positional = [a for a in at.parser._actions if not a.option_strings]
    if len(at.positionals) < len(positional):
        action = positional[len(at.positionals)]
        if action.choices:
            return [str(c) for c in action.choices if str(c).startswith(current)]
        complete = COMPLETERS.get(action.dest)
        if complete is not None:
            return list(complete(at, current))
    return []


def cmd_complete(args: argparse.Namespace) -> int:
    """Print the completion candidates for the words after ``dagtask`` (used by the scripts)."""
    words = list(args.words)
    try:
        # The settings (environment, config file) were applied to args.db before this ran.
        found = candidates(build_parser(), words, getattr(args, "db", None))
    except Exception:  # completion never prints an error into someone's prompt
        found = []
    for word in found:
        print(word)
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    """Print a shell completion script for bash, zsh or fish."""
    print(SCRIPTS[args.shell], end="")
    return 0


def add_commands(commands: Commands) -> None:
    """Add ``dagtask completion SHELL`` and the hidden ``dagtask __complete``."""
    completion = commands.add(
        "completion",
        cmd_completion,
        epilog="bash: add `source <(dagtask completion bash)` to ~/.bashrc; zsh: "
        "`source <(dagtask completion zsh)` in ~/.zshrc; fish: `dagtask completion fish > "
        "~/.config/fish/completions/dagtask.fish`. Completes commands, options, template "
        "slugs, task ids and subtask ids (from the database of --db, $DAGTASK_DB_URL or the "
        "config file).",
    )
    completion.add_argument("shell", choices=sorted(SCRIPTS), help="the shell")
    # SUPPRESS: the top-level help leaves it out (see dagtask.cli.parser.HelpFormatter).
    hidden = commands.group.add_parser(HIDDEN, add_help=False, help=argparse.SUPPRESS)
    # The scripts pass `--` first, so that words such as `--db` reach this list untouched.
    hidden.add_argument(
        "words", nargs="*", help="the words after `dagtask`, the last one unfinished"
    )
    hidden.set_defaults(func=cmd_complete)
