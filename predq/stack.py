"""The local stack of ``predq up``, as the other ``predq`` commands find it.

``predq up`` picks a free port for its own Redis, so a command run in another terminal
(``predq healthcheck worker``, ``predq models push``, ``predq worker``...) could not guess it.
Instead ``up`` writes a state file, ``<PREDQ_HOME>/up.json`` (mode 0600), once the stack is
ready::

    {"pid": 1234, "redis_url": "redis://127.0.0.1:40123/0", "api_url": "http://127.0.0.1:8000",
     "flower_url": "...", "registry_root": "/home/me/.local/share/predq/registry",
     "key_prefix": "predq"}

and removes it when it stops. Every other command (see :func:`adopt_running_stack`, called by
the ``predq`` group) uses that stack's Redis URL, registry and key prefix, unless
``PREDQ_REDIS_URL`` is set in the environment or ``.env``: then it talks to that Redis, and
the state file is ignored. A state file whose ``pid`` is gone (``up`` was SIGKILLed) is
ignored too.

The development key of ``up`` lives beside it, in ``<PREDQ_HOME>/dev-key`` (0600): see
:func:`predq.keys_cmd.dev_api_key`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATE_FILE = "up.json"
DEV_KEY_FILE = "dev-key"
#: Settings the running stack provides: (field, environment variable, state file key).
ADOPTED = (
    ("redis_url", "PREDQ_REDIS_URL", "redis_url"),
    ("registry_root", "PREDQ_REGISTRY_ROOT", "registry_root"),
    ("key_prefix", "PREDQ_KEY_PREFIX", "key_prefix"),
)

#: What :func:`adopt_running_stack` set in this process: field name -> where it came from.
adopted: dict[str, str] = {}


def state_path(home: Path) -> Path:
    return Path(home) / STATE_FILE


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_state(home: Path, **fields: Any) -> Path:
    """Record the running stack (called by ``predq up`` once it is ready)."""
    path = state_path(home)
    write_private(path, json.dumps({"pid": os.getpid(), **fields}, indent=2) + "\n")
    return path


def remove_state(home: Path) -> None:
    """Remove the state file if this process wrote it (``predq up`` on exit)."""
    path = state_path(home)
    state = _read(path)
    if state is not None and state.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:  # a pid reused by another program after `up` was SIGKILLed is not the stack
        return b"predq" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the pid


def _read(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def read_state(home: Path) -> dict[str, Any] | None:
    """The running stack's state, or None (no file, unreadable, or its ``up`` is gone)."""
    state = _read(state_path(home))
    if state is None or not _alive(state.get("pid")) or state.get("pid") == os.getpid():
        return None
    return state


def adopt_running_stack() -> dict[str, str]:
    """Point this process's settings at the stack ``predq up`` runs, if there is one.

    Does nothing when ``PREDQ_REDIS_URL`` is set (environment or ``.env``): the user chose a
    Redis. Otherwise each of :data:`ADOPTED` that is not set is taken from the state file and
    put in ``os.environ`` (so child processes inherit it). Returns, and records in
    :data:`adopted`, field name -> a description of the source.
    """
    from predq.shared.settings import get_settings, setting_sources

    try:
        settings = get_settings()
    except Exception:  # invalid settings: the command itself will report them
        return {}
    sources = setting_sources()
    if "redis_url" in sources:
        return {}
    path = state_path(settings.home)
    state = read_state(settings.home)
    if state is None:
        return {}
    found: dict[str, str] = {}
    for field, var, key in ADOPTED:
        value = state.get(key)
        if field in sources or not isinstance(value, str) or not value:
            continue
        os.environ[var] = value
        found[field] = f"predq up (pid {state['pid']}, {path})"
    get_settings.cache_clear()
    adopted.clear()
    adopted.update(found)
    return found
