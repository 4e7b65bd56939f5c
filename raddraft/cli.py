"""The ``raddraft`` command: one entry point that wires the folders together.

Each area keeps its subcommands in ``raddraft/commands/<area>.py``; this module only names them.
A subcommand's module is imported when that subcommand runs (click's documented lazy group), so
``raddraft studies`` pays for the archive's tables only, not for the model stack, the web tier
and every other command's imports: a command line that answers in well under a second.
"""

from __future__ import annotations

import importlib

import click

from raddraft import logging as rlog
from raddraft.settings import get_settings

# Subcommand name -> (module, attribute), imported only when that subcommand is asked for.
COMMANDS = {
    "db": ("raddraft.commands.db", "db"),
    "listen": ("raddraft.commands.listener", "listen"),
    "studies": ("raddraft.commands.studies", "studies"),
    "study": ("raddraft.commands.listener", "study"),
    "orders": ("raddraft.commands.orders", "orders"),
    "worker": ("raddraft.commands.worker", "worker"),
    "router": ("raddraft.commands.worker", "router"),
    "exports": ("raddraft.commands.worker", "exports"),
    "up": ("raddraft.commands.up", "up"),
    "model": ("raddraft.commands.model", "model"),
    "draft": ("raddraft.commands.model", "draft"),
    "users": ("raddraft.commands.users", "users"),
    "web": ("raddraft.commands.web", "web"),
    "trace": ("raddraft.commands.trace", "trace"),
    "archive": ("raddraft.commands.archive", "archive"),
    "settings": ("raddraft.commands.config", "settings"),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (``raddraft --help`` imports all of
    them, to show each one's summary)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module_name}.{attribute} is not a click command")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raddraft")
def main() -> None:
    """RadDraft: a PACS-integrated chest X-ray reporting assistant.

    Configuration comes from RADDRAFT_* environment variables (see the README).
    """
    rlog.configure(get_settings().log_level)
