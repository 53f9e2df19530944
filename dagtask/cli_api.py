"""`dagtask` subcommands of the REST API feature (registered by `dagtask.cli.build_parser`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagtask.cli import _Commands


def add_commands(commands: _Commands) -> None:
    """Add this feature's subcommands to the `dagtask` parser."""
