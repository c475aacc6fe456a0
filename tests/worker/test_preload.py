"""Workers load the models they serve before the pool forks (a fast first job)."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.integration


def test_served_models_are_preloaded(registry_with_models: Any, start_worker: Any) -> None:
    worker = start_worker(1)
    log = worker.tail(200)
    assert "preloaded model iris v1" in log
    assert "preloaded model mixed v1" in log
    # The runtime is built with the model, in the parent, before the fork: iris (a forest)
    # on treelite, mixed (a LogisticRegression pipeline) on the estimator itself.
    assert "model iris v1 runs on treelite" in log
    assert log.index("model iris v1 runs on treelite") < log.index("preloaded model iris v1")
    assert "model mixed v1 runs on" not in log


def test_preloading_can_be_turned_off(registry_with_models: Any, start_worker: Any) -> None:
    worker = start_worker(1, extra_env={"PREDQ_PRELOAD_MODELS": "false"})
    assert "preloaded model" not in worker.tail(200)
