"""A chunk's vectorized validation accepts exactly what the JSON path accepts (issue 12).

The same rows go through ``predq.shared.registry.schema.ModelSchema.parse`` (a JSON job) and through
``predq.worker.batchfiles.validation`` as a JSON Lines chunk (both its columnar path and its
line-by-line
path) and as a typed Parquet-like table: every row is accepted by all or refused by all, and
a refused row's error names the same field. Plus the file-format helpers of
``predq.shared.batchfiles.tabular``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from predq.shared.batchfiles.tabular import BadFile, inspect, sniff
from predq.shared.errors import InvalidInput
from predq.shared.registry.schema import ModelSchema
from predq.shared.registry.store import Feature, Manifest
from predq.worker.batchfiles.validation import _validate_each_line, validate, validate_lines

MAX_STRING = 8


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return Manifest(
        name="m", version="1", format="joblib", artifact="model.joblib", sha256="0" * 64,
        size_bytes=1, task="classification", estimator="x", named_features=True,
        classes=["a", "b"], has_predict_proba=True, accepts_missing=False,
        created_at="2026-01-01T00:00:00Z", library_versions={},
        features=[Feature(name="color", type="string", required=True,
                          categories=["blue", "green", "red"], allow_unknown=False),
                  Feature(name="name", type="string", required=True),
                  Feature(name="x1", type="number", required=True),
                  Feature(name="n", type="integer", required=True),
                  Feature(name="flag", type="boolean", required=True)])


GOOD = {"color": "red", "name": "ann", "x1": 1.5, "n": 3, "flag": True}
CASES: list[tuple[dict[str, Any], str | None]] = [
    (GOOD, None),
    ({**GOOD, "x1": 2}, None),                       # an integer is a number
    ({**GOOD, "color": "purple"}, "color"),          # unknown category
    ({**GOOD, "name": "a" * (MAX_STRING + 1)}, "name"),  # too long
    ({**GOOD, "x1": "1.5"}, "x1"),                   # a string is not a number
    ({**GOOD, "x1": None}, "x1"),                    # no missing values for this model
    ({**GOOD, "x1": 1e39}, "x1"),                    # beyond float32
    ({**GOOD, "x1": -1e39}, "x1"),
    ({**GOOD, "n": 2.5}, "n"),                       # not an integer
    ({**GOOD, "flag": 1}, "flag"),                   # 1 is not true
    ({**GOOD, "name": 5}, "name"),                   # a number is not a string
    ({**GOOD, "flag": "true"}, "flag"),
]


def _json_path(schema: ModelSchema, row: dict[str, Any]) -> str | None:
    try:
        schema.parse({"inputs": [row]}, allow_webhook=True)
    except InvalidInput as e:
        return str(e.errors[0]["loc"][3])
    return None


@pytest.mark.parametrize(("row", "bad_field"), CASES)
def test_a_row_is_refused_by_the_file_path_iff_by_the_json_path(
        manifest: Manifest, row: dict[str, Any], bad_field: str | None) -> None:
    schema = ModelSchema(manifest, max_rows=10, max_string=MAX_STRING, max_metadata_bytes=100)
    assert _json_path(schema, row) == bad_field
    # Five good rows around it, so the columnar path sees a column of one type.
    lines = [orjson.dumps(GOOD)] * 2 + [orjson.dumps(row)] + [orjson.dumps(GOOD)] * 2
    for ok, errors in (validate_lines(lines, manifest, row0=100, max_string=MAX_STRING,
                                      id_column=None)[:2],
                       _validate_each_line(lines, manifest, 100, MAX_STRING, None)[:2]):
        assert ok.tolist() == [True, True, bad_field is None, True, True]
        if bad_field is not None:
            assert list(errors) == [2]
            assert errors[2][0]["loc"][:3] == ["row", 102, bad_field]
    try:
        table = pa.Table.from_pylist([GOOD, row, GOOD])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return  # a column of mixed types cannot be a Parquet column (422 at creation)
    ok, errors, _ = validate(table, manifest, row0=0, max_string=MAX_STRING, id_column=None,
                             strict_text=True, json_nulls=True)
    assert ok.tolist() == [True, bad_field is None, True], errors


def test_csv_text_cells_parse_and_bad_ones_are_named(manifest: Manifest) -> None:
    table = pa.table({"color": ["red", "blue", "red", "red"],
                      "name": ["a", "b", "c", "d"],
                      "x1": ["1.5", "abc", "", "2"], "n": ["1", "2", "3", "x"],
                      "flag": ["true", "false", "True", "false"]})
    ok, errors, columns = validate(table, manifest, row0=10, max_string=MAX_STRING,
                                   id_column=None, strict_text=False)
    assert ok.tolist() == [True, False, False, False]
    assert [(r, e[0]["loc"][2], e[0]["type"]) for r, e in sorted(errors.items())] == [
        (1, "x1", "float_parsing"), (2, "x1", "missing"), (3, "n", "int_parsing")]
    assert errors[1][0]["loc"] == ["row", 11, "x1"]
    assert columns["x1"][0] == 1.5 and columns["flag"][0] == 1.0


def test_sniff_tells_the_formats_apart() -> None:
    assert sniff(b"PAR1\x00\x01") == "parquet"
    assert sniff(b'  {"a": 1}\n') == "jsonl"
    assert sniff(b"a,b\n1,2\n") == "csv"
    assert sniff(b"\x1f\x8b\x08\x00\x00") is None  # gzip bytes sent without the header
    assert sniff("é,b\n".encode()[:1]) == "csv"   # a character cut at the end


@pytest.mark.parametrize(("text", "words"), [
    (b"", "empty"), (b"a,b\n", "header"), (b"a,a\n1,2\n", "duplicate"),
    (b"a,b\n1,2\n3\n", "ragged"),
])
def test_inspect_names_what_is_wrong_with_a_csv(tmp_path: Path, text: bytes, words: str
                                                ) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(text)
    with pytest.raises(BadFile, match=words):
        inspect(path, "csv")


def test_inspect_counts_rows_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(b'a,b\n1,"x\ny"\n3,4\n')  # a quoted newline is one row
    info = inspect(path, "csv")
    assert info.columns == ["a", "b"] and info.n_rows == 2
    lines = tmp_path / "f.jsonl"
    lines.write_bytes(b'{"a": 1}\n\n{"a": 2, "b": "x"}\n')
    info = inspect(lines, "jsonl")
    assert info.columns == ["a", "b"] and info.n_rows == 2
    bad = tmp_path / "g.jsonl"
    bad.write_bytes(b'{"a": 1}\n[1, 2]\n')
    with pytest.raises(BadFile, match="line 2"):
        inspect(bad, "jsonl")
