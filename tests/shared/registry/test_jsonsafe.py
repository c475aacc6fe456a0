"""predq.shared.registry.jsonsafe: which free-form values cannot be stored exactly, and where they
are."""

from __future__ import annotations

import math

import orjson

from predq.shared.registry.jsonsafe import INT_MAX, INT_MIN, unsafe_values


def test_each_unsafe_value_is_named_with_its_path_in_document_order() -> None:
    value = {"a": [1, 2**64, {"b": math.nan}], "c": "x\ud800", "\udc00k": -math.inf,
             "ok": [INT_MIN, INT_MAX, -0.0, 5e-324, "é", None, True]}
    errors = unsafe_values(value, ["body", "metadata"])
    assert [(e["loc"], e["type"]) for e in errors] == [
        (["body", "metadata", "a", 1], "int_too_big"),
        (["body", "metadata", "a", 2, "b"], "finite_number"),
        (["body", "metadata", "c"], "string_unicode"),
        (["body", "metadata", "?k"], "string_unicode"),  # the key itself, as it can be written
        (["body", "metadata", "?k"], "finite_number"),
    ]
    orjson.dumps(errors)  # the error list itself can always be answered


def test_safe_values_round_trip_through_orjson() -> None:
    value = {"ints": [INT_MIN, INT_MAX, 0], "floats": [-0.0, 5e-324, 1.7976931348623157e308],
             "s": "\U0001f600\u2028\x00", "n": None, "nested": [[{"k": []}]]}
    assert unsafe_values(value, []) == []
    assert orjson.loads(orjson.dumps(value)) == value


def test_deep_and_wide_values_and_the_error_limit() -> None:
    deep: object = 2**70
    for _ in range(10_000):  # no recursion, whatever the depth
        deep = [deep]
    assert len(unsafe_values(deep, [])[0]["loc"]) == 10_000
    wide = {f"k{i}": math.nan for i in range(1000)}
    errors = unsafe_values(wide, ["m"], limit=50)
    assert len(errors) == 50 and errors[0]["loc"] == ["m", "k0"]
