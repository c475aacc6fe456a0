"""The OpenAPI document, with every registered model's own request and output schemas.

The generic routes take ``{name}``; for each registered model (its default version) this adds
the concrete paths ``/v1/models/<name>/jobs`` and ``/predict`` whose bodies are that model's
pydantic schema, so Swagger at /docs shows (and can send) real rows: each body's example is
:func:`predq.shared.registry.schema.example_row` (values recorded at push from the ``--sample``
file), which
the API accepts, and ``/predict``'s 200 answer is that model's output schema, with an example.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from predq.api.deps import AUTH_MARK, SECURITY_SCHEME, AppState
from predq.api.openapi.errors import document_errors
from predq.shared.jobstore.views import job_links
from predq.shared.registry.schema import WebhookSpec, example_row

log = logging.getLogger("predq.api")
_REF = "#/components/schemas/{model}"
_EXAMPLE_JOB_ID = "0b7e6a2c-3f4d-4c1e-9a8b-5d6f7e8a9b0c"


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
        _add_security(doc, app)
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
        if manifests:
            _add_generic_examples(doc, state.schema_for(manifests[0]))  # type: ignore[union-attr]
        document_errors(doc)  # problem+json everywhere; 401/403/429/404 where they happen
        cache.update(key=key, doc=doc)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _requires_key(dependant: Any) -> bool:
    """Whether a route's dependencies include predq.api.deps.require (at any depth)."""
    if getattr(dependant.call, AUTH_MARK, None) is not None:
        return True
    return any(_requires_key(d) for d in dependant.dependencies)


def _add_security(doc: dict[str, Any], app: FastAPI) -> None:
    """The bearer-key security of every operation that authenticates (``require`` reads
    the header itself, so FastAPI cannot see it), as HTTPBearer would have declared it."""
    from fastapi import routing
    from fastapi.openapi.utils import _get_api_route_for_openapi

    secured = False
    # The routes as get_openapi walks them (FastAPI 0.165 keeps included routers nested).
    for context in routing.iter_route_contexts(app.routes):
        route = _get_api_route_for_openapi(context)
        if route is None or not getattr(route, "include_in_schema", False):
            continue
        if not _requires_key(route.dependant):
            continue
        for method in route.methods:
            op = doc.get("paths", {}).get(route.path_format, {}).get(method.lower())
            if op is not None:
                op["security"] = [{name: []} for name in SECURITY_SCHEME]
                secured = True
    if secured:
        components = doc.setdefault("components", {})
        components.setdefault("securitySchemes", {}).update(copy.deepcopy(SECURITY_SCHEME))


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
            "schema": {"$ref": _REF.format(model=body_model.__name__)},
            "example": {"inputs": [example_row(schema.manifest, schema.max_string)]}}}}
        if suffix == "predict":
            result = f"{schema.output_model.__name__[:-len('_Output')]}_PredictResult"
            doc["components"]["schemas"][result] = _predict_result_schema(schema)
            op["responses"]["200"] = {"description": f"The outputs of {name}, one per row",
                                      "content": {"application/json": {
                                          "schema": {"$ref": _REF.format(model=result)},
                                          "example": _predict_result_example(schema)}}}
        accepted = op["responses"].get("202", {}).get("content", {}).get("application/json")
        if accepted is not None:
            accepted["example"] = _accepted_example(schema)
        paths[f"/v1/models/{name}/{suffix}"] = {"post": op}


def _accepted_example(schema: Any) -> dict[str, Any]:
    m = schema.manifest
    return {"id": _EXAMPLE_JOB_ID, "status": "queued", "model": m.name, "version": m.version,
            "n_inputs": 1, "created_at": "2026-01-01T12:00:00.000000Z",
            "links": job_links(_EXAMPLE_JOB_ID)}


def _predict_result_schema(schema: Any) -> dict[str, Any]:
    """``/predict``'s 200 body for one model: its outputs are that model's output rows."""
    m = schema.manifest
    return {"type": "object", "title": f"{m.name} v{m.version} prediction",
            "required": ["outputs", "model", "version", "job_id"], "properties": {
                "outputs": {"type": "array", "description": "One per input row, in order.",
                            "items": {"$ref": _REF.format(model=schema.output_model.__name__)}},
                "model": {"type": "string", "const": m.name},
                "version": {"type": "string"},
                "job_id": {"type": "string", "format": "uuid"},
            }}


def _output_example(schema: Any) -> dict[str, Any]:
    m = schema.manifest
    if m.task == "regression":
        return {"value": 0.0}
    classes = list(m.classes or ["label"])
    out: dict[str, Any] = {"label": classes[0]}
    if m.has_predict_proba:
        out["probabilities"] = {str(c): (1.0 if i == 0 else 0.0) for i, c in enumerate(classes)}
    return out


def _predict_result_example(schema: Any) -> dict[str, Any]:
    m = schema.manifest
    return {"outputs": [_output_example(schema)], "model": m.name, "version": m.version,
            "job_id": _EXAMPLE_JOB_ID}


def _add_generic_examples(doc: dict[str, Any], schema: Any) -> None:
    """Examples for the ``{name}`` routes, from one registered model (rather than Swagger's
    ``{"additionalProp1": {}}``); the per-model paths have their own."""
    paths = doc["paths"]
    for suffix in ("jobs", "predict"):
        op = paths.get(f"/v1/models/{{name}}/{suffix}", {}).get("post")
        if op is None:
            continue
        for param in op.get("parameters", []):
            if param.get("name") == "name" and param.get("in") == "path":
                param["example"] = schema.manifest.name
        content = op.get("requestBody", {}).get("content", {}).get("application/json")
        if content is not None:
            content["example"] = {"inputs": [example_row(schema.manifest, schema.max_string)]}
        ok = op.get("responses", {}).get("200", {}).get("content", {}).get("application/json")
        if suffix == "predict" and ok is not None:
            ok["example"] = _predict_result_example(schema)
