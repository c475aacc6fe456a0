"""The documents the code cites exist: every ``docs/*.md`` path named in the project's files,
and every README section cited as ``README.md § <heading>`` (one of them is in the OpenAPI
document users read)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("api", "worker", "shared", "predq", "scripts", "bench", "tests",
                                  "docs", ".ci")
                 if (ROOT / folder).is_dir()
                 for p in (ROOT / folder).rglob("*")
                 if p.is_file() and p.suffix in (".py", ".md", ".toml", ".yml", ".sh", "")
                 and "__pycache__" not in p.parts and p.name != "test_docs.py")
SOURCES += [ROOT / name for name in ("README.md", "pyproject.toml", "Dockerfile",
                                     "docker-compose.yml") if (ROOT / name).exists()]
DOC_PATH = re.compile(r"\bdocs/[A-Za-z0-9_./-]+?\.md\b")
README_SECTION = re.compile(r"README(?:\.md)? § ([^.\n()\"`]+?)\s*(?=[.)\"`\n]|$)")


def _citations(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    found = []
    for path in SOURCES:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [(str(path.relative_to(ROOT)), m.group(m.lastindex or 0))
                  for m in pattern.finditer(text)]
    return found


def _headings() -> set[str]:
    text = (ROOT / "README.md").read_text()
    # Headings outside code blocks only (a shell comment in a block is no heading).
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return {m.group(1).strip() for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_the_citations_are_found() -> None:
    # Guards the checks below against passing vacuously.
    assert ("shared/registry/store.py", "docs/design.md") in _citations(DOC_PATH)
    assert ("api/routes/webhooks.py", "Webhooks") in _citations(README_SECTION)
    assert {"Rate limits", "Metrics", "Webhooks", "Operations"} <= _headings()


@pytest.mark.parametrize(("where", "cited"), sorted(set(_citations(DOC_PATH))))
def test_every_cited_doc_exists(where: str, cited: str) -> None:
    assert (ROOT / cited).is_file(), f"{where} cites {cited}, which does not exist"


@pytest.mark.parametrize(("where", "section"), sorted(set(_citations(README_SECTION))))
def test_every_cited_readme_section_exists(where: str, section: str) -> None:
    assert section in _headings(), f"{where} cites README section {section!r}: no such heading"
