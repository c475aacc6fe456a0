"""``predq keys``: create API keys. The key is printed once; only its sha256 is configured.

``predq keys create --name ci --scopes jobs:write,jobs:read`` prints the new key (give it to
the client, it is never shown again) and the ``PREDQ_API_KEYS`` entry that configures it:
``{"name", "sha256", "scopes"}``. predq stores and compares only the hash, so neither the
settings, ``.env`` files nor logs ever hold a usable key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
from pydantic import ValidationError

from predq.api.security.apikeys import KEY_PREFIX, key_spec, new_key
from predq.shared.settings import ALL_SCOPES, ApiKeySpec

#: Scopes a key gets when --scopes is not given: a client that submits and reads its jobs.
DEFAULT_SCOPES = ("jobs:write", "jobs:read", "models:read")
#: Owner name of the development key that ``predq up`` creates.
DEV_KEY_NAME = "dev"


def _parse_scopes(values: tuple[str, ...]) -> tuple[str, ...]:
    scopes: list[str] = []
    for value in values:
        for scope in (s.strip() for s in value.split(",")):
            if not scope:
                continue
            if scope not in ALL_SCOPES:
                raise click.BadParameter(
                    f"unknown scope {scope!r}; choose from {', '.join(ALL_SCOPES)}",
                    param_hint="--scopes")
            if scope not in scopes:
                scopes.append(scope)
    return tuple(scopes) or DEFAULT_SCOPES


def dev_key_path(home: Path) -> Path:
    """Where ``predq up`` keeps its development key: ``<PREDQ_HOME>/dev-key`` (0600)."""
    from predq.stack import DEV_KEY_FILE

    return Path(home) / DEV_KEY_FILE


def _saved_key(path: Path) -> str | None:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return key if key.startswith(KEY_PREFIX) and len(key) > len(KEY_PREFIX) + 20 else None


def dev_api_key(home: Path | None = None, *, new: bool = False) -> str | None:
    """For ``predq up``: a key with every scope, configured for the child processes.

    Sets ``PREDQ_API_KEYS`` (the hash only) in this process's environment, which the children
    inherit, and returns the key for the banner. Returns None, changing nothing, when keys
    are already configured (``PREDQ_API_KEYS`` in the environment or ``.env``) or auth is off.

    With ``home``, the key lasts: it is read from :func:`dev_key_path` (made there, 0600, the
    first time, or when ``new``), so scripts keep working across restarts. The plaintext is
    kept only in that file of the user's own predq directory; Redis, the API and the logs only
    ever see its hash. Without ``home`` the key is for this run only and saved nowhere.
    """
    from predq.shared.settings import get_settings
    from predq.stack import write_private

    settings = get_settings()
    if "api_keys" in settings.model_fields_set or not settings.auth_enabled:
        return None
    key = None
    if home is not None and not new:
        key = _saved_key(dev_key_path(home))
    if key is None:
        key = new_key()
        if home is not None:
            write_private(dev_key_path(home), key + "\n")
    os.environ["PREDQ_API_KEYS"] = f"[{entry_json(key_spec(DEV_KEY_NAME, key, ALL_SCOPES))}]"
    get_settings.cache_clear()
    return key


def entry_json(spec: ApiKeySpec) -> str:
    """One ``PREDQ_API_KEYS`` list entry, as compact JSON."""
    return json.dumps(spec.model_dump(mode="json"), separators=(",", ":"))


@click.group()
def keys() -> None:
    """Create API keys (configured in PREDQ_API_KEYS as sha256 hashes only)."""


@keys.command()
@click.option("--name", required=True,
              help="Owner name: jobs created with the key belong to it ([A-Za-z0-9_.-]).")
@click.option("--scopes", "scope_values", multiple=True, metavar="SCOPE[,SCOPE...]",
              help=f"Comma-separated, repeatable: {', '.join(ALL_SCOPES)} "
                   f"[default: {','.join(DEFAULT_SCOPES)}].")
@click.option("--entry-only", is_flag=True,
              help="Print only the PREDQ_API_KEYS entry (the key goes to stderr).")
def create(name: str, scope_values: tuple[str, ...], entry_only: bool) -> None:
    """Generate a key, print it once, and print its PREDQ_API_KEYS entry."""
    scopes = _parse_scopes(scope_values)
    key = new_key()
    try:
        spec = key_spec(name, key, scopes)
    except ValidationError as e:
        raise click.BadParameter("use 1 to 64 of A-Z a-z 0-9 _ . -", param_hint="--name") from e
    entry = entry_json(spec)
    if entry_only:
        click.echo(f"API key for {name} (shown once): {key}", err=True)
        click.echo(entry)
        return
    existing = os.environ.get("PREDQ_API_KEYS")
    click.echo(f"API key for {name!r} with scopes {', '.join(scopes)}.\n"
               "It is shown once and predq never stores it: give it to the client now.\n\n"
               f"  {key}\n\n"
               "Add this entry to the PREDQ_API_KEYS JSON list of the api processes:\n\n"
               f"  {entry}\n")
    if not existing:
        click.echo(f"For example:  export PREDQ_API_KEYS='[{entry}]'")
    click.echo(f'Clients send:  -H "Authorization: Bearer {key}"')


@keys.command("dev")
def dev() -> None:
    """Print the development key of `predq up` (e.g. KEY=$(predq keys dev))."""
    from predq.shared.settings import get_settings

    path = dev_key_path(get_settings().home)
    key = _saved_key(path)
    if key is None:
        raise click.ClickException(
            f"no development key in {path}: `predq up` makes one the first time it runs "
            "(unless PREDQ_API_KEYS is set, or with --ephemeral-key)")
    click.echo(key)
