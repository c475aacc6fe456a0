"""A chunk's validation, column by column: the acceptance rules of the JSON path, vectorized.

:func:`validate` checks a pyarrow table (a CSV or Parquet chunk, or a JSON Lines chunk that
pyarrow read as one table) with numpy/pyarrow column operations: strict types, missing values
per the manifest, finite numbers within float32, unknown categories, string lengths, extra
fields. :func:`validate_lines` takes a JSON Lines chunk's raw lines; when they do not form one
table (a value of another type, a line that is not an object) each line goes through the
JSON path's own row type (``predq.shared.registry.schema.build_row_type``). Errors are ``{"loc":
["row", N,
field], "msg", "type"}`` with pydantic's types and messages (tests/worker/test_chunks.py
proves the file path refuses exactly the rows the JSON path refuses).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from predq.shared.registry.schema import FLOAT32_MAX
from predq.shared.registry.store import Feature, Manifest


def ids_of(table: Any, id_column: str | None, row0: int) -> Any:
    """The id of each row: the id column, or the 0-based row number."""
    import pyarrow as pa

    if id_column:
        return table.column(id_column).combine_chunks()
    return pa.array(np.arange(row0, row0 + table.num_rows, dtype=np.int64))


# -- validation -------------------------------------------------------------------------------

_MSG = {
    "missing": "Field required",
    "float_type": "Input should be a valid number",
    "float_parsing": "Input should be a valid number, unable to parse string as a number",
    "finite_number": "Input should be a finite number",
    "int_type": "Input should be a valid integer",
    "int_parsing": "Input should be a valid integer, unable to parse string as an integer",
    "bool_type": "Input should be a valid boolean",
    "bool_parsing": "Input should be a valid boolean, unable to interpret input",
    "string_type": "Input should be a valid string",
    "extra_forbidden": "Extra inputs are not permitted",
}
#: What pyarrow's CSV reader takes for a missing value (its default null_values).
_NULL_TEXT = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                        "1.#IND", "1.#QNAN", "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null"})
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}


class _Errors:
    """Row errors collected as (mask, field, type, msg), turned into lines at the end."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.bad = np.zeros(n, dtype=bool)
        self.items: list[tuple[np.ndarray, str, str, str]] = []

    def add(self, mask: np.ndarray, field: str, kind: str, msg: str | None = None) -> None:
        if mask.any():
            self.bad |= mask
            self.items.append((mask, field, kind, msg or _MSG[kind]))

    def by_row(self, row0: int) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {}
        for mask, field, kind, msg in self.items:
            for r in np.flatnonzero(mask).tolist():
                out.setdefault(r, []).append(
                    {"loc": ["row", row0 + r, field], "msg": msg, "type": kind})
        return out


_NULL_TYPE = {"number": "float_type", "integer": "int_type", "boolean": "bool_type",
              "string": "string_type"}


def validate(table: Any, manifest: Manifest, *, row0: int, max_string: int,
             id_column: str | None, strict_text: bool, json_nulls: bool = False
             ) -> tuple[np.ndarray, dict[int, list[dict[str, Any]]], dict[str, np.ndarray]]:
    """Check a chunk column by column; returns (ok mask, errors by chunk row, feature columns
    as the model takes them). ``strict_text``: a string where a number, integer or boolean
    is wanted is an error (JSON Lines, Parquet), rather than text to parse (CSV)."""
    n = table.num_rows
    errs = _Errors(n)
    columns: dict[str, np.ndarray] = {}
    names = set(table.column_names)
    known = {f.name for f in manifest.features} | ({id_column} if id_column else set())
    for name in sorted(names - known):  # only JSON Lines can have these (a later block)
        errs.add(~_nulls(table.column(name)), name, "extra_forbidden")
    for f in manifest.features:
        may_miss = manifest.accepts_missing or not f.required
        if f.name not in names:
            columns[f.name] = _empty(f, n)
            if not may_miss:
                errs.add(np.ones(n, dtype=bool), f.name, "missing")
            continue
        values, nulls = _convert(table.column(f.name), f, errs, strict_text, max_string)
        if not may_miss:  # a JSON null is a value of the wrong type, as in a JSON job
            errs.add(nulls, f.name, _NULL_TYPE[f.type] if json_nulls else "missing")
        if f.categories is not None and not f.allow_unknown:
            _check_categories(values, nulls, f, errs)
        columns[f.name] = values
    return ~errs.bad, errs.by_row(row0), columns


def validate_lines(lines: list[bytes], manifest: Manifest, *, row0: int, max_string: int,
                   id_column: str | None
                   ) -> tuple[np.ndarray, dict[int, list[dict[str, Any]]],
                              dict[str, np.ndarray], Any]:
    """A JSON Lines chunk: the columnar checks when pyarrow reads it as one table, else each
    line through the JSON path's own row type (predq.shared.registry.schema), so a line of another
    shape
    gets exactly the error a JSON job would. Returns validate()'s values and the ids."""
    import io

    import pyarrow as pa
    import pyarrow.json as pjson

    try:
        table = pjson.read_json(io.BytesIO(b"\n".join(lines)))
        if table.num_rows == len(lines):
            ok, errors, columns = validate(table, manifest, row0=row0, max_string=max_string,
                                           id_column=id_column, strict_text=True,
                                           json_nulls=True)
            return ok, errors, columns, ids_of(table, id_column, row0)
    except pa.ArrowInvalid:
        pass
    return _validate_each_line(lines, manifest, row0, max_string, id_column)


def _validate_each_line(lines: list[bytes], manifest: Manifest, row0: int, max_string: int,
                        id_column: str | None) -> Any:
    import pyarrow as pa
    from pydantic import TypeAdapter, ValidationError

    from predq.shared.registry.schema import build_row_type

    adapter = TypeAdapter(build_row_type(manifest, max_string))
    n = len(lines)
    ok = np.ones(n, dtype=bool)
    errors: dict[int, list[dict[str, Any]]] = {}
    values: dict[str, list[Any]] = {f.name: [None] * n for f in manifest.features}
    ids: list[Any] = [row0 + i for i in range(n)] if not id_column else [None] * n
    for i, line in enumerate(lines):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            ok[i] = False
            errors[i] = [{"loc": ["row", row0 + i], "msg": f"Invalid JSON: {e}",
                          "type": "json_invalid"}]
            continue
        if isinstance(obj, dict) and id_column:
            ids[i] = obj.pop(id_column, None)
        try:
            row = adapter.validate_python(obj)
        except ValidationError as e:
            ok[i] = False
            errors[i] = [{"loc": ["row", row0 + i, *err["loc"]], "msg": err["msg"],
                          "type": err["type"]}
                         for err in e.errors(include_url=False, include_input=False)]
            continue
        for name, col in values.items():
            col[i] = row.get(name)
    columns: dict[str, np.ndarray] = {}
    for f in manifest.features:
        col = values[f.name]
        if f.type == "string":
            columns[f.name] = np.array(col, dtype=object)
        else:
            columns[f.name] = np.array([np.nan if v is None else float(v) for v in col])
    try:
        id_arr = pa.array(ids)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # ids of mixed types: as text
        id_arr = pa.array([None if v is None else str(v) for v in ids])
    return ok, errors, columns, id_arr


def _nulls(col: Any) -> np.ndarray:
    return np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def _empty(f: Feature, n: int) -> np.ndarray:
    if f.type == "string":
        return np.full(n, None, dtype=object)
    return np.full(n, np.nan)


def _convert(col: Any, f: Feature, errs: _Errors, strict_text: bool, max_string: int
             ) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.compute as pc

    nulls = _nulls(col)
    t = col.type
    is_text = pa.types.is_string(t) or pa.types.is_large_string(t)
    if f.type == "string":
        return _strings(col, f, nulls, is_text, errs, max_string), nulls
    if pa.types.is_null(t):
        return np.full(len(nulls), np.nan), nulls
    if is_text and not strict_text:  # CSV cells read as text: pyarrow's null spellings
        nulls = nulls | np.asarray(pc.is_in(col, value_set=pa.array(sorted(_NULL_TEXT)))
                                   .fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    if is_text:
        if strict_text:
            kind = {"number": "float_type", "integer": "int_type", "boolean": "bool_type"}
            errs.add(~nulls, f.name, kind[f.type])
            return np.full(len(nulls), np.nan), nulls
        values = _parse_text(col, f, nulls, errs)
    elif f.type == "boolean":
        if not pa.types.is_boolean(t):
            errs.add(~nulls, f.name, "bool_type")
            return np.full(len(nulls), np.nan), nulls
        values = _to_float_or(col, nulls, np.bool_)
    elif pa.types.is_boolean(t):
        errs.add(~nulls, f.name, "float_type" if f.type == "number" else "int_type")
        return np.full(len(nulls), np.nan), nulls
    else:
        values = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False),
                            dtype=np.float64)
        if f.type == "integer":
            frac = ~nulls & (np.nan_to_num(values) != np.round(np.nan_to_num(values)))
            errs.add(frac, f.name, "int_type")
            if not nulls.any() and pa.types.is_integer(t):
                values = np.asarray(pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False))
    if f.type == "number":
        _check_finite(values, nulls, f, errs)
    return values, nulls


def _strings(col: Any, f: Feature, nulls: np.ndarray, is_text: bool, errs: _Errors,
             max_string: int) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_null(col.type):
        return np.full(len(nulls), None, dtype=object)
    if not is_text:
        errs.add(~nulls, f.name, "string_type")
        return np.full(len(nulls), None, dtype=object)
    lengths = pc.utf8_length(col).to_numpy(zero_copy_only=False)
    too_long = np.nan_to_num(np.asarray(lengths, dtype=float), nan=0) > max_string
    errs.add(too_long, f.name, "string_too_long",
             f"String should have at most {max_string} characters")
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)


def _to_float_or(col: Any, nulls: np.ndarray, dtype: Any) -> np.ndarray:
    """A column without nulls in ``dtype``; with nulls, float64 with NaN (as
    predq.shared.jobstore.codec)."""
    if nulls.any():
        return np.array([np.nan if v is None else float(v) for v in col.to_pylist()])
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=dtype)


def _parse_text(col: Any, f: Feature, nulls: np.ndarray, errs: _Errors) -> np.ndarray:
    """Text cells (a CSV read as text) parsed as the feature's type, bad ones reported."""
    import pyarrow as pa
    import pyarrow.compute as pc

    target = {"number": pa.float64(), "integer": pa.int64(), "boolean": pa.bool_()}[f.type]
    try:
        return _to_float_or(pc.cast(col, target), nulls,
                            {"number": np.float64, "integer": np.int64,
                             "boolean": np.bool_}[f.type])
    except pa.ArrowInvalid:
        pass
    out = np.zeros(len(nulls))  # a bad cell's value is never used (its row fails)
    bad = np.zeros(len(nulls), dtype=bool)
    for i, v in enumerate(col.to_pylist()):
        if v is None:
            continue
        try:
            if v in _NULL_TEXT:
                continue
            if f.type == "boolean":
                if v not in _TRUE | _FALSE:
                    raise ValueError(v)
                out[i] = float(v in _TRUE)
            elif f.type == "integer":
                out[i] = int(v.strip())
            else:
                out[i] = float(v)
        except ValueError:
            bad[i] = True
    kind = {"number": "float_parsing", "integer": "int_parsing", "boolean": "bool_parsing"}
    errs.add(bad, f.name, kind[f.type])
    return out


def _check_finite(values: np.ndarray, nulls: np.ndarray, f: Feature, errs: _Errors) -> None:
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(values)
        errs.add(~nulls & ~finite, f.name, "finite_number")
        errs.add(finite & (values > FLOAT32_MAX), f.name, "less_than_equal",
                 f"Input should be less than or equal to {FLOAT32_MAX}")
        errs.add(finite & (values < -FLOAT32_MAX), f.name, "greater_than_equal",
                 f"Input should be greater than or equal to {-FLOAT32_MAX}")


def _check_categories(values: np.ndarray, nulls: np.ndarray, f: Feature, errs: _Errors
                      ) -> None:
    allowed = set(f.categories or ())
    unknown = np.array([not m and v not in allowed for v, m in zip(values.tolist(),
                                                                     nulls.tolist(),
                                                                     strict=True)],
                       dtype=bool)
    cats = list(f.categories or ())
    if len(cats) <= 100:
        shown = ", ".join(repr(c) for c in cats[:-1]) + (f" or {cats[-1]!r}" if cats else "")
        errs.add(unknown, f.name, "literal_error", f"Input should be {shown}")
    else:
        errs.add(unknown, f.name, "value_error",
                 "Value error, unknown category: the model's encoder would reject it")
