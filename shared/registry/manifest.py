"""What one model version is: its :class:`Manifest` (``manifest.json``) and its features.

The vocabulary that the registry (``predq.shared.registry.store``), schema inference
(``predq.introspect``), serialization (``predq.shared.registry.serialization``) and the input schemas
(``predq.shared.registry.schema``) share, in a module of its own so that none of them imports another for it.
It imports pydantic only: no sklearn, numpy or joblib (the API reads manifests).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^[0-9]+$")

Scalar = str | int | float | bool
FeatureType = Literal["number", "integer", "string", "boolean"]


class Feature(BaseModel):
    """One input column of a model, as the API validates it."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: FeatureType
    required: bool
    categories: list[Scalar] | None = None
    allow_unknown: bool = True
    #: A real value for the API's examples (the sample's median or most frequent value, or a
    #: known category), recorded at push; None when there was nothing to take it from.
    example: Scalar | None = None


# -- the runtime (chosen and verified at push by predq.shared.registry.runtimes) -----------------------------

RuntimeName = Literal["sklearn", "treelite"]
Requested = Literal["auto", "sklearn", "treelite"]
RUNTIMES: tuple[str, ...] = ("sklearn", "treelite")
DEFAULT_TOLERANCE = 1e-9
class Verification(BaseModel):
    """How the accelerated runtime compared with scikit-learn on the verification rows."""

    model_config = ConfigDict(frozen=True)

    rows: int
    source: Literal["sample", "generated", "sample+generated"]
    labels_equal: bool | None = None
    """Classifiers: every label equal to ``model.predict`` (None for regressors)."""
    max_abs_diff: float | None = None
    """Largest |difference| of a probability (classifiers) or value (regressors)."""
    passed: bool


class Speed(BaseModel):
    """Median time of one call at push, scikit-learn against the chosen runtime."""

    model_config = ConfigDict(frozen=True)

    rows: int
    sklearn_ms: float
    runtime_ms: float
    speedup: float


class RuntimeRecord(BaseModel):
    """The runtime of one model version, as the manifest records it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: RuntimeName = "sklearn"
    requested: Requested = "auto"
    tolerance: float = DEFAULT_TOLERANCE
    """Largest accepted |difference| from scikit-learn (1e-9 unless the operator set one)."""
    verification: Verification | None = None
    speed: list[Speed] = Field(default_factory=list)
    reason: str | None = None
    """Why this runtime: e.g. why scikit-learn was kept."""
    library_version: str | None = None
    """The accelerated library's version the verification ran with."""

    def summary(self) -> str:
        """One line for people, e.g. ``treelite (verified on 512 rows, labels equal, ...)``."""
        bits = []
        v = self.verification
        if v is not None:
            diff = "n/a" if v.max_abs_diff is None else f"{v.max_abs_diff:.3g}"
            labels = "" if v.labels_equal is None else (
                ", labels equal" if v.labels_equal else ", labels differ")
            bits.append(f"{'verified' if v.passed else 'verification failed'} on {v.rows} "
                        f"rows{labels}, max |diff| {diff}")
        if self.name != "sklearn" and self.tolerance != DEFAULT_TOLERANCE:
            bits.append(f"tolerance {self.tolerance:g} set by the operator")
        for s in self.speed[:1]:
            bits.append(f"{s.speedup:.1f}x faster than sklearn at {s.rows} rows")
        if self.reason:
            bits.append(self.reason)
        return f"{self.name} ({'; '.join(bits)})" if bits else self.name



class Manifest(BaseModel):
    """What the registry knows of one model version (``manifest.json``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(pattern=NAME_RE.pattern)
    version: str = Field(pattern=VERSION_RE.pattern)
    format: Literal["joblib", "skops"]
    # A bare file name: never a path, so the artifact always sits next to its manifest.
    artifact: str = Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    task: Literal["classification", "regression"]
    estimator: str
    features: list[Feature]
    named_features: bool
    classes: list[Scalar] | None = None
    has_predict_proba: bool
    accepts_missing: bool
    created_at: datetime
    library_versions: dict[str, str]
    trusted_types: list[str] | None = None
    #: What computes the outputs (chosen and verified at push; see predq.shared.registry.runtimes). A
    #: manifest written before runtimes existed reads as plain scikit-learn.
    runtime: RuntimeRecord = Field(default_factory=RuntimeRecord)


def sha256_file(path: Path, *, chunk_size: int = 1 << 20) -> str:
    """The hex sha256 of the file at ``path``, read in chunks (a manifest's ``sha256``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()

