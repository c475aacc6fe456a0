"""Pydantic input and output models built from a model version's manifest.

Nobody writes a model's schema by hand: the manifest records the features the fitted model
expects (names, types, the categories its encoders know), and this module turns them into a
row type that pydantic validates in one pass over the raw JSON body (``validate_json``).
Every bad row and field is reported at once, with ``loc`` pointing into the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    create_model,
    with_config,
)
from typing_extensions import TypedDict

from predq.shared.jobstore import codec
from predq.shared.errors import InvalidInput
from predq.shared.registry.jsonsafe import unsafe_values
from predq.shared.registry.manifest import Feature, Manifest, Scalar

#: Largest enum of categories written into the JSON schema as ``Literal``; larger sets are
#: checked by a validator and listed only in ``features``.
_MAX_LITERAL = 100
#: Most errors listed in one 422 (a body of 100k bad rows must not make a 100k-entry reply).
MAX_ERRORS = 200
#: Largest magnitude of a number feature. Trees, forests and gradient boosting compute in
#: float32 and raise on anything bigger, so the API refuses it (422) rather than accept a job
#: that can only fail in the worker (found by tests/fuzz/test_properties.py).
FLOAT32_MAX = 3.4028234663852886e38

#: The events a webhook can ask for. (``job.started`` is not offered: see README.md § Webhooks.)
WebhookEvent = Literal["job.completed", "job.failed"]
TERMINAL_EVENTS: list[WebhookEvent] = ["job.completed", "job.failed"]


class WebhookSpec(BaseModel):
    """Where and for which events to call back."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, StringConstraints(min_length=1, max_length=2048, strict=True)] = Field(
        description="http(s) URL of the receiver; it must resolve to a public address."
    )
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(TERMINAL_EVENTS),
        min_length=1,
        description="Events to deliver; default: both terminal events.",
    )


def _one_of(allowed: frozenset[Any]) -> Any:
    def check(value: Any) -> Any:
        if value not in allowed:
            raise ValueError(f"unknown category {value!r}: the model's encoder would reject it")
        return value

    return AfterValidator(check)


def _integral(value: Any) -> Any:
    """``3.0`` -> ``3``: pandas and JavaScript clients send integers as integral floats. Any
    other value is left for the strict ``int`` check (``3.5``, ``"3"`` and ``true`` fail)."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


#: An integer feature's strict type, integral floats included.
_INTEGRAL = BeforeValidator(_integral)


def _feature_type(feature: Feature, accepts_missing: bool, max_string: int) -> Any:
    """The strict pydantic type of one feature's value."""
    base: Any
    if feature.categories is not None and not feature.allow_unknown:
        if len(feature.categories) <= _MAX_LITERAL:
            base = Literal[tuple(feature.categories)]
            if feature.type == "integer":
                base = Annotated[base, _INTEGRAL]
        else:
            scalar = str if feature.type == "string" else float
            base = Annotated[scalar, Field(strict=True), _one_of(frozenset(feature.categories))]
    elif feature.type == "string":
        base = Annotated[str, StringConstraints(strict=True, max_length=max_string)]
    elif feature.type == "integer":
        # The codec stores integers as int64: a bigger one must be a 422, not an OverflowError.
        # Integral floats (3.0) are accepted as integers; 3.5 is not.
        base = Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1), _INTEGRAL]
    elif feature.type == "boolean":
        base = Annotated[bool, Field(strict=True)]
    else:
        base = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-FLOAT32_MAX,
                                      le=FLOAT32_MAX)]
    if accepts_missing:
        return base | None
    return base


def build_row_type(manifest: Manifest, max_string: int) -> Any:
    """A TypedDict of one input row: every feature, strict types, no extra keys."""
    fields: dict[str, Any] = {}
    for f in manifest.features:
        t = _feature_type(f, manifest.accepts_missing, max_string)
        fields[f.name] = t if f.required else NotRequired[t]
    row = TypedDict(f"{_ident(manifest.name)}_v{manifest.version}_Row", fields)  # type: ignore[misc]
    return with_config(ConfigDict(extra="forbid"))(row)


def build_output_row_model(manifest: Manifest) -> type[BaseModel]:
    """The pydantic model of one output row (for the OpenAPI document and the docs)."""
    name = f"{_ident(manifest.name)}_v{manifest.version}_Output"
    if manifest.task == "regression":
        return create_model(name, value=(float, ...))
    classes = tuple(manifest.classes or ())
    label_t: Any = Literal[classes] if classes else Any
    if manifest.has_predict_proba:
        return create_model(name, label=(label_t, ...), probabilities=(dict[str, float], ...))
    return create_model(name, label=(label_t, ...))


def _ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


@dataclass(frozen=True, slots=True)
class ParsedJob:
    """A validated request, with its rows already in the compact column form."""

    inputs: bytes
    n_rows: int
    webhook: WebhookSpec | None
    metadata: dict[str, Any] | None
    cancel_after: float | None = None


class ModelSchema:
    """Validation and JSON Schemas of one model version."""

    def __init__(self, manifest: Manifest, *, max_rows: int, max_string: int,
                 max_metadata_bytes: int) -> None:
        self.manifest = manifest
        self.max_rows = max_rows
        self.max_metadata_bytes = max_metadata_bytes
        self.max_string = max_string
        self.row_type = build_row_type(manifest, max_string)
        self.output_model = build_output_row_model(manifest)
        inputs_t = Annotated[list[self.row_type], Field(min_length=1)]  # type: ignore[name-defined]
        base = f"{_ident(manifest.name)}_v{manifest.version}"
        common: dict[str, Any] = {
            "inputs": (inputs_t, Field(description="Rows to predict, in order.")),
            "version": (str | None, Field(None, description="Version or alias to use.")),
            "metadata": (dict[str, Any] | None, Field(None, description="Echoed on the job.")),
            "cancel_after": (float | None, Field(
                None, gt=0, le=30 * 86400,
                description="Seconds: a job still queued after this becomes 'expired'.")),
        }
        cfg = ConfigDict(extra="forbid")
        self.predict_body = create_model(f"{base}_PredictRequest", __config__=cfg, **common)
        self.job_body = create_model(
            f"{base}_JobRequest", __config__=cfg,
            webhook=(WebhookSpec | None, Field(None, description="Signed callback.")), **common,
        )
        self._job_adapter = TypeAdapter(self.job_body)
        self._predict_adapter = TypeAdapter(self.predict_body)

    def input_schema(self) -> dict[str, Any]:
        """JSON Schema of one input row."""
        return TypeAdapter(self.row_type).json_schema()

    def output_schema(self) -> dict[str, Any]:
        """JSON Schema of one output row."""
        return self.output_model.model_json_schema()

    def parse(self, body: bytes | dict[str, Any], *, allow_webhook: bool) -> ParsedJob:
        """Validate a request body and encode its rows. Raises InvalidInput naming every error."""
        adapter = self._job_adapter if allow_webhook else self._predict_adapter
        try:
            if isinstance(body, bytes):
                obj = adapter.validate_json(body)
            else:
                obj = adapter.validate_python(body)
        except ValidationError as e:
            raise InvalidInput(_summary(e), errors=problem_errors(e)) from e
        rows: list[dict[str, Any]] = obj.inputs
        if len(rows) > self.max_rows:
            raise InvalidInput(
                f"{len(rows)} rows exceed the limit of {self.max_rows} rows per job "
                "(PREDQ_MAX_ROWS_PER_JOB): split them into several jobs, or send them as a "
                "batch file (POST /v1/files, then POST "
                f"/v1/models/{self.manifest.name}/batches)",
                errors=[{"loc": ["body", "inputs"], "type": "too_long",
                         "msg": f"at most {self.max_rows} rows per job "
                                "(PREDQ_MAX_ROWS_PER_JOB)"}],
            )
        metadata = obj.metadata
        if metadata is not None:
            self._check_metadata(metadata)
        columns = [(f.name, f.type, [r.get(f.name) for r in rows])
                   for f in self.manifest.features]
        return ParsedJob(
            inputs=codec.encode(len(rows), columns),
            n_rows=len(rows),
            webhook=getattr(obj, "webhook", None),
            metadata=metadata,
            cancel_after=obj.cancel_after,
        )

    def _check_metadata(self, metadata: dict[str, Any]) -> None:
        """422 unless ``metadata`` is within the size limit and stores exactly (no integer
        beyond 64 bits, NaN, Infinity or lone surrogate: :mod:`predq.shared.registry.jsonsafe`)."""
        try:
            size = len(orjson.dumps(metadata))
        except TypeError:
            size = None  # an integer or a string orjson cannot write: named below
        if size is not None and size > self.max_metadata_bytes:
            raise InvalidInput(
                f"metadata exceeds {self.max_metadata_bytes} bytes",
                errors=[{"loc": ["body", "metadata"], "type": "too_long",
                         "msg": f"at most {self.max_metadata_bytes} bytes of JSON"}],
            )
        bad = unsafe_values(metadata, ["body", "metadata"], MAX_ERRORS)
        if bad:
            raise InvalidInput(f"{len(bad)} value(s) in metadata cannot be stored as JSON",
                               errors=bad)
        if size is None:  # not expected: every value orjson refuses is named above
            raise InvalidInput("metadata cannot be stored as JSON", errors=[
                {"loc": ["body", "metadata"], "type": "json_type",
                 "msg": "metadata must be plain JSON"}])


def problem_errors(e: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as problem+json ``errors`` entries, ``loc`` rooted at ``body``."""
    out = []
    for err in e.errors(include_url=False, include_input=False)[:MAX_ERRORS]:
        loc = list(err["loc"])
        if err["type"] == "json_invalid":
            loc = []
        out.append({"loc": ["body", *loc], "msg": err["msg"], "type": err["type"]})
    return out


def _summary(e: ValidationError) -> str:
    n = e.error_count()
    rows = sorted({err["loc"][1] for err in e.errors(include_url=False, include_input=False)
                   if len(err["loc"]) > 1 and err["loc"][0] == "inputs"
                   and isinstance(err["loc"][1], int)})
    detail = f"{n} validation error{'s' if n != 1 else ''}"
    if rows:
        shown = ", ".join(str(r) for r in rows[:20])
        more = f" and {len(rows) - 20} more" if len(rows) > 20 else ""
        detail += f" in rows {shown}{more}"
    if n > MAX_ERRORS:
        detail += f"; the first {MAX_ERRORS} are listed"
    return detail


def is_json_error(e: InvalidInput) -> bool:
    """Whether the body was not JSON at all (the API answers 400 rather than 422)."""
    return any(err.get("type") == "json_invalid" for err in e.errors)


def example_row(manifest: Manifest, max_string: int | None = None) -> dict[str, Any]:
    """A row the API accepts, for the OpenAPI examples: each feature's recorded ``example``
    (a real value of the push's ``--sample``, or a known category), else a neutral value of
    its type (0, 0.0, false, or ""); strings cut to ``max_string``."""
    row: dict[str, Any] = {}
    for f in manifest.features:
        value = f.example
        if f.categories and (value is None or (not f.allow_unknown
                                               and value not in f.categories)):
            value = f.categories[0]
        if value is None or not _fits(value, f.type):
            defaults: dict[str, Scalar] = {"integer": 0, "number": 0.0, "boolean": False,
                                           "string": ""}
            value = defaults[f.type]
        if isinstance(value, str) and max_string is not None and not f.categories:
            value = value[:max_string]
        row[f.name] = value
    return row


def _fits(value: Any, type_: str) -> bool:
    if type_ == "boolean":
        return isinstance(value, bool)
    if type_ == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_ == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and abs(
            value) <= FLOAT32_MAX
    return isinstance(value, str)
