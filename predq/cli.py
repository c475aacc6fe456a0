"""The ``predq`` command: a click group assembling the sub-commands."""

from __future__ import annotations

import click

from predq import __version__
from predq.keys_cmd import keys
from predq.models_cmd import models
from predq.ops_cmd import demo, healthcheck
from predq.procs_cmd import api, flower, up, worker
from predq.settings_cmd import settings


@click.group()
@click.version_option(__version__, prog_name="predq")
def main() -> None:
    """predq: queue-backed, micro-batching predictions for scikit-learn models."""


main.add_command(models)
main.add_command(keys)
main.add_command(up)
main.add_command(api)
main.add_command(worker)
main.add_command(flower)
main.add_command(settings)
main.add_command(healthcheck)
main.add_command(demo)
