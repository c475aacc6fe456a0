"""The bodies of issue 13's report, as raw bytes over a plain socket to a real uvicorn: each
gets a complete 4xx problem+json answer (never a 500, never a reset connection).

(tests/api/test_hostile_json.py has the same cases and more through the ASGI app, and
tests/fuzz/test_hostile_json.py fuzzes the class.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers.rawhttp import stream_request

ROW = b'{"sepal_length":1,"sepal_width":1,"petal_length":1,"petal_width":1}'
CASES = {
    "integer beyond 64 bits": (b'{"inputs":[%s],"metadata":{"k":123456789012345678901234567890}}'
                               % ROW, 422),
    "NaN in metadata": (b'{"inputs":[%s],"metadata":{"k":NaN}}' % ROW, 422),
    "lone surrogate, escaped": (b'{"inputs":[%s],"metadata":{"k":"\\udb5a"}}' % ROW, 400),
    "lone surrogate with a version": (b'{"inputs":[%s],"version":"1","metadata":{"k":"\\udb5a"}}'
                                      % ROW, 400),
    "lone surrogate, raw bytes": (b'{"inputs":[%s],"metadata":{"k":"\xed\xad\x9a"}}' % ROW, 400),
    "not UTF-8": (b'{"inputs":[%s],"metadata":{"k":"\xff"}}' % ROW, 400),
    "escaped version key": (b'{"inputs":[%s],"\\u0076ersion":"999"}' % ROW, 404),
}


@pytest.mark.parametrize("route", ["jobs", "predict"])
def test_hostile_bodies_get_a_4xx_problem_from_uvicorn(
        start_api: Any, registry_with_models: Any, keys: dict[str, str], route: str) -> None:
    base = start_api()
    headers = {"Authorization": f"Bearer {keys['user']}", "Content-Type": "application/json"}
    got = {}
    for name, (body, _) in CASES.items():
        answer = stream_request(base, "POST", f"/v1/models/iris/{route}", headers, [body],
                                content_length=len(body), timeout=20)
        assert answer.headers.get("content-type") == "application/problem+json", (name, answer)
        problem = json.loads(answer.body)
        assert problem["status"] == answer.status and problem["detail"], (name, problem)
        got[name] = answer.status
    assert got == {name: status for name, (_, status) in CASES.items()}
