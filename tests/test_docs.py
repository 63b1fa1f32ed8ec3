"""The design docs the code cites are in the repository, and every citation names one that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"docs/([A-Za-z_]+\.md)")
SOURCES = ("jobs", "operators", "tests", "benchmarks", "cluster", ".ci")


def project_files():
    for top in SOURCES:
        yield from (p for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix in ("", ".py", ".yaml", ".jinja", ".md"))
    yield from (ROOT / "pyproject.toml", ROOT / "README.md", ROOT / "cluster" / "Dockerfile")


def test_every_cited_doc_exists_and_no_citation_points_outside_the_repository():
    cited, stale = set(), []
    for path in project_files():
        text = path.read_text(errors="replace")
        cited.update(CITED.findall(text))
        if path.name != "test_docs.py" and re.search(r"(?<![/\w])(NOTES|ARCHITECTURE)\.md", text):
            stale.append(str(path.relative_to(ROOT)))
    assert {"architecture.md", "notes.md"} <= cited
    assert all((ROOT / "docs" / name).is_file() for name in cited), cited
    assert not stale, f"cite docs/notes.md or docs/architecture.md instead: {stale}"
