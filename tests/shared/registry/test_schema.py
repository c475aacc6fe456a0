"""Input validation built from a manifest: every bad row and field is named."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest

from predq.shared.errors import InvalidInput
from predq.shared.jobstore import codec
from predq.shared.registry.schema import ModelSchema, is_json_error
from predq.shared.registry.store import Feature, Manifest


def manifest(features: list[Feature], *, accepts_missing: bool = False) -> Manifest:
    return Manifest(
        name="m", version="1", format="joblib", artifact="model.joblib", sha256="0" * 64,
        size_bytes=1, task="classification", estimator="x.Y", features=features,
        named_features=True, classes=["a", "b"], has_predict_proba=True,
        accepts_missing=accepts_missing, created_at=datetime.now(UTC), library_versions={},
    )


NUM = [Feature(name=n, type="number", required=True, categories=None, allow_unknown=True)
       for n in ("x1", "x2")]
CAT = Feature(name="color", type="string", required=True, categories=["red", "green"],
              allow_unknown=False)
INT = Feature(name="n", type="integer", required=True, categories=None, allow_unknown=True)


def schema(features: list[Feature] | None = None, **kw: Any) -> ModelSchema:
    return ModelSchema(manifest(features or [*NUM, CAT, INT], **kw), max_rows=5,
                       max_string=8, max_metadata_bytes=64)


def row(**over: Any) -> dict[str, Any]:
    return {"x1": 1.5, "x2": 2, "color": "red", "n": 3, **over}


def body(rows: list[dict[str, Any]], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": rows, **extra})


def errors_of(raw: bytes, s: ModelSchema | None = None) -> list[dict[str, Any]]:
    with pytest.raises(InvalidInput) as ei:
        (s or schema()).parse(raw, allow_webhook=True)
    return ei.value.errors


def test_valid_rows_are_encoded_in_columns() -> None:
    parsed = schema().parse(body([row(), row(x1=-1, color="green", n=7)]), allow_webhook=True)
    n, cols = codec.decode(parsed.inputs)
    assert n == parsed.n_rows == 2
    assert cols["x1"].tolist() == [1.5, -1.0] and cols["x1"].dtype == np.float64
    assert cols["color"].tolist() == ["red", "green"]
    assert cols["n"].tolist() == [3, 7] and cols["n"].dtype == np.int64


@pytest.mark.parametrize(("bad", "field", "etype"), [
    ({"x1": "1.5"}, "x1", "float_type"),          # strings are not coerced
    ({"x1": True}, "x1", "float_type"),
    ({"x1": None}, "x1", "float_type"),           # no missing values for this model
    ({"n": 1.5}, "n", "int_type"),
    ({"color": "purple"}, "color", "literal_error"),  # the encoder would raise
    ({"color": 3}, "color", "literal_error"),
])
def test_wrong_types_name_row_and_field(bad: dict[str, Any], field: str, etype: str) -> None:
    errs = errors_of(body([row(), row(), row(**bad)]))
    assert errs == [{"loc": ["body", "inputs", 2, field], "msg": errs[0]["msg"], "type": etype}]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_nan_and_infinity_are_rejected(literal: bytes) -> None:
    raw = b'{"inputs":[{"x1":' + literal + b',"x2":1,"color":"red","n":1}]}'
    assert errors_of(raw)[0]["loc"] == ["body", "inputs", 0, "x1"]
    assert errors_of(raw)[0]["type"] == "finite_number"


def test_missing_values_allowed_when_the_model_accepts_them() -> None:
    optional = [f.model_copy(update={"required": False}) for f in NUM]
    s = schema(optional, accepts_missing=True)
    parsed = s.parse(body([{"x1": None, "x2": 1}, {"x2": 2}]), allow_webhook=True)
    _, cols = codec.decode(parsed.inputs)
    assert np.isnan(cols["x1"]).all() and cols["x2"].tolist() == [1.0, 2.0]
    assert errors_of(b'{"inputs":[{"x1":Infinity,"x2":1}]}', s)[0]["type"] == "finite_number"


def test_every_bad_row_and_field_is_listed() -> None:
    errs = errors_of(body([row(), {"x1": 1, "x2": 2, "color": "red"},
                           row(extra=1), row(x2="no")]))
    locs = sorted(tuple(e["loc"]) for e in errs)
    assert locs == [("body", "inputs", 1, "n"), ("body", "inputs", 2, "extra"),
                    ("body", "inputs", 3, "x2")]
    types = {e["type"] for e in errs}
    assert types == {"missing", "extra_forbidden", "float_type"}


def test_detail_names_the_bad_rows() -> None:
    with pytest.raises(InvalidInput) as ei:
        schema().parse(body([row(), row(x1="a"), row(n="b")]), allow_webhook=True)
    assert ei.value.detail == "2 validation errors in rows 1, 2"


@pytest.mark.parametrize(("raw", "loc", "etype"), [
    (b'{"inputs": []}', ["body", "inputs"], "too_short"),
    (b'{"inputs": {}}', ["body", "inputs"], "list_type"),
    (b'{"rows": []}', ["body", "inputs"], "missing"),
    (b"[1, 2]", ["body"], "model_type"),
    (b'{"inputs": [1]}', ["body", "inputs", 0], "dict_type"),
])
def test_body_shape_errors(raw: bytes, loc: list[Any], etype: str) -> None:
    errs = errors_of(raw)
    assert any(e["loc"] == loc and e["type"] == etype for e in errs), errs


def test_too_many_rows() -> None:
    errs = errors_of(body([row()] * 6))
    assert errs == [{"loc": ["body", "inputs"], "type": "too_long",
                     "msg": "at most 5 rows per job (PREDQ_MAX_ROWS_PER_JOB)"}]


def test_too_many_rows_names_the_setting_and_points_to_batch_files() -> None:
    s = schema()
    with pytest.raises(InvalidInput) as ei:
        s.parse(body([row()] * 6), allow_webhook=True)
    detail = ei.value.detail
    assert "6 rows exceed the limit of 5 rows per job (PREDQ_MAX_ROWS_PER_JOB)" in detail
    assert f"POST /v1/files, then POST /v1/models/{s.manifest.name}/batches" in detail


def test_long_strings_and_big_metadata_are_refused() -> None:
    s = schema([Feature(name="s", type="string", required=True, categories=None,
                        allow_unknown=True)])
    assert errors_of(body([{"s": "x" * 9}]), s)[0]["type"] == "string_too_long"
    errs = errors_of(body([row()], metadata={"k": "v" * 100}))
    assert errs[0]["loc"] == ["body", "metadata"]


def test_malformed_json_is_flagged_as_such() -> None:
    with pytest.raises(InvalidInput) as ei:
        schema().parse(b'{"inputs": [', allow_webhook=True)
    assert is_json_error(ei.value)


def test_webhook_only_on_the_jobs_body() -> None:
    raw = body([row()], webhook={"url": "https://example.com/hook"})
    assert schema().parse(raw, allow_webhook=True).webhook is not None
    with pytest.raises(InvalidInput) as ei:
        schema().parse(raw, allow_webhook=False)
    assert ei.value.errors[0]["loc"] == ["body", "webhook"]


def test_json_schemas_describe_the_features() -> None:
    js = schema().input_schema()
    assert set(js["required"]) == {"x1", "x2", "color", "n"}
    assert js["additionalProperties"] is False
    assert js["properties"]["color"]["enum"] == ["red", "green"]
    out = schema().output_schema()
    assert set(out["properties"]) == {"label", "probabilities"}


def test_integer_features_accept_integral_floats_only() -> None:
    """pandas and JavaScript clients send 3 as 3.0: an integer feature accepts it as 3."""
    parsed = schema().parse(body([row(n=3.0)]), allow_webhook=False)
    _, cols = codec.decode(parsed.inputs)
    assert cols["n"].dtype == np.int64 and cols["n"].tolist() == [3]
    for bad in (3.5, "3", True, 1e30):
        errs = errors_of(body([row(n=bad)]))
        assert [e["loc"] for e in errs] == [["body", "inputs", 0, "n"]], (bad, errs)
    assert schema().input_schema()["properties"]["n"]["type"] == "integer"


def test_example_row_is_accepted() -> None:
    from predq.shared.registry.schema import example_row

    features = [*NUM, CAT, INT,
                Feature(name="flag", type="boolean", required=True),
                Feature(name="note", type="string", required=True, example="hello, world"),
                Feature(name="k", type="integer", required=True, example=12,
                        categories=[7, 12], allow_unknown=False)]
    example = example_row(manifest(features), max_string=8)  # as schema() below
    assert example == {"x1": 0.0, "x2": 0.0, "color": "red", "n": 0, "flag": False,
                       "note": "hello, w", "k": 12}
    assert schema(features).parse(body([example]), allow_webhook=True).n_rows == 1
