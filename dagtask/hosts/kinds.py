"""Agent kinds: how a remote host's agent processes are listed, stopped and started.

A kind is a small description, built in or loaded from YAML (``$DAGTASK_AGENT_KINDS``, a file of
``kinds:``) or registered from Python with :func:`register_agent_kind`. The SSH connector renders
its command templates with ``{home}`` (the host's agent home) and ``{process}`` (one process
name, e.g. ``ocp_agentd``), each value shell-quoted.

Two ways to find a process:

* ``pid_file`` (the built-in ``ocp`` kind, OCP's own layout): ``{home}/run/{process}.pid`` holds
  the pid; it counts as running only while that pid is a live process whose command line contains
  the agent home (a zombie or a reused pid does not). Stopping sends SIGTERM to the pid, SIGKILL
  after the grace period.
* ``status`` (the built-in ``systemd`` kind): a command that prints the process's main pid, 0 when
  it is not running (``systemctl show --property=MainPID --value {process}``); ``stop`` and
  ``start`` are commands too. A survivor of ``stop`` past the grace period still gets SIGKILL.

Example ``kinds.yaml``::

    kinds:
      - name: my-agent
        processes: [my_agentd]
        pid_file: "{home}/var/{process}.pid"
        start: "{home}/bin/{process} --daemon"
        last_log: "tail -n 1 {home}/logs/{process}.log"
"""

from __future__ import annotations

import os
import shlex
import string
import threading
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from dagtask.errors import ArgumentError
from dagtask.hosts.connector import AGENT_PROCESSES

ENV_VAR = "DAGTASK_AGENT_KINDS"
PLACEHOLDERS = frozenset({"home", "process"})


class AgentKind(BaseModel):
    """How to list, stop and start the processes of one kind of agent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    processes: tuple[str, ...] = AGENT_PROCESSES
    """Process names in start order."""
    pid_file: str | None = "{home}/run/{process}.pid"
    status: str | None = None
    """A command printing the main pid (0 = not running); replaces ``pid_file``."""
    start: str = "{home}/bin/{process}"
    """Started detached (``setsid nohup``, output appended to ``log_file``) unless ``status``
    is set, in which case it is run as it is and must return once the process is started."""
    stop: str | None = None
    """A command that stops the process; None: SIGTERM its pid."""
    log_file: str = "{home}/log/{process}.log"
    last_log: str = "tail -n 1 {log_file}"

    @model_validator(mode="after")
    def _check(self) -> AgentKind:
        if (self.pid_file is None) == (self.status is None):
            raise ValueError("give exactly one of pid_file and status")
        if not self.processes:
            raise ValueError("processes must name at least one process")
        for field_name in ("pid_file", "status", "start", "stop", "log_file", "last_log"):
            template = getattr(self, field_name)
            if template is None:
                continue
            names = {n for _, n, _, _ in string.Formatter().parse(template) if n is not None}
            unknown = names - PLACEHOLDERS - ({"log_file"} if field_name == "last_log" else set())
            if unknown:
                raise ValueError(
                    f"{field_name} uses {{{sorted(unknown)[0]}}}; the placeholders are {{home}} "
                    "and {process}"
                )
        return self

    def render(self, template: str, home: str, process: str) -> str:
        """``template`` with ``{home}`` and ``{process}`` filled in, shell-quoted."""
        values = {"home": shlex.quote(home), "process": shlex.quote(process)}
        if "{log_file}" in template:
            values["log_file"] = self.render(self.log_file, home, process)
        return template.format(**values)


OCP = AgentKind(
    name="ocp",
    description="OCP's layout: pid files under {home}/run, programs under {home}/bin",
)
SYSTEMD = AgentKind(
    name="systemd",
    description="one systemd unit per process, named after it",
    pid_file=None,
    status="systemctl show --property=MainPID --value {process}",
    start="systemctl start {process}",
    stop="systemctl stop {process}",
    last_log="journalctl -u {process} -n 1 -o cat --no-pager",
)

_registered: dict[str, AgentKind] = {}
_lock = threading.Lock()


def register_agent_kind(kind: AgentKind) -> None:
    """Make ``kind`` known in this process (it replaces a kind of the same name)."""
    with _lock:
        _registered[kind.name] = kind


def load_kinds(path: str | os.PathLike[str]) -> list[AgentKind]:
    """The kinds of a YAML file (``kinds:`` a list of kinds); :class:`ArgumentError` if bad."""
    where = Path(path)
    try:
        data: Any = yaml.safe_load(where.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ArgumentError(f"cannot read agent kinds from {where}: {exc}") from exc
    items = data.get("kinds") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ArgumentError(
            f"{where} must hold `kinds:`, a list of agent kinds (see docs/hosts.md)"
        )
    kinds = []
    for index, item in enumerate(items):
        try:
            kinds.append(AgentKind.model_validate(item))
        except ValidationError as exc:
            error = exc.errors()[0]
            at = "".join(f".{p}" for p in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            raise ArgumentError(f"{where}: kinds[{index}]{at}: {message}") from None
    return kinds


_loaded: dict[str, tuple[tuple[int, int], list[AgentKind]]] = {}


def _file_kinds(path: str) -> list[AgentKind]:
    """:func:`load_kinds` of ``path``, read again only when the file changed (every remote step
    of a host looks its kind up)."""
    try:
        stat = os.stat(path)
        stamp = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        return load_kinds(path)  # says what is wrong with the path
    with _lock:
        cached = _loaded.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    kinds = load_kinds(path)
    with _lock:
        _loaded[path] = (stamp, kinds)
    return kinds


def known_kinds() -> dict[str, AgentKind]:
    """Every kind: built in, from ``$DAGTASK_AGENT_KINDS``, registered (later ones win)."""
    kinds = {OCP.name: OCP, SYSTEMD.name: SYSTEMD}
    path = os.environ.get(ENV_VAR)
    if path:
        kinds.update({k.name: k for k in _file_kinds(path)})
    with _lock:
        kinds.update(_registered)
    return kinds


def agent_kind(name: str) -> AgentKind:
    """The kind called ``name``; an :class:`ArgumentError` listing the known ones if none is."""
    kinds = known_kinds()
    found = kinds.get(name)
    if found is None:
        raise ArgumentError(
            f"agent kind {name!r} is not known (known: {', '.join(sorted(kinds))}); define it in "
            f"the YAML file ${ENV_VAR} names, or register it with register_agent_kind"
        )
    return found
