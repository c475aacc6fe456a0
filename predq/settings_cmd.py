"""``predq settings``: every PREDQ_ setting in effect, where it came from, and its meaning.

``--defaults`` prints the defaults instead, and ``--markdown`` README's table of them.
"""

from __future__ import annotations

import json
from typing import Any

import click
from pydantic_core import PydanticUndefined

from predq.shared.settings import Settings, get_settings, setting_sources

#: Settings whose values are secrets: shown as set or not, never printed.
SECRET = {"webhook_secrets", "flower_basic_auth", "redis_sentinel_password"}
#: How the defaults that depend on the machine are shown (README must not hold a home dir).
_DISPLAY_DEFAULTS = {
    "home": "$XDG_DATA_HOME/predq or ~/.local/share/predq",
    "registry_root": "<PREDQ_HOME>/registry",
}


def _default(field: Any, name: str = "") -> str:
    if name in _DISPLAY_DEFAULTS:
        return _DISPLAY_DEFAULTS[name]
    if field.default_factory is not None:
        if field.default_factory.__name__ == "<lambda>" and "cpu" in str(
                field.default_factory.__code__.co_names):
            return "CPU count"
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, list | dict):
        if not value:
            return "(empty)"
        if all(isinstance(v, int | float) for v in value):
            return ",".join(f"{v:g}" for v in value)
        return json.dumps(value)
    if value is None:
        return "(unset)"
    return str(value)


def rows() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, in declaration order."""
    return [(f"PREDQ_{name.upper()}", _default(f, name), f.description or "")
            for name, f in Settings.model_fields.items()]


def markdown() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{v}` | `{d}` | {m} |" for v, d, m in rows()]
    return "\n".join(lines)


def _shown(name: str, value: Any) -> str:
    from predq.shared.redis_conn import display_url

    if name in SECRET:
        return "(set, hidden)" if value else "(unset)"
    if name == "api_keys":
        return f"{len(value)} key(s): {', '.join(k.name for k in value)}" if value else "(empty)"
    if name == "redis_url":
        return display_url(value)
    if isinstance(value, list | dict):
        if not value:
            return "(empty)"
        if all(isinstance(v, int | float) for v in value):
            return ",".join(f"{v:g}" for v in value)
        return json.dumps(value)
    return "(unset)" if value is None else str(value)


def effective_rows() -> list[tuple[str, str, str, str]]:
    """(variable, value in effect, source, meaning) for every setting.

    The source is ``env``, ``.env``, ``default``, or the ``predq up`` stack whose Redis and
    registry this command adopted (see :mod:`predq.stack`). Raises ValidationError when the
    environment holds an invalid value.
    """
    from predq.stack import adopted

    current = get_settings()
    sources = setting_sources()
    out = []
    for name, field in Settings.model_fields.items():
        source = adopted.get(name) or sources.get(name, "default")
        out.append((f"PREDQ_{name.upper()}", _shown(name, getattr(current, name)), source,
                    field.description or ""))
    return out


@click.command("settings")
@click.option("--markdown", "as_markdown", is_flag=True,
              help="Print README's Markdown table of the defaults.")
@click.option("--defaults", "defaults", is_flag=True, help="Print the defaults, not the values "
              "in effect.")
def settings(as_markdown: bool, defaults: bool) -> None:
    """List every PREDQ_ setting: the value in effect, where it came from, and its meaning.

    The source is env (the environment), .env (the .env file of the current directory),
    default, or the running `predq up` stack.
    """
    from pydantic import ValidationError

    if as_markdown:
        click.echo(markdown())
        return
    if defaults:
        for var, default, meaning in rows():
            click.echo(f"{var:34} {default:22} {meaning}")
        return
    try:
        table = effective_rows()
    except ValidationError as e:
        raise click.ClickException(f"invalid settings:\n{e}") from e
    from predq.stack import adopted

    click.echo(f"{'VARIABLE':34} {'VALUE':30} {'SOURCE':8} MEANING")
    for var, value, source, meaning in table:
        short = "predq up" if source.startswith("predq up") else source
        click.echo(f"{var:34} {value:30} {short:8} {meaning}")
    if adopted:
        click.echo(f"\npredq up: the running local stack, {next(iter(adopted.values()))}")
