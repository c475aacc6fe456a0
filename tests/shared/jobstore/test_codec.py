import numpy as np
import pytest

from predq.shared.jobstore import codec


def test_round_trip_keeps_types_and_order() -> None:
    raw = codec.encode(3, [("a", "number", [1.5, -2.0, 1e300]), ("b", "integer", [1, 2, 3]),
                           ("c", "boolean", [True, False, True]), ("d", "string", ["x", "é", ""])])
    n, cols = codec.decode(raw)
    assert n == 3
    assert cols["a"].tolist() == [1.5, -2.0, 1e300]
    assert cols["b"].dtype == np.int64 and cols["b"].tolist() == [1, 2, 3]
    assert cols["c"].tolist() == [True, False, True]
    assert cols["d"].tolist() == ["x", "é", ""]


def test_a_missing_number_becomes_nan() -> None:
    _, cols = codec.decode(codec.encode(2, [("a", "number", [1.5, None])]))
    assert cols["a"].dtype == np.float64
    assert cols["a"][0] == 1.5 and np.isnan(cols["a"][1])


def test_missing_integers_and_booleans_keep_their_type_and_exact_values() -> None:
    big = 2**53 + 1
    raw = codec.encode(3, [("i", "integer", [big, None, -(2**63)]),
                           ("b", "boolean", [None, True, False]),
                           ("s", "string", ["x", None, "y"])])
    n, cols = codec.decode(raw)
    assert n == 3
    assert isinstance(cols["i"], np.ma.MaskedArray) and cols["i"].dtype == np.int64
    assert cols["i"].mask.tolist() == [False, True, False]
    assert cols["i"].data[[0, 2]].tolist() == [big, -(2**63)]
    assert cols["b"].dtype == bool and cols["b"].mask.tolist() == [True, False, False]
    assert cols["b"].data[1:].tolist() == [True, False]
    assert cols["s"].tolist() == ["x", None, "y"]


def test_columns_without_missing_values_have_no_mask() -> None:
    _, cols = codec.decode(codec.encode(2, [("i", "integer", [1, 2])]))
    assert not isinstance(cols["i"], np.ma.MaskedArray)


def test_the_former_layout_still_decodes() -> None:
    """Jobs queued by an API before the mask layout: a missing integer stored as float NaN."""
    head = b'{"n":2,"cols":[["a","number",16]]}'
    raw = b"PQ1" + len(head).to_bytes(4, "little") + head + np.array([1.0, np.nan]).tobytes()
    _, cols = codec.decode(raw)
    assert cols["a"][0] == 1.0 and np.isnan(cols["a"][1])


def test_garbage_is_refused() -> None:
    with pytest.raises(ValueError):
        codec.decode(b"not ours")
