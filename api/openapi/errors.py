"""The error responses of the OpenAPI document, made to match what the API really answers.

FastAPI documents a 422 as ``application/json`` ``HTTPValidationError`` and knows nothing of
errors raised by dependencies. predq answers every error as ``application/problem+json``
(``predq.api.problems``), authenticates in a dependency (401, 403) that also rate-limits (429), and
names resources in path parameters (404). :func:`document_errors` rewrites the document once
it is built, so clients and schema-driven tests (schemathesis, tests/fuzz) see the truth:

- every operation behind an API key lists 401, 403 and 429 (with ``Retry-After``);
- every operation with a path parameter lists 404;
- every 4xx/5xx response is ``application/problem+json`` with the ``Problem`` schema.
"""

from __future__ import annotations

from typing import Any

from predq.api.problems import PROBLEM
from predq.api.schemas import Problem

_REF = "#/components/schemas/Problem"
_AUTH_ERRORS = {
    "401": "Missing, malformed or unknown API key (`Authorization: Bearer <key>`)",
    "403": "The API key lacks the scope this operation needs",
    "429": "Too many requests: the key's rate limit (or the model's queue) is full; "
           "retry after `Retry-After` seconds",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                "schema": {"type": "integer", "minimum": 1}}}


def document_errors(doc: dict[str, Any]) -> None:
    """Add the auth, rate-limit and not-found errors, and make every error problem+json."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Problem", Problem.model_json_schema(ref_template=_REF))
    for item in doc.get("paths", {}).values():
        for op in item.values():
            if isinstance(op, dict) and "responses" in op:
                _document_operation(op)


def _document_operation(op: dict[str, Any]) -> None:
    responses: dict[str, Any] = op["responses"]
    if op.get("security"):
        for code, description in _AUTH_ERRORS.items():
            responses.setdefault(code, {"description": description})
    if any(p.get("in") == "path" for p in op.get("parameters", [])):
        responses.setdefault("404", {"description": "Not found"})
    for code, response in responses.items():
        if code[:1] in ("4", "5"):
            response["content"] = {PROBLEM: {"schema": {"$ref": _REF}}}
            if code in ("429", "503"):
                response.setdefault("headers", {}).update(_RETRY_AFTER)
