"""Property tests of input validation: what the validator accepts, the model can predict on.

Rows are generated from each registered model's manifest (the demo ``iris`` forest and the
``mixed`` ColumnTransformer pipeline): numbers including 1e308, -1e308, the float32 limits,
0, -0.0 and subnormals, integers beyond 64 bits, unicode and empty strings, known and unknown
categories, booleans, nulls, missing and extra keys. For every body:

- ``ModelSchema.parse`` either accepts it or raises ``InvalidInput``, never anything else;
- an accepted body, decoded from the codec exactly as the worker does (``build_frame``), goes
  through the real estimator's ``predict``/``predict_proba`` without an exception, one output
  per row, probabilities finite and summing to 1, and through ``predict_jobs`` (the worker's
  own call) into one JSON output row per input row.

A synthetic manifest with every feature type checks the codec: what is accepted round-trips.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predq.shared.errors import InvalidInput
from predq.shared.jobstore import codec
from predq.shared.registry.schema import FLOAT32_MAX, ModelSchema
from predq.shared.registry.serialization import load_estimator
from predq.shared.registry.store import Feature, Manifest, Registry
from predq.worker.predict import Job, build_frame, predict_jobs

pytestmark = pytest.mark.slow

EXTREMES = [1e308, -1e308, 1.7976931348623157e308, 0.0, -0.0, 5e-324, -5e-324,
            2.2250738585072014e-308, 1e-300, 123456789.123456789,
            FLOAT32_MAX, -FLOAT32_MAX, 3.4e38, -3.4e38, 3.5e38, 1.1754943508222875e-38]
NUMBERS = st.one_of(st.sampled_from(EXTREMES), st.floats(allow_nan=False, allow_infinity=False),
                    st.integers(-(2**53), 2**53), st.integers(-(2**70), 2**70))
NON_FINITE = st.sampled_from([math.inf, -math.inf, math.nan])
STRINGS = st.text(max_size=80)
ANY_SCALAR = st.one_of(NUMBERS, NON_FINITE, STRINGS, st.booleans(), st.none())
PROFILE = settings(max_examples=300, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def value_for(feature: Feature, legal: bool = False) -> st.SearchStrategy[Any]:
    """Mostly plausible values of the feature's type, with any JSON scalar mixed in; with
    ``legal``, only values the schema accepts (edges included), so that accepted bodies are
    common and the property is really checked on them."""
    typed: st.SearchStrategy[Any]
    if feature.type == "number":
        typed = (st.one_of(st.floats(-FLOAT32_MAX, FLOAT32_MAX, allow_nan=False),
                           st.sampled_from([x for x in EXTREMES if abs(x) <= FLOAT32_MAX]),
                           st.integers(-(2**63), 2**63 - 1))
                 if legal else NUMBERS)
    elif feature.type == "integer":
        typed = st.integers(-(2**63), 2**63 - 1) if legal else st.integers(-(2**70), 2**70)
    elif feature.type == "boolean":
        typed = st.booleans()
    else:
        typed = st.text(max_size=64) if legal else STRINGS
    if feature.categories:
        cats = st.sampled_from(feature.categories)
        typed = cats if legal and not feature.allow_unknown else st.one_of(cats, typed)
    return typed if legal else st.one_of(typed, typed, typed, ANY_SCALAR)


@st.composite
def rows_for(draw: st.DrawFn, manifest: Manifest, max_rows: int = 5) -> list[dict[str, Any]]:
    """Rows of any JSON scalars, or (a third of the time) rows of legal values only."""
    legal = draw(st.integers(0, 2)) == 0
    rows = []
    for _ in range(draw(st.integers(1, max_rows))):
        row = {f.name: draw(value_for(f, legal)) for f in manifest.features}
        for f in manifest.features:
            if (not legal or not f.required) and draw(st.integers(0, 19)) == 0:
                del row[f.name]  # sometimes a feature is left out
        if not legal and draw(st.integers(0, 29)) == 0:  # and sometimes there is an extra one
            row[draw(st.text(min_size=1, max_size=8))] = 1.0
        rows.append(row)
    return rows


def encode(rows: list[dict[str, Any]]) -> bytes:
    """The request body. The stdlib encoder: it writes ints of any size, and NaN/Infinity,
    which are not JSON (the parser must refuse them, as a client's body could hold them)."""
    return json.dumps({"inputs": rows}).encode()


@pytest.fixture(scope="module")
def served(_registry_template: Path) -> dict[str, tuple[Manifest, Any, ModelSchema]]:
    """The two registered models, loaded as a worker loads them (sha256 checked)."""
    registry = Registry(_registry_template)
    out = {}
    for name in ("iris", "mixed"):
        m = registry.resolve(name, None)
        estimator = load_estimator(registry.artifact_path(m), fmt=m.format,
                                   expected_sha256=m.sha256, trusted_types=m.trusted_types)
        out[name] = (m, estimator, ModelSchema(m, max_rows=100, max_string=64,
                                               max_metadata_bytes=1024))
    return out


def check_accepted_rows_predict(served: dict[str, Any], name: str, data: st.DataObject
                                ) -> bool:
    """Whether the drawn rows were accepted (and then predicted and checked)."""
    manifest, estimator, schema = served[name]
    rows = data.draw(rows_for(manifest), label="rows")
    try:
        parsed = schema.parse(encode(rows), allow_webhook=False)
    except InvalidInput:
        return False  # refused with a 422 naming the rows: fine (any other exception fails)
    n, columns = codec.decode(parsed.inputs)
    assert n == len(rows) == parsed.n_rows
    frame = build_frame(manifest, columns)
    with warnings.catch_warnings():
        # Extreme magnitudes may overflow inside an estimator (numpy warns); the contract
        # is on the outputs, which are checked below.
        warnings.simplefilter("ignore", RuntimeWarning)
        labels = np.asarray(estimator.predict(frame))
        proba = np.asarray(estimator.predict_proba(frame))
        rendered = predict_jobs(manifest, estimator,
                                [(Job("j", name, manifest.version, n, b"", b""), columns)], 7)
    assert labels.shape[0] == n and proba.shape == (n, len(manifest.classes or ()))
    assert set(labels.tolist()) <= set(manifest.classes or ())
    assert np.isfinite(proba).all(), (rows, proba)
    assert np.allclose(proba.sum(axis=1), 1.0)
    outputs = orjson.loads(rendered[0])
    assert len(outputs) == n and all(set(o) == {"label", "probabilities"} for o in outputs)
    return True


def assert_both_ways(tally: Counter[bool]) -> None:
    """A property that returns early on a refusal passes even if the validator refuses
    everything: the run must have accepted (and checked) a fair share of its examples, and
    refused some."""
    total = sum(tally.values())
    assert tally[True] >= max(10, total // 10), f"only {tally[True]} of {total} accepted"
    assert tally[False] >= 1, f"none of {total} examples was refused"


def test_iris_accepted_rows_are_predictable(served: dict[str, Any]) -> None:
    tally: Counter[bool] = Counter()

    @PROFILE
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        tally[check_accepted_rows_predict(served, "iris", data)] += 1

    prop()
    assert_both_ways(tally)


def test_mixed_accepted_rows_are_predictable(served: dict[str, Any]) -> None:
    tally: Counter[bool] = Counter()

    @PROFILE
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        tally[check_accepted_rows_predict(served, "mixed", data)] += 1

    prop()
    assert_both_ways(tally)


EVERY_TYPE = Manifest(
    name="every-type", version="1", format="joblib", artifact="model.joblib", sha256="0" * 64,
    size_bytes=0, task="regression", estimator="test.Synthetic", named_features=True,
    has_predict_proba=False, accepts_missing=True, created_at=datetime.now(UTC),
    library_versions={}, features=[
        Feature(name="n", type="number", required=True),
        Feature(name="i", type="integer", required=True),
        Feature(name="b", type="boolean", required=False),
        Feature(name="s", type="string", required=False),
        Feature(name="c", type="string", required=True, categories=["a", "é", ""],
                allow_unknown=False),
    ])


def test_every_accepted_value_round_trips_through_the_codec() -> None:
    tally: Counter[bool] = Counter()

    @PROFILE
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        tally[check_round_trip(data)] += 1

    prop()
    assert_both_ways(tally)


def check_round_trip(data: st.DataObject) -> bool:
    """Whether the drawn rows were accepted (and then checked against the decoded columns)."""
    schema = ModelSchema(EVERY_TYPE, max_rows=100, max_string=64, max_metadata_bytes=1024)
    rows = data.draw(rows_for(EVERY_TYPE), label="rows")
    try:
        parsed = schema.parse(encode(rows), allow_webhook=True)
    except InvalidInput:
        return False
    n, columns = codec.decode(parsed.inputs)
    assert n == len(rows)
    for f in EVERY_TYPE.features:
        for value, got in zip((r.get(f.name) for r in rows), columns[f.name].tolist(),
                              strict=True):
            if value is None:
                assert got is None or (isinstance(got, float) and math.isnan(got))
            elif f.type == "number":
                # a number feature holds float64: an int beyond 2**53 is its nearest float
                assert got == float(value) and math.copysign(1, got) == math.copysign(1, value)
            else:
                assert got == value
    return True
