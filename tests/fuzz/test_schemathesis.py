"""Schemathesis against the live OpenAPI document of a real stack (uvicorn, worker, Redis).

Every operation the document lists (the generic routes and each registered model's own
``/jobs`` and ``/predict``) gets schema-valid and schema-breaking requests, sent with a user
key, with the admin key, and with no key. Every response must be no 5xx, carry a status code
and content type the document declares for that operation, and match the declared schema.

Bounded for CI: ``PREDQ_FUZZ_EXAMPLES`` examples per operation and mode (default 40), waits
capped at 1 s (``PREDQ_MAX_WAIT_S=1``), a fixed seed so a failure replays.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]

EXAMPLES = int(os.environ.get("PREDQ_FUZZ_EXAMPLES", "40"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
FUZZ_ENV = {"PREDQ_MAX_WAIT_S": "1", "PREDQ_SYNC_WAIT_S": "1", "PREDQ_LOG_LEVEL": "WARNING"}


def fuzz_operation(operation: Any, base_url: str, headers: dict[str, str],
                   session: Any) -> list[str]:
    """Run both generation modes against one operation; the failure reports, if any."""
    failures: list[str] = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        @seed(20261126)
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            # Generated headers may not carry our Authorization: it is set last, per run.
            merged = {**(case.headers or {}), **headers}
            if not headers:
                merged.pop("Authorization", None)
            case.headers = merged
            case.call_and_validate(base_url=base_url, session=session, checks=CHECKS)

        try:
            run()
        except Unsatisfiable:  # nothing to break (no parameters, no body): nothing to send
            continue
        except (Exception, FailureGroup) as e:  # failed checks, or a transport error
            failures.append(f"{operation.label} [{mode.value}]:\n{e}")
    return failures


@pytest.mark.parametrize("who", ["user", "admin", "anonymous"])
def test_every_operation_conforms_to_the_live_schema(stack: Any, keys: dict[str, str],
                                                     who: str) -> None:
    import requests

    s = stack(**FUZZ_ENV)
    headers = {} if who == "anonymous" else {"Authorization": f"Bearer {keys[who]}"}
    # One real job to read and cancel, so /v1/jobs/{job_id} is not only ever a 404.
    with httpx.Client(base_url=s.base_url, headers=s.headers, timeout=30) as c:
        assert c.post("/v1/models/iris/jobs", json={"inputs": [
            {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4,
             "petal_width": 0.2}]}).status_code == 202
    schema = schemathesis.openapi.from_url(f"{s.base_url}/openapi.json", timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/models/iris/jobs", "POST /v1/models/mixed/predict",
            "GET /v1/jobs/{job_id}", "GET /v1/models"} <= labels, labels
    failures: list[str] = []
    with requests.Session() as session:
        for operation in operations:
            failures += fuzz_operation(operation, s.base_url, headers, session)
    assert not failures, "\n\n".join(failures)
    assert all(w.alive() for w in s.workers), "a worker died under the fuzz"
