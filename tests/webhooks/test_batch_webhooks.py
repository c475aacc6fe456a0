"""Batch webhooks (issue 12): batch.completed / batch.failed, signed as job webhooks are, with
``data`` being the batch as GET returns it; the delivery log shows on the batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from predq.demo import iris_sample_rows


@pytest.fixture
def files_root(webhook_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> Path:
    root = tmp_path / "files"
    webhook_env["PREDQ_FILES_ROOT"] = str(root)
    monkeypatch.setenv("PREDQ_FILES_ROOT", str(root))
    return root


def test_batch_completed_and_failed_are_signed_and_carry_the_batch(
        receiver: Any, keys: dict[str, str], registry_with_models: Any, files_root: Path,
        start_worker: Callable[..., Any], start_api: Callable[..., str]) -> None:
    start_worker(2)
    base = start_api()
    with httpx.Client(base_url=base, timeout=30,
                      headers={"Authorization": f"Bearer {keys['user']}"}) as c:
        df = pd.DataFrame(iris_sample_rows(300))
        fid = c.post("/v1/files", content=df.to_csv(index=False).encode(),
                     headers={"Content-Type": "text/csv"}).json()["id"]
        bad = df.copy()
        bad.loc[5, "sepal_width"] = -1e39
        bad_id = c.post("/v1/files", content=bad.to_csv(index=False).encode(),
                        headers={"Content-Type": "text/csv"}).json()["id"]
        ok = c.post("/v1/models/iris/batches", json={
            "file_id": fid, "webhook": {"url": receiver.hook("ok")}})
        assert ok.status_code == 202, ok.text
        failed = c.post("/v1/models/iris/batches", json={
            "file_id": bad_id, "on_error": "fail", "webhook": {"url": receiver.hook("ok")}})
        assert failed.status_code == 202, failed.text
        log = receiver.wait_for(lambda entries: len(entries) >= 2)
        by_type = {e["body"]["type"]: e for e in log}
        assert set(by_type) == {"batch.completed", "batch.failed"}, log
        for e in log:
            assert e["verified"], e
        done = by_type["batch.completed"]["body"]["data"]
        assert done["id"] == ok.json()["id"] and done["status"] == "succeeded"
        assert done["counts"] == {"total": 300, "done": 300, "failed": 0}
        assert done["output_file_id"]
        fail = by_type["batch.failed"]["body"]["data"]
        assert fail["id"] == failed.json()["id"] and fail["status"] == "failed"
        assert fail["error"]["type"] == "InvalidRows"
        deadline = time.monotonic() + 30
        while True:  # the delivery log shows on the batch once recorded
            hook = c.get(f"/v1/batches/{ok.json()['id']}").json()["webhook"]
            if hook["state"] == "delivered" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert hook["state"] == "delivered" and hook["attempts"][0]["status_code"] == 200
