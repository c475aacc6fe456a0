"""Outputs right for any legal model, through the real API and a real worker: class names
with format directives, quotes, backslashes, unicode and 300 characters round-trip exactly,
and a binary HistGradientBoosting at p = 0.5 gets the label its own ``predict`` gives."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from predq.push import push_model
from predq.shared.registry.store import Registry
from tests.worker.test_outputs import NASTY_CLASSES, tied_hgb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _run(s: Any, model: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    with httpx.Client(base_url=s.base_url, headers=s.headers, timeout=60) as c:
        r = c.post(f"/v1/models/{model}/jobs", json={"inputs": rows})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 60
        for _ in range(100):
            job = c.get(f"/v1/jobs/{job_id}", params={"wait": 10}).json()
            if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
                return dict(job)
        return dict(job)


def test_nasty_class_names_and_tied_labels_end_to_end(
        stack: Any, registry_with_models: Registry, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.normal(size=(len(NASTY_CLASSES) * 10, 2)), columns=["a", "b"])
    nasty = LogisticRegression(max_iter=300).fit(x, np.array(NASTY_CLASSES * 10, dtype=object))
    joblib.dump(nasty, tmp_path / "nasty.joblib")
    push_model(registry_with_models, tmp_path / "nasty.joblib", "nasty")
    tied, tx = tied_hgb()
    joblib.dump(tied, tmp_path / "tied.joblib")
    push_model(registry_with_models, tmp_path / "tied.joblib", "tied")
    s = stack(workers=1, concurrency=1)

    rows = x.iloc[:25].to_dict("records")
    job = _run(s, "nasty", rows)
    assert job["status"] == "succeeded", job
    assert [o["label"] for o in job["outputs"]] == nasty.predict(x.iloc[:25]).tolist()
    for out, p in zip(job["outputs"], nasty.predict_proba(x.iloc[:25]), strict=True):
        assert list(out["probabilities"]) == list(nasty.classes_)
        assert list(out["probabilities"].values()) == p.tolist()

    job = _run(s, "tied", [{"a": float(v)} for v in tx["a"][:5]])
    assert job["status"] == "succeeded", job
    assert [o["label"] for o in job["outputs"]] == ["yes"] * 5  # predict's, not argmax's
    assert all(o["probabilities"] == {"no": 0.5, "yes": 0.5} for o in job["outputs"])
