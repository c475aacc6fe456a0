"""``predq keys create`` and the development key of ``predq up``: a key is shown once and
only its sha256 is ever configured."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from predq.api.security.apikeys import KeyRing, hash_key
from predq.cli import main
from predq.keys_cmd import DEV_KEY_NAME, dev_api_key
from predq.procs_cmd import demo_curl
from predq.shared.settings import ALL_SCOPES, Settings, get_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("PREDQ_")]:
        monkeypatch.delenv(name)
    # Recorded now, so that whatever dev_api_key() writes is undone after the test.
    monkeypatch.setenv("PREDQ_API_KEYS", "[]")
    monkeypatch.delenv("PREDQ_API_KEYS")
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    get_settings.cache_clear()


def _key_and_entry(output: str) -> tuple[str, dict[str, object]]:
    key = next(w for w in output.split() if w.startswith("pq_"))
    entry = json.loads(next(line.strip() for line in output.splitlines()
                            if line.strip().startswith('{"name"')))
    return key, entry


def test_create_prints_the_key_once_and_an_entry_holding_only_its_hash() -> None:
    result = CliRunner().invoke(main, ["keys", "create", "--name", "ci",
                                       "--scopes", "jobs:write,jobs:read", "--scopes", "admin"])
    assert result.exit_code == 0, result.output
    key, entry = _key_and_entry(result.output)
    assert entry == {"name": "ci", "sha256": hash_key(key),
                     "scopes": ["jobs:write", "jobs:read", "admin"]}
    assert key not in json.dumps(entry)
    # The entry configures a key ring that knows the key, with exactly those scopes.
    ring = KeyRing(Settings(api_keys=[entry]))
    principal = ring.authenticate(key)
    assert principal is not None and principal.name == "ci"
    assert principal.scopes == {"jobs:write", "jobs:read", "admin"}
    assert ring.authenticate(key + "x") is None


def test_default_scopes_and_entry_only() -> None:
    result = CliRunner().invoke(main, ["keys", "create", "--name", "app", "--entry-only"])
    assert result.exit_code == 0
    entry = json.loads(result.stdout)
    assert entry["scopes"] == ["jobs:write", "jobs:read", "models:read"]
    assert "pq_" in result.stderr and "pq_" not in result.stdout


@pytest.mark.parametrize("args", [["--name", "has space"], ["--name", "x", "--scopes", "root"],
                                  ["--name", "x" * 65]])
def test_bad_names_and_scopes_are_refused(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["keys", "create", *args])
    assert result.exit_code == 2 and "pq_" not in result.output


def test_up_makes_a_dev_key_for_its_children(monkeypatch: pytest.MonkeyPatch) -> None:
    key = dev_api_key()
    assert key is not None and key.startswith("pq_")
    import os

    configured = os.environ["PREDQ_API_KEYS"]  # what the children inherit
    assert key not in configured
    [spec] = json.loads(configured)
    assert spec == {"name": DEV_KEY_NAME, "sha256": hash_key(key), "scopes": list(ALL_SCOPES)}
    assert KeyRing(get_settings()).authenticate(key) is not None
    # The printed curl commands carry it.
    curl = demo_curl("http://127.0.0.1:8000", key)
    assert f"Authorization: Bearer {key}" in curl.submit
    assert f"Authorization: Bearer {key}" in curl.fetch


def test_up_uses_configured_keys_and_prints_none(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = json.dumps([{"name": "ops", "sha256": "a" * 64, "scopes": ["admin"]}])
    monkeypatch.setenv("PREDQ_API_KEYS", mine)
    assert dev_api_key() is None
    import os

    assert os.environ["PREDQ_API_KEYS"] == mine


def test_up_without_auth_makes_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDQ_AUTH_ENABLED", "false")
    assert dev_api_key() is None
    import os

    assert "PREDQ_API_KEYS" not in os.environ
