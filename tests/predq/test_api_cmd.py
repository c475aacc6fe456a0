"""`predq api` refuses to serve without authentication beyond loopback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from predq.cli import main
from predq.shared.settings import get_settings


def test_open_api_on_a_public_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDQ_AUTH_ENABLED", "false")
    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["api", "--host", "0.0.0.0", "--port", "8999"])
    get_settings.cache_clear()
    assert result.exit_code != 0
    assert "refusing to serve without authentication" in result.output
