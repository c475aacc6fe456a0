"""The ``predq`` command: a click group assembling the sub-commands."""

from __future__ import annotations

import click

from predq import __version__
from predq.keys_cmd import keys
from predq.models_cmd import models
from predq.ops_cmd import demo, healthcheck
from predq.procs_cmd import api, flower, up, worker
from predq.settings_cmd import settings

#: Commands that never join a running ``predq up`` stack (``up`` starts its own).
_OWN_STACK = {"up"}


@click.group()
@click.version_option(__version__, prog_name="predq")
@click.pass_context
def main(ctx: click.Context) -> None:
    """predq: queue-backed, micro-batching predictions for scikit-learn models.

    While `predq up` runs, the other commands use its Redis and registry (from
    PREDQ_HOME/up.json) unless PREDQ_REDIS_URL is set.
    """
    if ctx.invoked_subcommand not in _OWN_STACK:
        from predq.stack import adopt_running_stack

        adopt_running_stack()


main.add_command(models)
main.add_command(keys)
main.add_command(up)
main.add_command(api)
main.add_command(worker)
main.add_command(flower)
main.add_command(settings)
main.add_command(healthcheck)
main.add_command(demo)
