"""predq.client's batch methods against a real stack: upload a path, a file object or a
DataFrame, wait with progress, download in input order, read the errors, cancel, list."""

from __future__ import annotations

import asyncio
import gzip
import io
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from predq.client import AsyncClient, Client, JobFailed
from predq.demo import iris_sample_rows
from tests.client.test_client_e2e import local_model

pytestmark = pytest.mark.integration


def test_batch_from_a_path_a_file_object_and_a_dataframe(
        stack: Any, registry_with_models: Any, keys: dict[str, str], tmp_path: Path) -> None:
    s = stack(PREDQ_BATCH_CHUNK_ROWS="40")
    model = local_model(registry_with_models)
    frame = pd.DataFrame(iris_sample_rows(120, seed=2))
    csv_gz = tmp_path / "rows.csv.gz"
    with gzip.open(csv_gz, "wt") as f:
        frame.to_csv(f, index=False)
    seen: list[dict[str, Any]] = []
    with Client(s.base_url, keys["user"]) as c:
        b1 = c.batch("iris", csv_gz, output_format="parquet")
        b1.wait(timeout=120, progress=seen.append)
        with (tmp_path / "rows.jsonl").open("wb") as f:
            frame.to_json(f, orient="records", lines=True, double_precision=15)
        with (tmp_path / "rows.jsonl").open("rb") as f:
            b2 = c.batch("iris", f).wait(timeout=120)
        b3 = c.batch("iris", frame).wait(timeout=120)
        listed = [b.id for b in c.batches(limit=10)]
        for b, fmt in ((b1, "parquet"), (b3, "parquet")):
            dest = tmp_path / f"{b.id}.{fmt}"
            b.download(dest)
            out = pd.read_parquet(dest)
            assert list(out["row"]) == list(range(120))
            assert list(out["label"]) == list(model.predict(frame))
        buf = io.BytesIO()
        b2.download(buf)
        assert buf.getvalue().count(b"\n") == 120
        assert b1.errors() == [] and b1.info.counts.done == 120
    assert seen and seen[-1]["status"] == "succeeded"
    # the typed models know every field the server sends
    from predq.client import BatchInfo, FileInfo

    assert set(seen[-1]) <= set(BatchInfo.model_fields), set(seen[-1]) - set(
        BatchInfo.model_fields)
    with Client(s.base_url, keys["user"]) as c:
        info = c.upload(csv_gz)
    assert set(info.model_dump()) - set(FileInfo.model_fields) == set(info.model_extra or {})
    assert not info.model_extra, info.model_extra
    assert listed[:3] == [b3.id, b2.id, b1.id]


def test_batch_errors_cancel_and_async(stack: Any, keys: dict[str, str],
                                       tmp_path: Path) -> None:
    s = stack()
    frame = pd.DataFrame(iris_sample_rows(30)).astype(object)
    frame.loc[4, "sepal_width"] = "wide"
    src = tmp_path / "bad.csv"
    frame.to_csv(src, index=False)

    async def main() -> None:
        async with AsyncClient(s.base_url, keys["user"]) as c:
            b = await c.batch("iris", src)
            await b.wait(timeout=120)
            errors = await b.errors()
            assert [e["row"] for e in errors] == [4]
            assert b.info.counts.failed == 1 and b.info.counts.done == 29
            failing = await c.batch("iris", src, on_error="fail")
            with pytest.raises(JobFailed):
                await failing.wait(timeout=120)
            assert failing.status == "failed"

    asyncio.run(main())


def test_cancel_a_batch(stack: Any, keys: dict[str, str], tmp_path: Path) -> None:
    s = stack(workers=0)
    src = tmp_path / "rows.csv"
    pd.DataFrame(iris_sample_rows(10)).to_csv(src, index=False)
    with Client(s.base_url, keys["user"]) as c:
        b = c.batch("iris", src)
        assert b.cancel().status == "cancelled"
        with pytest.raises(JobFailed, match="cancelled"):
            b.wait(timeout=10)
