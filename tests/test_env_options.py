"""Every option of ``edgespec`` and ``verifyd`` from the environment (EDGESPEC_*, VERIFYD_*),
named in ``--help``; the command line still wins."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner
from edgespec.edge_client.cli import main as edgespec
from edgespec.verify_daemon.cli import main as verifyd


def commands(group: click.Command, path: tuple[str, ...] = ()
             ) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, group
    if isinstance(group, click.Group):
        for name, sub in group.commands.items():
            yield from commands(sub, (*path, name))


@pytest.mark.parametrize(("group", "prefix"), [(edgespec, "EDGESPEC"), (verifyd, "VERIFYD")])
def test_every_option_has_a_variable_shown_in_help(group, prefix):
    for path, command in commands(group):
        options = [p for p in command.params if isinstance(p, click.Option)]
        help_text = " ".join(CliRunner().invoke(group, [*path, "--help"]).output.split())
        for option in options:
            long = next(o for o in option.opts if o.startswith("--"))
            want = f"{prefix}_{long[2:].replace('-', '_').upper()}"
            assert option.envvar == want and option.show_envvar, (path, long)
            assert f"env var: {want}" in help_text, (path, long)


def test_the_environment_sets_an_option_and_the_command_line_wins():
    runner = CliRunner()
    env = {"EDGESPEC_DRAFT": "/nowhere/from-env.gguf"}
    from_env = runner.invoke(edgespec, ["generate", "--prompt", "x"], env=env)
    assert from_env.exit_code != 0 and "/nowhere/from-env.gguf" in from_env.output
    given = runner.invoke(edgespec, ["generate", "--prompt", "x", "--draft",
                                     "/nowhere/given.gguf"], env=env)
    assert "/nowhere/given.gguf" in given.output and "from-env" not in given.output


def test_verifyd_reads_its_bind_address_from_the_environment():
    refused = CliRunner().invoke(verifyd, [], env={"VERIFYD_BIND": "0.0.0.0"})
    assert refused.exit_code != 0 and "refusing to serve 0.0.0.0" in refused.output
