"""The static checks run with the tests, so that README's test command and CI enforce them.

``ruff check .`` (the rules in pyproject.toml) and ``mypy`` (pyproject's [tool.mypy]: the
pydantic plugin, strict on shared/, the default checks on api/, worker/ and predq/). mypy
keeps its cache in .mypy_cache, so a run after a small change takes seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = BIN / name
    return str(found) if found.exists() else (shutil.which(name) or name)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    result = _run(_tool("ruff"), "check", "--no-fix", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)  # a cold cache (a clean clone) takes a minute on a busy machine
def test_mypy_is_clean() -> None:
    # The packages and the per-module strictness come from pyproject.toml.
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_shared_is_checked_strictly() -> None:
    """The override that makes shared/ strict is there and names every flag --strict sets."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert "pydantic.mypy" in config["plugins"]
    (shared,) = [o for o in config["overrides"] if "predq.shared.*" in o["module"]]
    strict_flags = {"disallow_any_generics", "disallow_subclassing_any",
                    "disallow_untyped_calls", "disallow_untyped_defs",
                    "disallow_incomplete_defs", "check_untyped_defs",
                    "disallow_untyped_decorators", "warn_return_any", "strict_equality",
                    "extra_checks", "warn_unused_ignores"}
    assert {k for k, v in shared.items() if v is True} >= strict_flags
    assert shared["implicit_reexport"] is False
    assert config["warn_redundant_casts"] is True
