"""Any body the JSON parser accepts gets a 2xx or a 4xx problem+json: fuzzed with arbitrary JSON
values in every free-form field (issue 13, "Requests the server must answer").

:data:`JSON_VALUES` draws any JSON value and then some: integers of any size (the 64-bit
edges and far beyond), every float including NaN, ±Infinity and -0.0 (written as the non-JSON
tokens ``NaN``/``Infinity`` a careless client sends), strings with lone surrogates (written as
``\\udb5a`` escapes, or as their raw CESU-8 bytes, which are not UTF-8), unicode, and objects
and arrays deep (past ``PREDQ_MAX_JSON_DEPTH`` too) and wide. Such values go into every field
a client writes freely: ``metadata``, a string feature, ``version``, ``cancel_after``,
``webhook`` (and its ``url`` and ``events``), unknown top-level members, and the
``Idempotency-Key`` header (any bytes a header can carry). Every answer must be:

- a 2xx (202 for ``/jobs``; 200 or 202 for ``/predict``), and then the job's stored
  ``metadata`` is exactly what was sent (nothing changed silently: no NaN turned ``null``);
- or a 4xx ``application/problem+json`` whose ``status`` is the response's;
- never a 5xx, never a dropped connection.

Two runs: through the real app over ASGI (many examples, fast), and through a real uvicorn
(fewer), where the raw bytes of each body go over a plain socket (:mod:`tests.helpers.rawhttp`).
The generated examples must include accepted ones *and* refused ones, or the run proves
nothing (checked at the end of each run).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from predq.demo import iris_sample_rows, mixed_sample_rows
from predq.push import push_model

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]

EXAMPLES = int(os.environ.get("PREDQ_FUZZ_EXAMPLES", "40"))
LONE_SURROGATES = ["\udb5a", "\udc00", "x\ud800y", "\udfff\udfff", "\ud83d"]
INT_EDGES = [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**30, -(10**30)]

def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each drawn with its weight. (``st.one_of`` flattens nested
    one_ofs into one uniform choice, which would make the rare values rare again.)"""
    total = sum(w for w, _ in choices)

    def pick(n: int) -> st.SearchStrategy[Any]:
        for w, strategy in choices:
            if n < w:
                return strategy
            n -= w
        raise AssertionError(n)

    return st.integers(0, total - 1).flatmap(pick)


#: The values a store or an encoder trips on, drawn often (plain strategies reach them rarely).
SPECIALS = st.sampled_from([10**30, math.nan, "\udb5a", 2**64, math.inf, -(2**63) - 1,
                            -math.inf, *INT_EDGES, -0.0, 5e-324, 1.7976931348623157e308,
                            *LONE_SURROGATES, "", "\x00", "\u2028"])
SCALARS = weighted(
    (2, SPECIALS),
    (3, st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(2**80), 2**80),
                  st.floats(),  # NaN, ±Infinity, -0.0, subnormals
                  st.text(st.characters(exclude_categories=()), max_size=20))),  # surrogates
)
KEYS = st.one_of(st.text(st.characters(exclude_categories=()), max_size=10),
                 st.sampled_from(["version", "url", "inputs", *LONE_SURROGATES]))


def _nest(depth: int) -> Any:
    value: Any = 0
    for i in range(depth):
        value = [value] if i % 2 else {"d": value}
    return value


_TREES = st.recursive(SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=6), st.dictionaries(KEYS, children, max_size=6)),
    max_leaves=30)
JSON_VALUES = weighted(
    (2, SCALARS), (4, _TREES),
    (1, st.integers(1, 60).map(_nest)),  # deep: past the depth limit (32) as well
    (1, st.one_of(st.integers(0, 3000).map(lambda n: {f"k{i}": i for i in range(n)}),  # wide
                  st.integers(0, 3000).map(lambda n: list(range(n))))),
)

#: A header value as it can reach the app: any bytes but CR, LF and NUL.
HEADER_BYTES = st.binary(min_size=0, max_size=300).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b""))

#: Keys a client is allowed to send (most of the time: so the body is what gets tested).
PRINTABLE_KEYS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1,
                         max_size=40).map(str.encode)

STRING_FEATURE = next(k for k, v in mixed_sample_rows(1)[0].items() if isinstance(v, str))


@dataclass(frozen=True)
class Req:
    """One generated request, and what an accepted answer must then show."""

    model: str
    path: str
    raw: bytes
    headers: dict[str, bytes]
    metadata: Any = None  # what the body's metadata was (when it had one)
    has_metadata: bool = False
    version: Any = None  # what the body's version was (None: the default)


#: The version each name resolves to, per model (iris: versions 1 and 2, alias production).
RESOLVES = {"iris": {None: "1", "1": "1", "production": "1", "2": "2"},
            "mixed": {None: "1", "1": "1"}}
#: Top-level keys sometimes written with an escape: the same key to any JSON parser.
ESCAPED = {b'"version"': b'"\\u0076ersion"', b'"metadata"': b'"\\u006detadata"',
           b'"inputs"': b'"\\u0069nputs"', b'"webhook"': b'"webhoo\\u006b"'}


@st.composite
def requests(draw: st.DrawFn) -> Req:
    """One field (sometimes two) gets an arbitrary value; the rest of the body is valid, so
    that the hostile value is what the server has to deal with (not refused for another
    reason). Sometimes the member names themselves are escaped."""
    model = draw(st.sampled_from(["iris", "mixed"]))
    row = dict((iris_sample_rows if model == "iris" else mixed_sample_rows)(1)[0])
    body: dict[str, Any] = {"inputs": [row]}
    fields = draw(st.lists(st.sampled_from(
        ["metadata", "metadata", "metadata", "version", "version", "feature", "cancel_after",
         "webhook", "webhook_url", "extra"]), min_size=1, max_size=2))
    webhook = "webhook" in fields or "webhook_url" in fields
    route = "jobs" if webhook else draw(st.sampled_from(["jobs", "predict?wait=0"]))
    if "metadata" in fields:
        special = st.builds(lambda k, v, rest: {**rest, k: v}, KEYS,
                            st.one_of(SPECIALS, st.lists(SPECIALS, min_size=1, max_size=3)),
                            st.dictionaries(KEYS, JSON_VALUES, max_size=3))
        body["metadata"] = draw(weighted(
            (3, special), (2, st.dictionaries(KEYS, JSON_VALUES, max_size=5)),
            (1, JSON_VALUES)))
    elif draw(st.booleans()):
        body["metadata"] = {"note": draw(SCALARS)}
    if "feature" in fields and model == "mixed":
        row[STRING_FEATURE] = draw(JSON_VALUES)
    if "version" in fields:
        body["version"] = draw(weighted((2, st.sampled_from(["2", "9", "production", "1"])),
                                        (1, JSON_VALUES)))
    if "cancel_after" in fields:
        body["cancel_after"] = draw(JSON_VALUES)
    if "webhook" in fields:
        body["webhook"] = draw(JSON_VALUES)
    elif "webhook_url" in fields:
        body["webhook"] = {"url": draw(st.one_of(
            st.text(st.characters(exclude_categories=()), max_size=40).map(
                lambda t: "https://example.com/" + t), JSON_VALUES)),
            "events": draw(st.one_of(st.just(["job.completed"]), JSON_VALUES))}
    if "extra" in fields:
        body[draw(KEYS)] = draw(JSON_VALUES)
    if draw(st.integers(0, 3)) == 0:  # the surrogates' own bytes: not UTF-8, so not JSON
        raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    else:  # \\uXXXX escapes, and NaN/Infinity tokens
        raw = json.dumps(body).encode()
    for plain in [k for k in sorted(ESCAPED) if draw(st.booleans())]:
        raw = raw.replace(b"{" + plain + b":", b"{" + ESCAPED[plain] + b":", 1).replace(
            b", " + plain + b":", b", " + ESCAPED[plain] + b":", 1)
    headers = {}
    if draw(st.booleans()):
        headers["idempotency-key"] = draw(weighted(
            (1, st.sampled_from([b"k1", b"k2", b"k" * 255, b"k" * 256])),
            (3, PRINTABLE_KEYS), (1, HEADER_BYTES)))
    return Req(model, f"/v1/models/{model}/{route}", raw, headers, body.get("metadata"),
               "metadata" in body, body.get("version"))


def _same(a: Any, b: Any) -> bool:
    """JSON equality (NaN never equals: it must never have been accepted)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return False
    return bool(a == b)


def check_answer(req: Req, status: int, headers: dict[str, str], content: bytes,
                 get_job: Callable[[str], dict[str, Any]], tally: Counter[str]) -> None:
    """Assert the contract on one answer (see the module docstring)."""
    assert status < 500, (status, content[:500], req.raw[:300])
    if status >= 400:
        assert headers.get("content-type") == "application/problem+json", (status, headers)
        problem = json.loads(content)
        assert problem["status"] == status and problem["title"] and problem["detail"], problem
        if status == 404:  # only a version that does not exist may be "not found" here
            assert req.version not in RESOLVES[req.model], (problem, req.raw[:300])
        tally[f"{status}"] += 1
        return
    allowed = {202} if req.path.endswith("/jobs") else {200, 202}
    assert status in allowed, (status, content[:300])
    tally["accepted"] += 1
    answer = json.loads(content)
    job = get_job(answer.get("id") or answer["job_id"])
    # The job is the one this body asked for: the version it names (however its key is
    # spelled), its metadata exactly as sent. (A replay is the job an identical earlier
    # request made; its own values were checked then.)
    assert job["model"] == req.model, (job, req.raw[:300])
    if not headers.get("idempotent-replayed"):
        assert job["version"] == RESOLVES[req.model].get(req.version), (job, req.raw[:300])
        if req.has_metadata:
            assert _same(job["metadata"], req.metadata), (job["metadata"], req.metadata)


def assert_both_outcomes(tally: Counter[str], at_least: int) -> None:
    """The run generated bodies that were accepted and bodies that were refused."""
    refused = sum(n for k, n in tally.items() if k != "accepted")
    assert tally["accepted"] >= at_least and refused >= at_least, dict(tally)


@pytest.fixture
def app_client(registry_with_models: Any, settings_env: dict[str, str]
               ) -> Iterator[Callable[..., Any]]:
    """``call(method, path, **kw)``: the real app (lifespan running) over httpx's ASGI
    transport, on an event loop of its own (Hypothesis drives a sync test), a real Redis."""
    import asyncio

    import httpx

    from predq.api.app import create_app
    from predq.shared.settings import Settings

    m = registry_with_models.resolve("iris", "1")
    push_model(registry_with_models, registry_with_models.artifact_path(m), "iris")  # a version 2
    app = create_app(Settings(auth_enabled=False))
    loop = asyncio.new_event_loop()
    lifespan = app.router.lifespan_context(app)
    loop.run_until_complete(lifespan.__aenter__())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")

    def call(method: str, path: str, **kw: Any) -> Any:
        return loop.run_until_complete(client.request(method, path, **kw))

    try:
        yield call
    finally:
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(lifespan.__aexit__(None, None, None))
        loop.close()


def test_arbitrary_json_in_free_form_fields_asgi(app_client: Callable[..., Any]) -> None:
    tally: Counter[str] = Counter()

    @seed(20261201)
    @settings(max_examples=max(250, EXAMPLES * 6), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(req=requests())
    def run(req: Req) -> None:
        r = app_client("POST", req.path, content=req.raw,
                       headers={"content-type": "application/json", **req.headers})
        check_answer(req, r.status_code, dict(r.headers), r.content,
                     lambda job_id: app_client("GET", f"/v1/jobs/{job_id}").json(), tally)

    run()
    assert_both_outcomes(tally, 10)


def test_arbitrary_json_in_free_form_fields_uvicorn(
        registry_with_models: Any, keys: dict[str, str], start_api: Callable[..., str]
) -> None:
    """The same requests, as raw bytes over a plain socket, to a real uvicorn."""
    import httpx

    from tests.helpers.rawhttp import stream_request

    m = registry_with_models.resolve("iris", "1")
    push_model(registry_with_models, registry_with_models.artifact_path(m), "iris")  # a version 2
    base = start_api()
    auth = {"Authorization": f"Bearer {keys['user']}"}
    tally: Counter[str] = Counter()

    @seed(20261202)
    @settings(max_examples=max(80, EXAMPLES * 2), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(req=requests())
    def run(req: Req) -> None:
        # What an HTTP server lets through to any app: no control characters (uvicorn's
        # parser refuses those itself, with a plain-text 400).
        headers = {**auth, "Content-Type": "application/json",
                   **{k: bytes(c for c in v if c >= 0x20 and c != 0x7f).decode("latin-1")
                      for k, v in req.headers.items()}}
        answer = stream_request(base, "POST", req.path, headers, [req.raw],
                                content_length=len(req.raw), timeout=30)
        check_answer(req, answer.status, answer.headers, answer.body,
                     lambda job_id: httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth,
                                              timeout=10, trust_env=False).json(), tally)

    run()
    assert_both_outcomes(tally, 3)
