"""Where things are (issue "The first hour"): the registry, the running local stack, the
development key, and ``predq settings`` say where they are, whatever the current directory.

The same through a real ``predq up``: tests/e2e/test_up.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from predq import stack
from predq.api.security.apikeys import KeyRing, hash_key
from predq.cli import main
from predq.demo import train_demo_model
from predq.keys_cmd import dev_api_key, dev_key_path
from predq.shared.registry.serialization import dump_estimator
from predq.shared.settings import Settings, get_settings, setting_sources


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A clean environment: no PREDQ_* variable, XDG_DATA_HOME in tmp_path, cwd elsewhere."""
    for name in [n for n in os.environ if n.startswith("PREDQ_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    stack.adopted.clear()
    get_settings.cache_clear()
    yield tmp_path / "xdg" / "predq"
    stack.adopted.clear()
    get_settings.cache_clear()


@pytest.fixture
def other_process() -> Iterator[int]:
    """The pid of a live process that is not this one (stands for a running `predq up`: its
    command line says predq)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "predq"])
    yield proc.pid
    proc.kill()
    proc.wait()


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# -- the registry does not follow the current directory --------------------------------------


def test_the_default_registry_is_the_same_from_any_directory(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = Settings().registry_root
    monkeypatch.chdir(tmp_path)
    assert Settings().registry_root == first == home / "registry"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert Settings().registry_root == Path.home() / ".local/share/predq/registry"
    monkeypatch.setenv("PREDQ_HOME", str(tmp_path / "mine"))
    assert Settings().registry_root == tmp_path / "mine" / "registry"
    monkeypatch.setenv("PREDQ_REGISTRY_ROOT", "rel/reg")  # explicit wins, made absolute
    assert Settings().registry_root == tmp_path / "rel" / "reg"


def test_push_and_errors_name_the_registry(home: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "iris.joblib"
    dump_estimator(train_demo_model(), artifact, "joblib")
    pushed = cli("models", "push", str(artifact), "--name", "iris")
    assert pushed.exit_code == 0, pushed.output
    assert f"in {home / 'registry' / 'iris' / '1'}" in pushed.output
    listed = cli("models", "list")
    assert f"Registry {home / 'registry'}" in listed.output
    missing = cli("models", "show", "churn")
    assert missing.exit_code == 1
    assert f"registry {home / 'registry'}" in missing.output
    assert "it holds: iris" in missing.output


# -- the running local stack -----------------------------------------------------------------


def test_commands_adopt_the_running_stack(home: Path, other_process: int) -> None:
    stack.write_private(stack.state_path(home), json.dumps({
        "pid": other_process, "redis_url": "redis://127.0.0.1:1/0",
        "registry_root": str(home / "up-registry"), "key_prefix": "predq"}))
    result = cli("healthcheck", "worker")
    # It talked to the stack's Redis (nothing listens on port 1), not to 6379.
    assert result.exit_code == 1
    assert "Redis at redis://127.0.0.1:1/0" in result.output
    listed = cli("models", "list")
    assert f"{home / 'up-registry'} (from predq up (pid {other_process}" in listed.output
    shown = cli("settings")
    line = next(x for x in shown.output.splitlines() if x.startswith("PREDQ_REDIS_URL "))
    assert "redis://127.0.0.1:1/0" in line and line.split()[2:4] == ["predq", "up"]
    assert f"predq up: the running local stack, predq up (pid {other_process}" in shown.output


def test_an_explicit_redis_url_or_a_dead_stack_is_not_adopted(
        home: Path, other_process: int, monkeypatch: pytest.MonkeyPatch) -> None:
    path = stack.state_path(home)
    stack.write_private(path, json.dumps({"pid": other_process,
                                          "redis_url": "redis://127.0.0.1:1/0"}))
    monkeypatch.setenv("PREDQ_REDIS_URL", "redis://127.0.0.1:2/0")
    assert stack.adopt_running_stack() == {}
    assert os.environ["PREDQ_REDIS_URL"] == "redis://127.0.0.1:2/0"
    monkeypatch.delenv("PREDQ_REDIS_URL")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stack.write_private(path, json.dumps({"pid": dead.pid, "redis_url": "redis://x:1/0"}))
    get_settings.cache_clear()
    assert stack.adopt_running_stack() == {}
    assert "PREDQ_REDIS_URL" not in os.environ
    # A live pid that is not predq (reused after `up` was SIGKILLed) is not the stack either.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        stack.write_private(path, json.dumps({"pid": other.pid, "redis_url": "redis://x:1/0"}))
        if Path(f"/proc/{other.pid}/cmdline").exists():
            assert stack.adopt_running_stack() == {}
    finally:
        other.kill()
        other.wait()


def test_up_refuses_to_start_beside_a_running_stack(home: Path, other_process: int) -> None:
    stack.write_private(stack.state_path(home), json.dumps(
        {"pid": other_process, "api_url": "http://127.0.0.1:8000"}))
    result = CliRunner().invoke(main, ["up"])
    assert result.exit_code == 2
    assert "already running" in result.output and str(other_process) in result.output


def test_the_state_file_is_private_and_removed_only_by_its_writer(home: Path) -> None:
    path = stack.write_state(home, redis_url="redis://127.0.0.1:9/0")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert stack.read_state(home) is None  # our own: not "another running stack"
    stack.remove_state(home)
    assert not path.exists()


# -- the development key lasts -------------------------------------------------------------


def test_the_dev_key_survives_restarts_and_only_its_hash_is_configured(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDQ_API_KEYS", "[]")  # recorded, so the test undoes what it sets
    monkeypatch.delenv("PREDQ_API_KEYS")
    first = dev_api_key(home)
    assert first is not None
    path = dev_key_path(home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first not in os.environ["PREDQ_API_KEYS"]
    assert hash_key(first) in os.environ["PREDQ_API_KEYS"]
    monkeypatch.delenv("PREDQ_API_KEYS")  # a restart: a fresh process environment
    get_settings.cache_clear()
    assert dev_api_key(home) == first
    assert KeyRing(get_settings()).authenticate(first) is not None
    printed = cli("keys", "dev")
    assert printed.exit_code == 0 and printed.output.strip() == first
    monkeypatch.delenv("PREDQ_API_KEYS")
    get_settings.cache_clear()
    replaced = dev_api_key(home, new=True)
    assert replaced not in (None, first) and path.read_text().strip() == replaced
    monkeypatch.delenv("PREDQ_API_KEYS")
    get_settings.cache_clear()
    ephemeral = dev_api_key(None)
    assert ephemeral not in (None, replaced) and path.read_text().strip() == replaced


def test_keys_dev_without_a_key_says_where_it_looked(home: Path) -> None:
    result = cli("keys", "dev")
    assert result.exit_code == 1 and str(dev_key_path(home)) in result.output


# -- predq settings shows what is in effect ----------------------------------------------------


def test_settings_show_values_in_effect_and_their_source(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("PREDQ_MAX_WAIT_MS=25\nPREDQ_LOG_LEVEL=debug\n")
    monkeypatch.setenv("PREDQ_MAX_ROWS_PER_JOB", "7")
    monkeypatch.setenv("PREDQ_LOG_LEVEL", "warning")  # the environment wins over .env
    monkeypatch.setenv("PREDQ_WEBHOOK_SECRETS", "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY")
    assert setting_sources()["max_wait_ms"] == ".env"
    out = {line.split()[0]: line.split() for line in cli("settings").output.splitlines()[1:]}
    assert out["PREDQ_MAX_ROWS_PER_JOB"][1:3] == ["7", "env"]
    assert out["PREDQ_MAX_WAIT_MS"][1:3] == ["25.0", ".env"]
    assert out["PREDQ_LOG_LEVEL"][1:3] == ["WARNING", "env"]
    assert out["PREDQ_QUEUE_MAX_ROWS"][1:3] == ["2000000", "default"]
    assert out["PREDQ_REGISTRY_ROOT"][1:3] == [str(home / "registry"), "default"]
    assert "QUJDREVG" not in cli("settings").output  # secrets are never printed
    assert out["PREDQ_WEBHOOK_SECRETS"][1:4] == ["(set,", "hidden)", "env"]
    defaults = cli("settings", "--defaults").output
    assert "PREDQ_MAX_ROWS_PER_JOB" in defaults and " 100000 " in defaults


def test_settings_report_an_invalid_value_clearly(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDQ_MAX_ROWS_PER_JOB", "lots")
    result = cli("settings")
    assert result.exit_code == 1 and "invalid settings" in result.output
    assert "max_rows_per_job" in result.output


# -- push: say what the file is ----------------------------------------------------------------


def test_pushing_a_text_file_says_what_it_is(home: Path, tmp_path: Path) -> None:
    text = tmp_path / "train.csv"
    text.write_text("name,age\nann,3\n")
    result = cli("models", "push", str(text), "--name", "churn")
    assert result.exit_code == 1
    assert "is not a joblib file: it is a CSV file (it starts with 'name,age')" in result.output
    assert "KeyError" not in result.output
    empty = tmp_path / "empty.joblib"
    empty.write_bytes(b"")
    assert "it is an empty file" in cli("models", "push", str(empty), "--name", "x").output


def test_a_class_from_main_says_it_must_be_importable_by_the_workers(
        home: Path, tmp_path: Path) -> None:
    script = (
        "import joblib\n"
        "from sklearn.linear_model import LinearRegression\n"
        "class Custom(LinearRegression):\n"
        "    pass\n"
        "joblib.dump(Custom().fit([[0.0], [1.0]], [0.0, 1.0]), 'custom.joblib')\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True)
    result = cli("models", "push", str(tmp_path / "custom.joblib"), "--name", "custom")
    assert result.exit_code == 1
    assert "needs the class 'Custom', which was defined in __main__" in result.output
    assert "importable by `predq models push` and by the workers" in result.output
    assert "PYTHONPATH" in result.output
    assert "Can't get attribute" not in result.output
