"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

CI machines have no Docker engine, so these tests check what can be checked statically: the
compose file validates against the Compose Specification schema (check-jsonschema's vendored
copy, no network), every command it runs is a predq command that parses with its arguments
and whose ``--help`` works, and the operational requirements (AOF, noeviction, read-only
registry, health checks, depends_on conditions, Flower's password, a scalable worker) hold.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from predq.cli import main

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PREDQ_SERVICES = ("registry-init", "api", "worker", "flower")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _predq_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after "predq") of every predq command in the compose file."""
    found: list[tuple[str, list[str]]] = []
    for name, svc in _compose()["services"].items():
        runs = [("command", svc.get("command"))]
        test = (svc.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL"):
            runs.append(("healthcheck", test[1:] if test[0] == "CMD" else test[1].split()))
        for kind, argv in runs:
            if isinstance(argv, str):
                argv = argv.split()
            if argv and argv[0] == "predq":
                found.append((f"{name}.{kind}", list(argv[1:])))
    return found


def test_compose_file_matches_the_compose_specification() -> None:
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) \
        or shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is missing: pip install -e '.[test]'"
    r = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_predq_services_run_predq_commands() -> None:
    places = {where.split(".")[0] for where, _ in _predq_commands()}
    assert set(PREDQ_SERVICES) <= places


@pytest.mark.parametrize(("where", "argv"), _predq_commands(),
                         ids=[w for w, _ in _predq_commands()])
def test_every_compose_command_exists_and_parses(where: str, argv: list[str]) -> None:
    # 1. The arguments parse against the real click command (nothing runs).
    cmd: click.Command = main
    path: list[str] = []
    rest = list(argv)
    while isinstance(cmd, click.Group):  # predq's groups take no options of their own
        assert rest, f"{where}: {argv} names no predq command"
        name, rest = rest[0], rest[1:]
        sub = cmd.get_command(click.Context(cmd), name)
        assert sub is not None, f"{where}: no predq command {' '.join([*path, name])!r}"
        path.append(name)
        cmd = sub
    cmd.make_context(" ".join(["predq", *path]), rest)  # raises on an unknown option
    # 2. The installed entry point answers --help for that command.
    r = subprocess.run([sys.executable, "-m", "predq", *path, "--help"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, f"{where}: predq {' '.join(path)} --help failed:\n{r.stderr}"


def test_redis_is_durable_and_never_evicts() -> None:
    redis = _compose()["services"]["redis"]
    cmd = redis["command"]
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "everysec"
    assert flags["--maxmemory-policy"] == "noeviction"
    volume = redis["volumes"][0].split(":")
    assert volume[0] in _compose()["volumes"] and volume[1] == "/data"
    assert redis["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]


def test_registry_volume_is_shared_and_read_only_for_api_and_worker() -> None:
    services = _compose()["services"]
    assert "registry" in _compose()["volumes"]
    for name in ("api", "worker"):
        assert "registry:/registry:ro" in services[name]["volumes"], name
    assert "registry:/registry" in services["registry-init"]["volumes"]


def test_services_wait_for_health_and_have_health_checks() -> None:
    services = _compose()["services"]
    for name in ("api", "worker", "flower"):
        svc = services[name]
        assert svc["healthcheck"]["test"][0] == "CMD", name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
    for name in ("api", "worker"):
        dep = services[name]["depends_on"]["registry-init"]["condition"]
        assert dep == "service_completed_successfully"


def test_worker_scales_and_flower_needs_a_password() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N
    assert int(worker["stop_grace_period"].rstrip("s")) > int(
        worker["environment"]["PREDQ_WORKER_SHUTDOWN_GRACE_S"])
    flower = services["flower"]
    assert "--address" in flower["command"] and "0.0.0.0" in flower["command"]
    assert ":?" in flower["environment"]["PREDQ_FLOWER_BASIC_AUTH"]  # compose refuses unset


def test_one_dockerfile_serves_every_service() -> None:
    text = DOCKERFILE.read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert "\nUSER predq" in text  # not root
    builds = {svc.get("build") for name, svc in _compose()["services"].items()
              if name in PREDQ_SERVICES}
    assert builds == {"."}
