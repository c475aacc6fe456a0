"""The distribution installs one top-level package, ``predq``: the rooms api/, worker/ and
shared/ go in as predq.api, predq.worker and predq.shared, never as generic top-level names
that would collide with other packages in a user's environment."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_holds_only_the_predq_package(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [wheel] = tmp_path.glob("predq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"predq"}, top
    for module in ("predq/api/app.py", "predq/worker/app.py", "predq/shared/settings.py",
                   "predq/shared/jobstore/lua/claim.lua", "predq/api/security/lua/ratelimit.lua",
                   "predq/client/__init__.py"):
        assert module in names, module
