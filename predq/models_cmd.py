"""``predq models``: register, list and describe models in the registry directory.

Registering is an operator action: these commands write ``PREDQ_REGISTRY_ROOT`` directly.
Every predq error becomes a :class:`click.ClickException` (a message and exit code 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from predq.inspect_cmd import inspect
from predq.push import push_model
from predq.shared.errors import ModelNotFound, PredqError, VersionNotFound
from predq.shared.registry.store import ModelInfo, Registry
from predq.shared.settings import get_settings


def _registry() -> Registry:
    return Registry(get_settings().registry_root)


def _where(registry: Registry) -> str:
    """The registry's path, and why this one (e.g. the running ``predq up`` stack's)."""
    from predq.stack import adopted

    source = adopted.get("registry_root")
    return f"{registry.root} ({'from ' + source if source else 'PREDQ_REGISTRY_ROOT'})"


@contextmanager
def _errors(registry: Registry | None = None) -> Iterator[None]:
    try:
        yield
    except PredqError as e:
        detail = e.detail
        if registry is not None and isinstance(e, ModelNotFound | VersionNotFound):
            detail += f"; registry {_where(registry)}"
            if isinstance(e, ModelNotFound):
                try:
                    names = [i.name for i in registry.list_models()]
                except PredqError:
                    names = []
                detail += f"; it holds: {', '.join(names)}" if names else "; it is empty"
        raise click.ClickException(detail) from e


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
    "--drop-bad-sample-rows",
    is_flag=True,
    help="Drop the sample rows whose values contradict the model (e.g. 'abc' in a column of "
    "numbers) instead of refusing the push.",
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
    drop_bad_sample_rows: bool,
    accepts_missing: bool | None,
    fmt: str | None,
    trusted_types: tuple[str, ...],
    runtime: str,
    tolerance: float | None,
) -> None:
    """Register the fitted estimator in PATH as a new version of a model."""
    registry = _registry()
    with _errors(registry):
        manifest = push_model(registry,
            path,
            name,
            version=version,
            aliases=aliases,
            sample_csv=sample,
            accepts_missing=accepts_missing,
            fmt=fmt,
            trusted_types=list(trusted_types) or None,
            drop_bad_sample_rows=drop_bad_sample_rows,
            note=lambda text: click.echo(f"predq models push: {text}", err=True),
            runtime=runtime,
            tolerance=tolerance,
        )
    alias_note = f" (aliases: {', '.join(aliases)})" if aliases else ""
    click.echo(f"Registered {manifest.name} version {manifest.version}{alias_note}")
    click.echo(f"  in {registry.root / manifest.name / manifest.version}")
    click.echo(f"  {manifest.task}, {manifest.estimator}, {len(manifest.features)} features")
    click.echo(f"  sha256 {manifest.sha256}")
    click.echo(f"  runtime {manifest.runtime.summary()}")


@models.command("list")
def list_() -> None:
    """List registered models: versions, aliases and default version."""
    registry = _registry()
    with _errors(registry):
        infos = registry.list_models()
    if not infos:
        click.echo(f"No models registered in {_where(registry)}")
        return
    click.echo(_table(infos))
    click.echo(f"\nRegistry {_where(registry)}")


@models.command()
@click.argument("name")
@click.option("--version", "version", help="A version or alias (default: the default version).")
def show(name: str, version: str | None) -> None:
    """Print the manifest of a model version as JSON (its runtime included)."""
    registry = _registry()
    with _errors(registry):
        manifest = registry.resolve(name, version)
    click.echo(manifest.model_dump_json(indent=2))


@models.command()
@click.argument("name")
@click.argument("alias")
@click.argument("version")
def alias(name: str, alias: str, version: str) -> None:
    """Point ALIAS of model NAME at VERSION (e.g. promote a version to production)."""
    registry = _registry()
    with _errors(registry):
        registry.set_alias(name, alias, version)
    click.echo(f"{name}: {alias} -> {version} (in {registry.root})")


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


models.add_command(inspect)
