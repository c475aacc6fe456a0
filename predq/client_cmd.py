"""The client side of the command line: ``predq predict``, ``predq jobs``, ``predq batches``.

They talk to a running API through :mod:`predq.client` only (``--url``/``--key``, or
``PREDQ_URL``/``PREDQ_API_KEY``), so they work from a client-only install.

Exit codes of ``predq predict``: 0 when every row was scored; 1 when the batch failed, was
cancelled or expired (or the call failed); 3 when the batch succeeded but some rows failed
(their errors are in the error file), unless ``--allow-failed-rows``; 130 after Ctrl-C.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from predq.client import Client, PredqError
from predq.client._core import file_format

EXIT_FAILED = 1
EXIT_ROWS_FAILED = 3
EXIT_INTERRUPTED = 130

url_option = click.option("--url", envvar="PREDQ_URL", default="http://127.0.0.1:8000",
                          show_default=True, help="The API's base URL (PREDQ_URL).")
key_option = click.option("--key", envvar="PREDQ_API_KEY", default=None,
                          help="An API key (PREDQ_API_KEY).")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the JSON document instead of a table.")


@contextmanager
def _client(url: str, key: str | None) -> Iterator[Client]:
    try:
        with Client(url, key) as c:
            yield c
    except PredqError as e:
        click.echo(f"error: {e}", err=True)
        for err in e.errors[:20]:
            click.echo(f"  {'.'.join(map(str, err.get('loc', [])))}: {err.get('msg')}",
                       err=True)
        sys.exit(EXIT_FAILED)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def _fields(doc: dict[str, Any], keys: Sequence[str]) -> str:
    return _table([(k, doc.get(k)) for k in keys if k in doc], ("field", "value"))


def _emit(doc: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    click.echo(json.dumps(doc, indent=2, default=str) if as_json else render(doc))


# -- predq predict ---------------------------------------------------------------------------


def default_output(file: Path, fmt: str | None) -> Path:
    """``customers.csv.gz`` -> ``customers.predictions.csv`` (or the extension of ``fmt``)."""
    in_fmt, _, gz = file_format(file.name)
    stem = file.name[: -len(".gz")] if gz else file.name
    stem = stem.rsplit(".", 1)[0]
    return file.with_name(f"{stem}.predictions.{fmt or in_fmt}")


@click.command(epilog="Example:\n\n    predq predict churn customers.csv --id-column "
               "customer_id -o scores.csv")
@click.argument("model")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where the predictions go [default: FILE's stem + .predictions + ext].")
@click.option("--id-column", help="A column passed through to the output (not a feature).")
@click.option("--version", "version", help="Model version or alias [default: the default].")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet"]),
              help="Output format [default: the input's].")
@click.option("--fail-fast", is_flag=True, help="Fail the batch at the first bad chunk "
              "(on_error=fail) instead of skipping bad rows.")
@click.option("--allow-failed-rows", is_flag=True,
              help="Exit 0 even when some rows failed (they are in the error file).")
@click.option("--timeout", type=float, default=24 * 3600.0, show_default=True,
              help="Seconds to wait for the batch.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@url_option
@key_option
def predict(model: str, file: Path, output: Path | None, id_column: str | None,
            version: str | None, fmt: str | None, fail_fast: bool, allow_failed_rows: bool,
            timeout: float, no_progress: bool, url: str, key: str | None) -> None:
    """Score FILE (CSV, JSON Lines or Parquet, optionally .gz) with MODEL through the batch
    API, with a progress bar; writes the predictions and, when rows failed, an error file."""
    output = output or default_output(file, fmt)
    errors_path = output.with_name(output.name.rsplit(".", 1)[0] + ".errors.jsonl")
    with _client(url, key) as c:
        click.echo(f"uploading {file} ...", err=True)
        batch = c.batch(model, file, id_column=id_column, version=version,
                        output_format=fmt, on_error="fail" if fail_fast else None)
        click.echo(f"batch {batch.id} on {model} version {batch.info.version}", err=True)
        try:
            batch.wait(timeout=timeout, progress=not no_progress, check=False)
        except KeyboardInterrupt:
            sys.exit(_interrupted(batch))
        doc = batch.document
        counts = doc.get("counts") or {}
        if doc.get("output_file_id"):
            batch.download(output)
            click.echo(f"predictions: {output}", err=True)
        if doc.get("error_file_id") and (counts.get("failed") or 0) > 0:
            batch.download_errors(errors_path)
            click.echo(f"errors: {errors_path} ({counts.get('failed')} rows)", err=True)
        click.echo(f"{batch.status}: {counts.get('done', 0)} rows scored, "
                   f"{counts.get('failed', 0)} failed, of {counts.get('total')}", err=True)
        if batch.status != "succeeded":
            if doc.get("error"):
                click.echo(f"error: {doc['error']}", err=True)
            sys.exit(EXIT_FAILED)
        if (counts.get("failed") or 0) > 0 and not allow_failed_rows:
            sys.exit(EXIT_ROWS_FAILED)


def _interrupted(batch: Any) -> int:
    """Ctrl-C: ask whether to cancel the batch or leave it running."""
    click.echo("", err=True)
    cancel = False
    if sys.stdin.isatty():
        try:
            cancel = click.confirm(f"cancel batch {batch.id}?", default=False, err=True)
        except (click.Abort, EOFError):
            cancel = False
    if cancel:
        batch.cancel()
        click.echo(f"batch {batch.id} cancelled; finished chunks stay downloadable "
                   f"(predq batches show {batch.id})", err=True)
    else:
        click.echo(f"batch {batch.id} keeps running: predq batches wait {batch.id}", err=True)
    return EXIT_INTERRUPTED


# -- predq jobs --------------------------------------------------------------------------------

_JOB_FIELDS = ("id", "status", "model", "version", "n_inputs", "created_at", "started_at",
               "finished_at", "expires_at", "queue_position", "eta_seconds", "error")


def _job_text(doc: dict[str, Any]) -> str:
    text = _fields(doc, _JOB_FIELDS)
    if doc.get("outputs"):
        text += f"\noutputs: {len(doc['outputs'])} rows (--json shows them)"
    return text


@click.group()
def jobs() -> None:
    """Read, wait for and cancel jobs.

    Example: predq jobs wait 3f2b... --timeout 60
    """


@jobs.command("show", epilog="Example:\n\n    predq jobs show 3f2b6c1e-... --json")
@click.argument("job_id")
@json_option
@url_option
@key_option
def jobs_show(job_id: str, as_json: bool, url: str, key: str | None) -> None:
    """Show one job."""
    with _client(url, key) as c:
        _emit(c.job(job_id).document, as_json, _job_text)


@jobs.command("wait", epilog="Example:\n\n    predq jobs wait 3f2b6c1e-... --timeout 60")
@click.argument("job_id")
@click.option("--timeout", type=float, default=300.0, show_default=True)
@json_option
@url_option
@key_option
def jobs_wait(job_id: str, timeout: float, as_json: bool, url: str, key: str | None) -> None:
    """Wait until a job ends; exit 1 unless it succeeded."""
    with _client(url, key) as c:
        job = c.job(job_id)
        try:
            job.wait(timeout=timeout)
        finally:
            _emit(job.document, as_json, _job_text)


@jobs.command("cancel", epilog="Example:\n\n    predq jobs cancel 3f2b6c1e-...")
@click.argument("job_id")
@json_option
@url_option
@key_option
def jobs_cancel(job_id: str, as_json: bool, url: str, key: str | None) -> None:
    """Cancel a job that has not started."""
    with _client(url, key) as c:
        _emit(c.job(job_id).cancel().document, as_json, _job_text)


# -- predq batches -----------------------------------------------------------------------------

_BATCH_FIELDS = ("id", "status", "model", "version", "counts", "chunks", "rows_per_second",
                 "eta_seconds", "created_at", "started_at", "finished_at", "expires_at",
                 "input_file_id", "output_file_id", "error_file_id", "error")


def _batch_text(doc: dict[str, Any]) -> str:
    return _fields(doc, _BATCH_FIELDS)


@click.group()
def batches() -> None:
    """List, read, wait for and cancel batches.

    Example: predq batches list
    """


@batches.command("list", epilog="Example:\n\n    predq batches list --limit 10")
@click.option("--limit", type=int, default=20, show_default=True)
@json_option
@url_option
@key_option
def batches_list(limit: int, as_json: bool, url: str, key: str | None) -> None:
    """The caller's batches, newest first."""
    with _client(url, key) as c:
        docs = [b.document for b in c.batches(limit=limit)]

    def render(items: list[dict[str, Any]]) -> str:
        return _table([(d["id"], d["status"], d["model"], d["version"],
                        (d.get("counts") or {}).get("done"),
                        (d.get("counts") or {}).get("failed"),
                        (d.get("counts") or {}).get("total"), d.get("created_at"))
                       for d in items],
                      ("id", "status", "model", "version", "done", "failed", "total",
                       "created_at"))
    _emit(docs, as_json, render)


@batches.command("show", epilog="Example:\n\n    predq batches show b_3f2b... --json")
@click.argument("batch_id")
@json_option
@url_option
@key_option
def batches_show(batch_id: str, as_json: bool, url: str, key: str | None) -> None:
    """Show one batch."""
    with _client(url, key) as c:
        _emit(c.get_batch(batch_id).document, as_json, _batch_text)


@batches.command("wait", epilog="Example:\n\n    predq batches wait b_3f2b... --timeout 3600")
@click.argument("batch_id")
@click.option("--timeout", type=float, default=24 * 3600.0, show_default=True)
@click.option("--no-progress", is_flag=True)
@json_option
@url_option
@key_option
def batches_wait(batch_id: str, timeout: float, no_progress: bool, as_json: bool, url: str,
                 key: str | None) -> None:
    """Wait until a batch ends (progress bar on stderr); exit 1 unless it succeeded."""
    with _client(url, key) as c:
        batch = c.get_batch(batch_id)
        batch.wait(timeout=timeout, progress=not no_progress and not as_json, check=False)
        _emit(batch.document, as_json, _batch_text)
        if batch.status != "succeeded":
            sys.exit(EXIT_FAILED)


@batches.command("cancel", epilog="Example:\n\n    predq batches cancel b_3f2b...")
@click.argument("batch_id")
@json_option
@url_option
@key_option
def batches_cancel(batch_id: str, as_json: bool, url: str, key: str | None) -> None:
    """Cancel a batch: no further chunk starts; finished chunks stay downloadable."""
    with _client(url, key) as c:
        _emit(c.get_batch(batch_id).cancel().document, as_json, _batch_text)
