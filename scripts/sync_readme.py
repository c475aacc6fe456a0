"""Regenerate README.md's settings table from the Settings class (tests check it is current).

Usage: .venv/bin/python scripts/sync_readme.py
"""

from __future__ import annotations

import re
from pathlib import Path

from predq.settings_cmd import markdown

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings:start -->", "<!-- settings:end -->"


def render(text: str) -> str:
    block = f"{START}\n{markdown()}\n{END}"
    return re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text,
                  flags=re.S)


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
    print("README.md settings table updated")
