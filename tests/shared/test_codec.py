import numpy as np
import pytest

from shared import codec


def test_round_trip_keeps_types_and_order() -> None:
    raw = codec.encode(3, [("a", "number", [1.5, -2.0, 1e300]), ("b", "integer", [1, 2, 3]),
                           ("c", "boolean", [True, False, True]), ("d", "string", ["x", "é", ""])])
    n, cols = codec.decode(raw)
    assert n == 3
    assert cols["a"].tolist() == [1.5, -2.0, 1e300]
    assert cols["b"].dtype == np.int64 and cols["b"].tolist() == [1, 2, 3]
    assert cols["c"].tolist() == [True, False, True]
    assert cols["d"].tolist() == ["x", "é", ""]


def test_missing_values_become_nan() -> None:
    _, cols = codec.decode(codec.encode(2, [("a", "integer", [1, None])]))
    assert cols["a"][0] == 1 and np.isnan(cols["a"][1])


def test_garbage_is_refused() -> None:
    with pytest.raises(ValueError):
        codec.decode(b"not ours")
