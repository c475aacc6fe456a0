"""The ``predq`` command: a click group assembling the sub-commands.

Sub-commands are imported when they are run, not when ``predq`` starts: the client commands
(``predict``, ``jobs``, ``batches``) work from a client-only install (``pip install predq``),
and the server commands say what to install when its packages are missing.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from predq import __version__

#: name -> (module, attribute, needs the server install)
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "up": ("predq.procs_cmd", "up", True),
    "api": ("predq.procs_cmd", "api", True),
    "worker": ("predq.procs_cmd", "worker", True),
    "flower": ("predq.procs_cmd", "flower", True),
    "models": ("predq.models_cmd", "models", True),
    "keys": ("predq.keys_cmd", "keys", True),
    "settings": ("predq.settings_cmd", "settings", True),
    "healthcheck": ("predq.ops_cmd", "healthcheck", True),
    "demo": ("predq.ops_cmd", "demo", True),
    "predict": ("predq.client_cmd", "predict", False),
    "jobs": ("predq.client_cmd", "jobs", False),
    "batches": ("predq.client_cmd", "batches", False),
}

#: Commands that never join a running ``predq up`` stack (``up`` starts its own).
_OWN_STACK = {"up"}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use (click's documented pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, server = COMMANDS[cmd_name]
        try:
            mod: Any = importlib.import_module(module)
        except ImportError as e:
            if not server:
                raise
            missing = e.name or str(e)
            return _needs_server(cmd_name, missing)
        command: click.Command = getattr(mod, attr)
        return command


def _needs_server(name: str, missing: str) -> click.Command:
    @click.command(name, help="(needs the server install: pip install 'predq[server]')",
                   context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stub(args: tuple[str, ...]) -> None:
        raise click.ClickException(
            f"'predq {name}' runs the server side, whose packages are not installed "
            f"({missing} is missing): pip install 'predq[server]'")
    return stub


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="predq")
@click.pass_context
def main(ctx: click.Context) -> None:
    """predq: queue-backed, micro-batching predictions for scikit-learn models.

    While `predq up` runs, the server commands use its Redis and registry (from
    PREDQ_HOME/up.json) unless PREDQ_REDIS_URL is set.
    """
    name = ctx.invoked_subcommand
    if name in COMMANDS and COMMANDS[name][2] and name not in _OWN_STACK:
        from predq.stack import adopt_running_stack

        adopt_running_stack()
