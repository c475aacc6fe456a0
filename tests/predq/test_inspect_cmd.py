"""``predq models inspect``: the serialization table and runtime latencies, measured."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import pandas as pd
import pytest
from click.testing import CliRunner

from predq.cli import main
from predq.demo import mixed_sample_rows, train_demo_model, train_mixed_pipeline


@pytest.mark.parametrize("kind", ["forest", "pipeline"])
def test_inspect_measures_every_format_and_runtime(kind: str, tmp_path: Path) -> None:
    model = train_demo_model() if kind == "forest" else train_mixed_pipeline()
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    args = ["models", "inspect", str(path), "--json"]
    if kind == "pipeline":
        sample = tmp_path / "sample.csv"
        pd.DataFrame(mixed_sample_rows(50)).to_csv(sample, index=False)
        args += ["--sample", str(sample)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    formats = {f["format"]: f for f in report["formats"]}
    assert {"pickle", "joblib", "joblib zlib-3", "joblib lz4", "skops"} <= set(formats)
    for name in ("pickle", "joblib", "joblib zlib-3"):
        f = formats[name]
        assert f["bytes"] > 0 and f["dump_ms"] >= 0 and f["load_ms"] >= 0
    assert formats["pickle"]["shared_between_processes"] is False
    assert formats["joblib zlib-3"]["shared_between_processes"] is False
    if kind == "forest":  # a forest's node arrays are memory-mapped, so shared
        assert formats["joblib"]["shared_between_processes"] is True
        assert formats["joblib zlib-3"]["bytes"] < formats["joblib"]["bytes"]
    sk = next(r for r in report["runtimes"] if r["runtime"] == "sklearn")
    assert set(sk["latency_ms"]) == {"1", "10", "100", "1000"}
    assert report["recommendation"]["store"] == "joblib"
    assert report["recommendation"]["run"] in {r["runtime"] for r in report["runtimes"]}

    text = CliRunner().invoke(main, [a for a in args if a != "--json"])
    assert text.exit_code == 0, text.output
    assert "predq would store: joblib" in text.output and "1000 rows" in text.output
