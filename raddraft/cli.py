"""The ``raddraft`` command: one entry point that wires the folders together.

Each area keeps its subcommands in ``raddraft/commands/<area>.py``; this module only collects
them, so ``raddraft --help`` stays quick (heavy imports such as torch happen inside commands).
"""

from __future__ import annotations

import importlib

import click

from raddraft import logging as rlog
from raddraft.settings import get_settings

# (module, attribute) of each subcommand or group, imported when the command line is built.
COMMANDS = (
    ("raddraft.commands.db", "db"),
    ("raddraft.commands.listener", "listen"),
    ("raddraft.commands.listener", "studies"),
    ("raddraft.commands.listener", "study"),
    ("raddraft.commands.orders", "orders"),
    ("raddraft.commands.worker", "worker"),
    ("raddraft.commands.worker", "router"),
    ("raddraft.commands.worker", "exports"),
    ("raddraft.commands.up", "up"),
    ("raddraft.commands.model", "model"),
    ("raddraft.commands.model", "draft"),
    ("raddraft.commands.users", "users"),
    ("raddraft.commands.web", "web"),
    ("raddraft.commands.trace", "trace"),
    ("raddraft.commands.archive", "archive"),
    ("raddraft.commands.config", "settings"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raddraft")
def main() -> None:
    """RadDraft: a PACS-integrated chest X-ray reporting assistant.

    Configuration comes from RADDRAFT_* environment variables (see the README).
    """
    rlog.configure(get_settings().log_level)


def _register() -> None:
    for module_name, attribute in COMMANDS:
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command), f"{module_name}.{attribute}"
        main.add_command(command)


_register()
