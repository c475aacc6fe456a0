"""Registering a model (``predq models push``): the CLI's side of the registry.

Loading the operator's file (trusted code), inferring its schema (:mod:`predq.introspect`)
and choosing its runtime (:func:`predq.shared.registry.runtimes.choose`) import scikit-learn
and run the model: they belong to the operator's command, never to the API or the workers,
which only read the registry (:class:`predq.shared.registry.store.Registry`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from predq.shared.errors import RegistryError
from predq.shared.registry.manifest import Manifest
from predq.shared.registry.store import Registry


def push_model(
    registry: Registry,
    artifact: Path,
    name: str,
    *,
    version: str | None = None,
    aliases: Sequence[str] = (),
    sample_csv: Path | None = None,
    accepts_missing: bool | None = None,
    fmt: str | None = None,
    trusted_types: list[str] | None = None,
    drop_bad_sample_rows: bool = False,
    note: Callable[[str], None] | None = None,
    runtime: str | None = None,
    tolerance: float | None = None,
) -> Manifest:
    """Register the estimator in ``artifact`` as a new version of ``name`` in ``registry``.

    The estimator is loaded (trusted code: this is an operator action), its manifest
    inferred, and the artifact stored as ``model.joblib`` (re-dumped uncompressed, so
    workers can memory-map it) or ``model.skops`` (copied). The version is the next
    integer unless given; an existing version is never overwritten (:class:`RegistryError`).
    A sample that contradicts the model is refused unless ``drop_bad_sample_rows``; what
    push had to drop or warn about goes to ``note``.

    ``runtime`` (None/"auto", "sklearn", "treelite") and ``tolerance`` choose what will
    compute the outputs; an accelerated runtime is verified against the estimator on the
    sample and generated rows first (:func:`predq.shared.registry.runtimes.choose`).
    """
    # Here, not at the top: they import scikit-learn, which `predq models list` and the other
    # commands importing this module must not pay for.
    from predq.introspect import infer_manifest_fields, read_sample_csv
    from predq.shared.registry.runtimes import choose
    from predq.shared.registry.serialization import dump_estimator, load_estimator

    artifact = Path(artifact)
    registry.check_new_version(name, version, aliases)
    fmt = fmt or ("skops" if artifact.suffix == ".skops" else "joblib")
    if fmt not in ("joblib", "skops"):
        raise RegistryError(f"unknown format {fmt!r}: use joblib or skops")
    if trusted_types and fmt != "skops":
        raise RegistryError("trusted types apply to skops artifacts only")
    estimator = load_estimator(
        artifact, fmt=fmt, expected_sha256=None, trusted_types=trusted_types, mmap=False
    )
    sample = read_sample_csv(sample_csv) if sample_csv is not None else None
    fields = infer_manifest_fields(estimator, sample=sample, accepts_missing=accepts_missing,
                                   drop_bad_sample_rows=drop_bad_sample_rows, note=note)
    runtime_record = choose(estimator, fields, sample=sample, requested=runtime,
                            tolerance=tolerance)

    def write(stored: Path) -> None:
        if fmt == "joblib":
            dump_estimator(estimator, stored, "joblib")  # uncompressed: mmap-able
        else:
            shutil.copyfile(artifact, stored)

    return registry.add_version(name, version=version, aliases=aliases, fmt=fmt,
                                write_artifact=write, fields=fields, runtime=runtime_record,
                                trusted_types=trusted_types)
