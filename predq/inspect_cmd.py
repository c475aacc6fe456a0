"""``predq models inspect FILE``: how the model would be stored and run, measured here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _mb(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} KB"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} ms"


def render(report: dict[str, Any]) -> str:
    from predq.client_cmd import _table

    lines = [f"{report['model']} ({report['path']})", "", "Serialization (measured here):"]
    lines.append(_table(
        [(f["format"], _mb(f["bytes"]), _ms(f["dump_ms"]), _ms(f["load_ms"]),
          ("yes, " + _mb(f["shared_bytes"])) if f["shared_between_processes"] else "no",
          f["note"]) for f in report["formats"]],
        ("format", "size", "dump", "load", "shared by processes", "note")))
    lines += ["", "Predict latency (best of several runs):"]
    counts = sorted({int(n) for r in report["runtimes"] for n in r["latency_ms"]})
    lines.append(_table(
        [(r["runtime"], *(f"{r['latency_ms'][n]:.2f} ms" if n in r["latency_ms"] else "-"
                          for n in counts),
          {None: "reference", True: "yes", False: "NO"}[r["matches_sklearn"]], r["note"])
         for r in report["runtimes"]],
        ("runtime", *(f"{n} rows" for n in counts), "matches sklearn (1e-9)", "note")))
    rec = report["recommendation"]
    lines += ["", f"predq would store: {rec['store']} ({rec['store_why']})",
              f"predq would run:   {rec['run']} ({rec['run_why']})"]
    return "\n".join(lines)


@click.command("inspect", epilog="Example:\n\n    predq models inspect model.joblib "
               "--sample train.csv")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--sample", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A CSV of input rows to time predict on [default: rows generated from "
                   "the model's schema].")
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as JSON.")
def inspect(file: Path, sample: Path | None, as_json: bool) -> None:
    """Measure FILE (a joblib model) in every format and runtime predq could use.

    Loading a model file runs its code: inspect only files you trust.
    """
    from predq.model_inspect import ModelLoadError, inspect_model

    try:
        report = inspect_model(file, sample)
    except ModelLoadError as e:
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps(report, indent=2, default=str) if as_json else render(report))
