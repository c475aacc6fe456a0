"""predq.procs: children lead their own process group, and stopping one leaves nothing behind."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from predq.procs import (
    Child,
    ChildExited,
    Supervisor,
    child_pids,
    group_pids,
    start_child,
    stop_all,
    tail_file,
    wait_for_port,
    wait_for_url,
)
from predq.redis_server import free_port

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="group membership is read from /proc"
)

# A leader that forks a grandchild (same group), writes both pids, then waits; the
# grandchild sleeps. ``IGNORE_TERM`` makes both ignore SIGTERM; ``LEADER_EXITS`` makes the
# leader return at once, orphaning the grandchild inside the group.
_FAMILY = textwrap.dedent(
    """
    import os, signal, sys, time
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        time.sleep(300)
        os._exit(0)
    with open(sys.argv[1], "w") as f:
        f.write(f"{os.getpid()} {pid}")
    print("family ready", flush=True)
    if os.environ.get("LEADER_EXITS"):
        sys.exit(0)
    os.waitpid(pid, 0)
    """
)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    stop_all(started, sig=signal.SIGKILL, timeout=5)  # even if the test failed halfway


def _family(tmp_path: Path, children: list[Child], **env: str) -> tuple[Child, int, int]:
    pids_file = tmp_path / "pids"
    child = start_child(
        "family",
        [sys.executable, "-c", _FAMILY, str(pids_file)],
        env={**os.environ, **env},
        log_path=tmp_path / "family.log",
    )
    children.append(child)
    deadline = time.monotonic() + 30
    while not (pids_file.exists() and len(pids_file.read_text().split()) == 2):
        assert time.monotonic() < deadline, child.tail()
        time.sleep(0.02)
    leader, grandchild = map(int, pids_file.read_text().split())
    return child, leader, grandchild


def test_child_leads_its_own_group(tmp_path: Path, children: list[Child]) -> None:
    child, leader, grandchild = _family(tmp_path, children)
    assert child.pid == leader == os.getpgid(leader) == os.getpgid(grandchild)
    assert os.getpgid(leader) != os.getpgid(0)
    assert sorted(child.group_pids()) == sorted([leader, grandchild])
    assert child_pids(os.getpid()) and leader in child_pids(os.getpid())


def test_stop_takes_the_whole_group(tmp_path: Path, children: list[Child]) -> None:
    child, _leader, _grandchild = _family(tmp_path, children)
    code = child.stop(timeout=10)
    assert code is not None  # the leader was reaped
    assert group_pids(child.pgid) == []


def test_stop_escalates_to_sigkill(tmp_path: Path, children: list[Child]) -> None:
    child, _leader, _grandchild = _family(tmp_path, children, IGNORE_TERM="1")
    code = child.stop(timeout=0.5)
    assert code == -signal.SIGKILL
    assert group_pids(child.pgid) == []


def test_stop_kills_orphans_left_in_the_group(tmp_path: Path, children: list[Child]) -> None:
    child, _leader, grandchild = _family(tmp_path, children, LEADER_EXITS="1")
    child.proc.wait(timeout=30)
    assert group_pids(child.pgid) == [grandchild]  # the leader is gone, its orphan is not
    child.stop(timeout=5)
    assert group_pids(child.pgid) == []


def test_hurry_skips_the_grace_period(tmp_path: Path, children: list[Child]) -> None:
    child, _leader, _grandchild = _family(tmp_path, children, IGNORE_TERM="1")
    started = time.monotonic()
    stop_all([child], timeout=60, hurry=lambda: True)
    assert time.monotonic() - started < 30  # generous: far below the 60 s grace
    assert group_pids(child.pgid) == []


def test_supervisor_stops_everything_and_reports_the_first_exit(tmp_path: Path) -> None:
    with Supervisor() as sup:
        sleeper = sup.start("sleeper", [sys.executable, "-c", "import time; time.sleep(300)"])
        quitter = sup.start("quitter", [sys.executable, "-c", "raise SystemExit(3)"],
                            log_path=tmp_path / "quitter.log")
        quitter.proc.wait(timeout=30)
        assert sup.first_exited() is quitter
        with pytest.raises(ChildExited, match=r"quitter process .* exited with code 3"):
            quitter.check()
    assert not sleeper.alive() and group_pids(sleeper.pgid) == []


def test_output_goes_to_the_log_file(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    child = start_child("echo", [sys.executable, "-c", "import sys; print('hello', flush=True); "
                                 "print('oops', file=sys.stderr)"], log_path=log)
    child.proc.wait(timeout=30)
    assert tail_file(log).splitlines() == ["hello", "oops"]
    assert child.tail(1) == "oops"


def test_prefixed_output(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    child = start_child("echo", [sys.executable, "-c", "print('one'); print('two')"],
                        prefix="echo")
    child.proc.wait(timeout=30)
    child.stop(timeout=30)  # the child is gone: this only joins the output thread
    out = capfd.readouterr().out
    assert "echo | one\necho | two\n" in out


def test_wait_for_url_and_port(tmp_path: Path, children: list[Child]) -> None:
    port = free_port()
    server = start_child(
        "http", [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                 "--directory", str(tmp_path)],
        log_path=tmp_path / "http.log",
    )
    children.append(server)
    wait_for_port("127.0.0.1", port, timeout=30, children=[server])
    response = wait_for_url(f"http://127.0.0.1:{port}/", timeout=30, children=[server])
    assert response.status_code == 200


def test_wait_for_url_fails_fast_when_the_child_dies(children: list[Child]) -> None:
    dying = start_child("dying", [sys.executable, "-c", "raise SystemExit(2)"])
    children.append(dying)
    with pytest.raises(ChildExited) as info:
        wait_for_url(f"http://127.0.0.1:{free_port()}/", timeout=60, children=[dying])
    assert info.value.returncode == 2 and info.value.child is dying


def test_wait_for_url_times_out() -> None:
    with pytest.raises(TimeoutError, match="did not become ready"):
        wait_for_url(f"http://127.0.0.1:{free_port()}/", timeout=0.3)
