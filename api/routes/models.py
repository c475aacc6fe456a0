"""Model routes: list and describe registered models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from predq.api.deps import AppState, ModelsRead, StateDep
from predq.api.schemas import ModelDetail, ModelSummary
from predq.shared.registry.store import Manifest

router = APIRouter(prefix="/v1/models", tags=["models"])


def describe(state: AppState, manifest: Manifest) -> dict[str, Any]:
    info = state.registry.model_info(manifest.name)
    schema = state.schema_for(manifest)
    m = manifest.model_dump(mode="json")
    outputs = (["value"] if manifest.task == "regression"
               else ["label", "probabilities"] if manifest.has_predict_proba else ["label"])
    return {
        "name": manifest.name,
        "version": manifest.version,
        "versions": info.versions,
        "aliases": info.aliases,
        "default_version": info.default_version,
        "task": manifest.task,
        "estimator": manifest.estimator,
        "features": m["features"],
        "classes": m["classes"],
        "accepts_missing": manifest.accepts_missing,
        "outputs": outputs,
        "input_schema": schema.input_schema(),
        "output_schema": schema.output_schema(),
        "sha256": manifest.sha256,
        "format": manifest.format,
        "created_at": m["created_at"],
        "library_versions": manifest.library_versions,
        "runtime": m["runtime"],
    }


@router.get("", response_model=list[ModelSummary])
def list_models(state: StateDep, _: ModelsRead) -> list[dict[str, Any]]:
    """List the registered models."""
    return [i.model_dump() for i in state.registry.list_models()]


@router.get("/{name}", response_model=ModelDetail)
def get_model(name: str, state: StateDep, _: ModelsRead) -> dict[str, Any]:
    """Describe a model's default version: features, classes, schemas."""
    return describe(state, state.resolve(name, None))


@router.get("/{name}/versions/{version}", response_model=ModelDetail)
def get_model_version(name: str, version: str, state: StateDep, _: ModelsRead
                      ) -> dict[str, Any]:
    """Describe one version (or alias) of a model."""
    return describe(state, state.resolve(name, version))
