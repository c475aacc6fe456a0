"""The one loader of predq's Lua scripts: each lives in a ``lua/`` folder beside the module
that runs it (``shared/jobstore/lua/claim.lua``...), so that it reads, diffs and lints as Lua.

The comment at the top of each file says what its KEYS and ARGV are and what it returns.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def lua_script(module_file: str, name: str) -> str:
    """The source of ``lua/<name>.lua`` beside ``module_file`` (pass ``__file__``)."""
    return (Path(module_file).resolve().parent / "lua" / f"{name}.lua").read_text()
