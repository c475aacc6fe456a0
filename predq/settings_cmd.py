"""``predq settings``: every PREDQ_ setting with its default and meaning (README's table)."""

from __future__ import annotations

import json
from typing import Any

import click
from pydantic_core import PydanticUndefined

from shared.settings import Settings


def _default(field: Any) -> str:
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
    return [(f"PREDQ_{name.upper()}", _default(f), f.description or "")
            for name, f in Settings.model_fields.items()]


def markdown() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{v}` | `{d}` | {m} |" for v, d, m in rows()]
    return "\n".join(lines)


@click.command("settings")
@click.option("--markdown", "as_markdown", is_flag=True, help="Print a Markdown table.")
def settings(as_markdown: bool) -> None:
    """List every PREDQ_ setting with its default and meaning."""
    if as_markdown:
        click.echo(markdown())
        return
    for var, default, meaning in rows():
        click.echo(f"{var:34} {default:22} {meaning}")
