"""The OpenAPI document, with every registered model's own request and output schemas.

The generic routes take ``{name}``; for each registered model (its default version) this adds
the concrete paths ``/v1/models/<name>/jobs`` and ``/predict`` whose bodies are that model's
pydantic schema, so Swagger at /docs shows (and can send) real rows.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from api.deps import AppState
from api.errordocs import document_errors
from shared.schema import WebhookSpec

log = logging.getLogger("predq.api")
_REF = "#/components/schemas/{model}"


def install(app: FastAPI) -> None:
    cache: dict[str, Any] = {"key": None, "doc": None}

    def openapi() -> dict[str, Any]:
        state: AppState | None = getattr(app.state, "predq", None)
        models = state.registry.list_models() if state else []
        manifests = []
        for info in models:
            try:
                manifests.append(state.registry.resolve(info.name, None))  # type: ignore[union-attr]
            except Exception as e:  # a broken model must not break /docs
                log.warning("model %s left out of the OpenAPI document: %s", info.name, e)
        key = tuple((m.name, m.version, m.sha256) for m in manifests)
        if cache["key"] == key and cache["doc"] is not None:
            return cache["doc"]  # type: ignore[no-any-return]
        doc = get_openapi(title=app.title, version=app.version, description=app.description,
                          routes=app.routes, webhooks=app.webhooks.routes)
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        generic: dict[str, Any] = {"type": "object", "required": ["inputs"], "properties": {
            "inputs": {"type": "array", "minItems": 1, "items": {"type": "object"},
                       "description": "Rows: see GET /v1/models/{name} for the features."},
            "version": {"type": ["string", "null"]},
            "metadata": {"type": ["object", "null"]},
            "cancel_after": {"type": ["number", "null"], "exclusiveMinimum": 0},
        }, "additionalProperties": False}
        components["PredictRequest"] = copy.deepcopy(generic)
        generic["properties"]["webhook"] = {"anyOf": [
            {"$ref": "#/components/schemas/WebhookSpec"}, {"type": "null"}]}
        components["JobRequest"] = generic
        models_list: list[Any] = [(WebhookSpec, "validation")]
        for m in manifests:
            schema = state.schema_for(m)  # type: ignore[union-attr]
            models_list += [(schema.job_body, "validation"), (schema.predict_body, "validation"),
                            (schema.output_model, "validation")]
        _, defs = models_json_schema(models_list, ref_template=_REF)
        components.update(defs.get("$defs", {}))
        for m in manifests:
            _add_model_paths(doc, state.schema_for(m))  # type: ignore[union-attr]
        document_errors(doc)  # problem+json everywhere; 401/403/429/404 where they happen
        cache.update(key=key, doc=doc)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _add_model_paths(doc: dict[str, Any], schema: Any) -> None:
    name = schema.manifest.name
    paths = doc["paths"]
    for suffix, body_model in (("jobs", schema.job_body), ("predict", schema.predict_body)):
        generic = paths.get(f"/v1/models/{{name}}/{suffix}", {}).get("post")
        if generic is None:
            continue
        op = copy.deepcopy(generic)
        op["operationId"] = f"{suffix}_{name}".replace("-", "_")
        op["summary"] = f"{op.get('summary', suffix)} ({name})"
        op["tags"] = [f"model: {name}"]
        op["parameters"] = [p for p in op.get("parameters", []) if p.get("name") != "name"]
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": _REF.format(model=body_model.__name__)}}}}
        paths[f"/v1/models/{name}/{suffix}"] = {"post": op}
