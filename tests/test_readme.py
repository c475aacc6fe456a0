"""README.md stays true: its settings table is the Settings class, and its commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from sync_readme import README, render  # noqa: E402

from shared.settings import Settings  # noqa: E402


def test_settings_table_is_current() -> None:
    text = README.read_text()
    assert render(text) == text, "run: .venv/bin/python scripts/sync_readme.py"


def test_every_setting_is_documented() -> None:
    text = README.read_text()
    missing = [n for n in Settings.model_fields if f"PREDQ_{n.upper()}" not in text]
    assert not missing


def test_every_predq_command_in_the_readme_exists() -> None:
    blocks = "\n".join(re.findall(r"```(?:bash|sh|console)\n(.*?)```", README.read_text(), re.S))
    commands = set(re.findall(r"^\s*(?:\$ )?predq ([a-z]+)(?: ([a-z]+))?", blocks, re.M))
    assert commands
    for cmd, sub in commands:
        args = [cmd, sub] if cmd == "models" and sub else [cmd]
        subprocess.run([sys.executable, "-m", "predq", *args, "--help"], check=True,
                       capture_output=True, timeout=60)
