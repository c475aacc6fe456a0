"""The API documentation a new user opens first: /docs and /redoc work offline, and the
OpenAPI examples are rows the API accepts and the model predicts on.

The browser test runs Debian's headless ``chromium`` against a real uvicorn with every host
but 127.0.0.1 unresolvable and a dead proxy, so a page that needs a CDN stays blank. It skips,
saying why, when no chromium is installed (``scripts/test`` installs it as root, so CI runs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from predq.api.docs import ASSETS_URL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH (apt-get install chromium; scripts/test does it as root)",
)


def render(url: str, tmp_path: Path, budget_ms: int = 20000) -> str:
    """The DOM of ``url`` after its scripts ran, in headless Chromium with no network."""
    assert CHROMIUM is not None
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--no-first-run", "--disable-extensions",
        "--metrics-recording-only", "--disable-domain-reliability",
        # No network: every name but 127.0.0.1 fails to resolve, and any proxied request
        # goes to a closed port.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--virtual-time-budget={budget_ms}", "--dump-dom", url,
    ]
    done = subprocess.run(argv, capture_output=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode(errors="replace")


@needs_chromium
def test_docs_and_redoc_render_without_network(
        registry_with_models: Any, start_api: Callable[..., str], tmp_path: Path) -> None:
    base = start_api(extra_env={"PREDQ_AUTH_ENABLED": "false"})
    page = httpx.get(f"{base}/docs", timeout=10).text
    # Every script and style sheet is ours: no CDN.
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page)
    assert assets and all(a.startswith(ASSETS_URL) or a == "/openapi.json" for a in assets), \
        assets
    for asset in assets:
        assert httpx.get(f"{base}{asset}", timeout=10).status_code == 200, asset

    dom = render(f"{base}/docs", tmp_path)
    # Swagger UI rendered the document: its operations, including the per-model ones.
    assert 'class="swagger-ui' in dom, dom[-2000:]
    assert "opblock" in dom, dom[-2000:]
    for path in ("/v1/models/iris/predict", "/v1/models/mixed/jobs", "/v1/jobs/{job_id}"):
        assert path in dom.replace("\u200b", ""), path

    redoc = render(f"{base}/redoc", tmp_path)
    assert "/v1/models/iris/predict" in redoc.replace("\u200b", ""), redoc[-2000:]


def test_openapi_examples_are_accepted_and_outputs_are_documented(
        stack: Callable[..., Any]) -> None:
    s = stack()
    with httpx.Client(base_url=s.base_url, headers=s.headers, timeout=60) as c:
        doc = c.get("/openapi.json").json()
        schemas = doc["components"]["schemas"]
        models = [m["name"] for m in c.get("/v1/models").json()]
        assert set(models) == {"iris", "mixed"}
        for name in models:
            predict = doc["paths"][f"/v1/models/{name}/predict"]["post"]
            body = predict["requestBody"]["content"]["application/json"]
            example = body["example"]
            # iris was pushed with a sample: its example is real measurements, not zeros.
            if name == "iris":
                assert all(v > 0 for v in example["inputs"][0].values()), example

            # The 200 answer is this model's output rows.
            ok = predict["responses"]["200"]["content"]["application/json"]
            result = schemas[ok["schema"]["$ref"].rsplit("/", 1)[1]]
            out_ref = result["properties"]["outputs"]["items"]["$ref"]
            output = schemas[out_ref.rsplit("/", 1)[1]]
            assert out_ref.endswith("_Output") and output["required"]
            assert set(ok["example"]["outputs"][0]) == set(output["properties"])

            answer = c.post(f"/v1/models/{name}/predict", json=example, params={"wait": 30})
            assert answer.status_code == 200, answer.text
            got = answer.json()
            assert set(got) == set(result["required"])
            assert set(got["outputs"][0]) == set(output["required"])
            label = output["properties"].get("label", {})
            if "enum" in label:
                assert got["outputs"][0]["label"] in label["enum"]

            jobs = doc["paths"][f"/v1/models/{name}/jobs"]["post"]
            accepted = jobs["responses"]["202"]["content"]["application/json"]["example"]
            assert accepted["model"] == name and accepted["links"]["self"].startswith("/v1/jobs/")
            job_example = jobs["requestBody"]["content"]["application/json"]["example"]
            submitted = c.post(f"/v1/models/{name}/jobs", json=job_example)
            assert submitted.status_code == 202, submitted.text
            job = c.get(f"/v1/jobs/{submitted.json()['id']}", params={"wait": 30}).json()
            assert job["status"] == "succeeded", job

        # The generic {name} route's examples come from a registered model too.
        generic = doc["paths"]["/v1/models/{name}/predict"]["post"]
        name = next(p["example"] for p in generic["parameters"] if p["name"] == "name")
        example = generic["requestBody"]["content"]["application/json"]["example"]
        answer = c.post(f"/v1/models/{name}/predict", json=example, params={"wait": 30})
        assert answer.status_code == 200, answer.text
        assert "additionalProp1" not in str(
            generic["responses"]["200"]["content"]["application/json"]["example"])
