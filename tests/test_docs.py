"""The docs stay true: every config key has its row in docs/config.md, every docs page is linked
from the README, and the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

from regimen.core.config import leaf_keys

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_the_config_page_has_a_row_for_every_key():
    text = (DOCS / "config.md").read_text()
    rows = set(re.findall(r"^\| `([\w.]+)` \|", text, re.M))
    assert set(leaf_keys()) <= rows, sorted(set(leaf_keys()) - rows)


def test_the_readme_links_every_docs_page_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    links = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", readme))
    assert {f"docs/{page.name}" for page in DOCS.glob("*.md")} <= links
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[\w-]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}"


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
