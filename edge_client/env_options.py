"""Every command-line option also read from the environment: ``--server`` is
``EDGESPEC_SERVER``, ``verifyd --port`` is ``VERIFYD_PORT``; shown in ``--help``.

One settings story for containers and systemd units without a settings singleton: click
resolves command line, then environment, then default, once, when the command starts.
"""

from __future__ import annotations

import click


def read_from_environment(command: click.Command, prefix: str) -> None:
    """Give each option of ``command`` and its subcommands the variable PREFIX_LONG_NAME
    (``--verify-threshold`` → PREFIX_VERIFY_THRESHOLD); options that name one keep it."""
    for param in command.params:
        if not isinstance(param, click.Option) or param.envvar is not None:
            continue
        long = next((opt for opt in param.opts if opt.startswith("--")), None)
        if long is None:
            continue
        param.envvar = f"{prefix}_{long[2:].replace('-', '_').upper()}"
        param.show_envvar = True
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            read_from_environment(sub, prefix)
