"""What one model version is: its :class:`Manifest` (``manifest.json``) and its features.

The vocabulary that the registry (``shared.registry``), schema inference
(``shared.introspect``), serialization (``shared.serialization``) and the input schemas
(``shared.schema``) share, in a module of its own so that none of them imports another for it.
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


def sha256_file(path: Path, *, chunk_size: int = 1 << 20) -> str:
    """The hex sha256 of the file at ``path``, read in chunks (a manifest's ``sha256``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()

