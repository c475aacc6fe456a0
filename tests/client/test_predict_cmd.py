"""``predq predict`` run in a real terminal (a pty) against a real stack.

It scores a CSV with bad rows in known places through the batch API: the exit code, the output
file (in input order, equal to a local predict), the error file, and the progress bar shown.
Ctrl-C asks whether to cancel the batch.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from predq.demo import iris_sample_rows
from tests.client.test_client_e2e import local_model

pytestmark = pytest.mark.integration

BAD_ROWS = {5: ("sepal_length", "abc"), 77: ("petal_width", "")}


def run_in_pty(args: list[str], env: dict[str, str], cwd: Path, *,
               on_output: Any = None, timeout: float = 240.0) -> tuple[int, str]:
    """Run a command on a pseudo-terminal; returns (exit code, everything it printed).
    ``on_output(text_so_far, write)`` may answer on the terminal."""
    main, sub = pty.openpty()
    proc = subprocess.Popen(args, stdin=sub, stdout=sub, stderr=sub, env=env, cwd=cwd,
                            start_new_session=True)
    os.close(sub)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    break
                out += chunk
                if on_output is not None:
                    on_output(out.decode(errors="replace"), lambda b: os.write(main, b), proc)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError(f"timed out; output so far:\n{out.decode(errors='replace')}")
        return proc.wait(10), out.decode(errors="replace")
    finally:
        os.close(main)


def cli_env(env: dict[str, str], base_url: str, key: str) -> dict[str, str]:
    return {**env, "PREDQ_URL": base_url, "PREDQ_API_KEY": key, "TERM": "xterm",
            "COLUMNS": "120"}


def test_predict_a_file_with_bad_rows(stack: Any, registry_with_models: Any,
                                      keys: dict[str, str], env: dict[str, str],
                                      tmp_path: Path) -> None:
    s = stack(PREDQ_BATCH_CHUNK_ROWS="50")
    rows = iris_sample_rows(300, seed=9)
    frame = pd.DataFrame(rows)
    frame.insert(0, "customer_id", [f"c{i:04d}" for i in range(len(frame))])
    frame = frame.astype(dict.fromkeys(frame.columns, object))
    for row, (col, value) in BAD_ROWS.items():
        frame.loc[row, col] = value
    src = tmp_path / "customers.csv"
    frame.to_csv(src, index=False)

    code, printed = run_in_pty(
        [sys.executable, "-m", "predq", "predict", "iris", str(src), "--id-column",
         "customer_id"], cli_env(env, s.base_url, keys["user"]), tmp_path)

    assert code == 3, printed  # the batch succeeded, two rows failed
    assert "rows" in printed and "300/300" in printed  # the progress bar reached the end
    assert "298 rows scored, 2 failed, of 300" in printed
    out = pd.read_csv(tmp_path / "customers.predictions.csv")
    good = [i for i in range(300) if i not in BAD_ROWS]
    assert list(out["customer_id"]) == [f"c{i:04d}" for i in good]  # input order
    model = local_model(registry_with_models)
    clean = pd.DataFrame(rows).iloc[good]
    assert list(out["label"]) == list(model.predict(clean))
    proba = out[[f"proba_{c}" for c in model.classes_]].to_numpy()
    assert abs(proba - model.predict_proba(clean)).max() < 1e-12
    errors = [json.loads(line) for line in
              (tmp_path / "customers.predictions.errors.jsonl").read_text().splitlines()]
    assert [(e["row"], e["id"]) for e in errors] == [(5, "c0005"), (77, "c0077")]
    assert errors[0]["errors"][0]["loc"] == ["row", 5, "sepal_length"]
    assert errors[1]["errors"][0]["loc"] == ["row", 77, "petal_width"]

    code, _ = run_in_pty(
        [sys.executable, "-m", "predq", "predict", "iris", str(src), "--id-column",
         "customer_id", "--allow-failed-rows", "-o", str(tmp_path / "again.csv"),
         "--no-progress"], cli_env(env, s.base_url, keys["user"]), tmp_path)
    assert code == 0


def test_ctrl_c_asks_and_cancels_the_batch(stack: Any, keys: dict[str, str],
                                           env: dict[str, str], tmp_path: Path) -> None:
    s = stack(workers=0)  # nothing consumes: the batch waits until Ctrl-C
    src = tmp_path / "rows.csv"
    pd.DataFrame(iris_sample_rows(20)).to_csv(src, index=False)
    state = {"interrupted": False, "answered": False}

    def interact(text: str, write: Any, proc: subprocess.Popen[bytes]) -> None:
        if not state["interrupted"] and "batch " in text and " on iris" in text:
            state["interrupted"] = True
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C on the terminal does
        if state["interrupted"] and not state["answered"] and "[y/N]" in text:
            state["answered"] = True
            write(b"y\n")

    code, printed = run_in_pty([sys.executable, "-m", "predq", "predict", "iris", str(src)],
                               cli_env(env, s.base_url, keys["user"]), tmp_path,
                               on_output=interact, timeout=120)
    assert code == 130, printed
    assert state["answered"] and "cancelled" in printed
    batch_id = printed.split("batch ", 1)[1].split()[0]
    from predq.client import Client

    with Client(s.base_url, keys["user"]) as c:
        assert c.get_batch(batch_id).status == "cancelled"
