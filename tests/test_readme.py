"""README.md stays true: its settings table is the Settings class, and its commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from sync_readme import README, render  # noqa: E402

from predq.shared.settings import Settings  # noqa: E402


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


def test_every_relative_link_and_image_exists() -> None:
    targets = re.findall(r"!?\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    relative = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert "docs/img/flower-tasks.png" in relative
    assert [t for t in relative if not (ROOT / t).exists()] == []


def test_the_webhook_id_is_what_the_readme_says() -> None:
    from predq.shared.webhooks.signing import webhook_id

    text = README.read_text()
    job_id = "1a3503d8-e5f0-4c7b-9d3a-2b1c0f9e8d7c"
    assert "`msg_<job id without its dashes>_<completed\\|failed>`" in text
    assert webhook_id(job_id, "job.completed") == "msg_1a3503d8e5f04c7b9d3a2b1c0f9e8d7c_completed"
    assert f"`{webhook_id(job_id, 'job.completed')}`" in text


def test_the_readme_lists_predict_failures_and_models_alias() -> None:
    text = README.read_text()
    section = text[text.index("**Status codes of `POST /predict` when the job ran and failed**"):]
    section = section[:section.index("Numbers are strict")]
    for fragment in ("`422`", "PredictError", "`503`", "ModelLoadError", "`409`"):
        assert fragment in section
    assert "predq models alias NAME ALIAS VERSION" in text


def test_the_quick_start_puts_predq_on_the_path_before_using_it() -> None:
    text = README.read_text()
    activate = text.index("source .venv/bin/activate")
    first_use = min(m.start() for m in re.finditer(r"\$\(predq |^predq (?!serves)", text, re.M))
    assert text.index("./scripts/up") < activate < first_use
