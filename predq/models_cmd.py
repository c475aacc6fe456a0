"""``predq models``: register, list and describe models in the registry directory.

Registering is an operator action: these commands write ``PREDQ_REGISTRY_ROOT`` directly.
Every predq error becomes a :class:`click.ClickException` (a message and exit code 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from shared.errors import PredqError
from shared.registry import ModelInfo, Registry
from shared.settings import get_settings


def _registry() -> Registry:
    return Registry(get_settings().registry_root)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except PredqError as e:
        raise click.ClickException(e.detail) from e


@click.group()
def models() -> None:
    """Register, list and describe models (PREDQ_REGISTRY_ROOT)."""


@models.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name, e.g. churn ([a-z0-9_-]).")
@click.option("--version", "version", help="Version number (default: the next one).")
@click.option("--alias", "aliases", multiple=True, help="Alias to point at it, e.g. production.")
@click.option(
    "--sample",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV of example rows; its column types become the input schema.",
)
@click.option(
    "--accepts-missing/--no-accepts-missing",
    default=None,
    help="Whether inputs may omit features (default: the estimator's allow_nan tag).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["joblib", "skops"]),
    help="Artifact format (default: from the file suffix, .skops or else joblib).",
)
@click.option(
    "--trusted-type",
    "trusted_types",
    multiple=True,
    help="A type the skops file may hold that you reviewed and trust.",
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", "sklearn", "treelite"]),
    default="auto",
    show_default=True,
    help="What computes the outputs. auto: treelite for tree ensembles when it reproduces "
    "scikit-learn on the verification rows (else sklearn, and says why).",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0.0),
    help="Largest accepted difference from scikit-learn's probabilities/values "
    "(default 1e-9; a larger one is recorded in the manifest).",
)
def push(
    path: Path,
    name: str,
    version: str | None,
    aliases: tuple[str, ...],
    sample: Path | None,
    accepts_missing: bool | None,
    fmt: str | None,
    trusted_types: tuple[str, ...],
    runtime: str,
    tolerance: float | None,
) -> None:
    """Register the fitted estimator in PATH as a new version of a model."""
    with _errors():
        manifest = _registry().push(
            path,
            name,
            version=version,
            aliases=aliases,
            sample_csv=sample,
            accepts_missing=accepts_missing,
            fmt=fmt,
            trusted_types=list(trusted_types) or None,
            runtime=runtime,
            tolerance=tolerance,
        )
    alias_note = f" (aliases: {', '.join(aliases)})" if aliases else ""
    click.echo(f"Registered {manifest.name} version {manifest.version}{alias_note}")
    click.echo(f"  {manifest.task}, {manifest.estimator}, {len(manifest.features)} features")
    click.echo(f"  sha256 {manifest.sha256}")
    click.echo(f"  runtime {manifest.runtime.summary()}")


@models.command("list")
def list_() -> None:
    """List registered models: versions, aliases and default version."""
    with _errors():
        registry = _registry()
        infos = registry.list_models()
    if not infos:
        click.echo(f"No models registered in {registry.root}")
        return
    click.echo(_table(infos))


@models.command()
@click.argument("name")
@click.option("--version", "version", help="A version or alias (default: the default version).")
def show(name: str, version: str | None) -> None:
    """Print the manifest of a model version as JSON (its runtime included)."""
    with _errors():
        manifest = _registry().resolve(name, version)
    click.echo(manifest.model_dump_json(indent=2))


@models.command()
@click.argument("name")
@click.argument("alias")
@click.argument("version")
def alias(name: str, alias: str, version: str) -> None:
    """Point ALIAS of model NAME at VERSION (e.g. promote a version to production)."""
    with _errors():
        _registry().set_alias(name, alias, version)
    click.echo(f"{name}: {alias} -> {version}")


def _table(infos: list[ModelInfo]) -> str:
    rows = [("NAME", "VERSIONS", "ALIASES", "DEFAULT")]
    for info in infos:
        aliases = ", ".join(f"{a}={v}" for a, v in sorted(info.aliases.items())) or "-"
        rows.append((info.name, ", ".join(info.versions), aliases, info.default_version))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
