"""``rhaas``: the command-line interface, HIL's command tree without HIL's CLI bugs.

Configuration comes from the environment: ``RHAAS_ENDPOINT`` with ``RHAAS_USERNAME``/``RHAAS_PASSWORD``,
or else ``HIL_ENDPOINT`` with ``HIL_USERNAME``/``HIL_PASSWORD`` (see `rhaas.client.Client.from_env`).

Every error ends the program with one line on stderr, ``error: <ErrorClass>: <message>``, and exit
status 1 (2 for a usage error); never a traceback (set ``RHAAS_DEBUG=1`` to get one for a bug).

To add a command group, write it as a `click.Group` in its own module under `rhaas/cli/` and register it
below with ``cli.add_command(group)``. Commands get the client with `rhaas.cli.common.pass_client`.
``lab`` and ``demo`` are registered by name (`RhaasCli.lazy_commands`): their modules load only when
one of them is looked up, so that the other commands never load the lab.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from rhaas import __version__
from rhaas.cli import images, networks, nodes, pool, ports, projects, provisioning, switches, users
from rhaas.cli.common import CliState
from rhaas.errors import RhaasError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int) -> int:
    click.echo(f"error: {_one_line(message)}", err=True)
    return code


class RhaasCli(click.Group):
    """The root group: runs the tree and turns every exception into one line on stderr and an exit status."""

    #: Commands whose modules load only when the command is looked up: name -> "module:attribute".
    lazy_commands = {"demo": "rhaas.demo:demo", "lab": "rhaas.cli.lab:lab"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            module, attribute = self.lazy_commands[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        sys.exit(self._run(args, prog_name, complete_var, **extra))

    def _run(
        self, args: Sequence[str] | None, prog_name: str | None, complete_var: str | None, **extra: Any
    ) -> int:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help())
            return 0
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            return _fail(exc.format_message() + hint, EXIT_USAGE)
        except click.ClickException as exc:
            return _fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            return _fail("interrupted", EXIT_INTERRUPTED)
        except RhaasError as exc:
            return _fail(f"{type(exc).__name__}: {exc.msg}", EXIT_ERROR)
        except Exception as exc:  # a bug: still one line, unless asked for the traceback
            if os.environ.get("RHAAS_DEBUG"):
                raise
            return _fail(f"internal error: {type(exc).__name__}: {exc} (RHAAS_DEBUG=1 raises it)", EXIT_ERROR)
        return result if isinstance(result, int) else 0


@click.group(cls=RhaasCli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rhaas")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """rhaas: a HIL-compatible bare-metal cloud.

    Set RHAAS_ENDPOINT (e.g. http://127.0.0.1:5000), RHAAS_USERNAME and RHAAS_PASSWORD, or HIL's
    HIL_ENDPOINT, HIL_USERNAME and HIL_PASSWORD."""
    state = ctx.ensure_object(CliState)
    ctx.call_on_close(state.close)


cli.add_command(projects.project)
cli.add_command(nodes.node)
for command in (provisioning.provision, provisioning.provisioning, provisioning.fpbl):
    nodes.node.add_command(command)
cli.add_command(provisioning.provision_job)
cli.add_command(provisioning.provision_group)
cli.add_command(networks.network)
cli.add_command(networks.networking_action)
cli.add_command(switches.switch)
cli.add_command(ports.port)
cli.add_command(users.user)
cli.add_command(pool.pool)
cli.add_command(images.image)


def main() -> None:
    """The ``rhaas`` console script."""
    cli(prog_name="rhaas")


if __name__ == "__main__":
    main()
