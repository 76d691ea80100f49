"""The docs site (mkdocs.yml) builds with ``mkdocs build --strict``: every page in the nav
exists, internal links and anchors resolve (MkDocs' validation, promoted to errors by
--strict), and the API reference renders from the docstrings (mkdocstrings)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="mkdocs/mkdocstrings not installed: pip install -r docs/requirements.txt",
)


def _nav_pages(nav: list[str | dict[str, Any]]) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


def _config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_every_docs_page_is_in_the_nav_and_exists() -> None:
    pages = _nav_pages(_config()["nav"])
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"nav pages missing under docs/: {missing}"
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(pages) == on_disk, "a docs page is not in the mkdocs.yml nav (or vice versa)"


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


@needs_mkdocs
def test_strict_build_rejects_a_broken_link_and_anchor(tmp_path: Path) -> None:
    """The validation settings of mkdocs.yml turn a dangling link or anchor into a failure."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](missing.md), [bad anchor](other.md#nope)\n")
    (docs / "other.md").write_text("# Other\n\n## A section\n")
    config = _config()
    config.update(docs_dir=str(docs), nav=[{"Home": "index.md"}, {"Other": "other.md"}])
    config["plugins"] = ["search"]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    proc = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0
    assert "missing.md" in proc.stderr
    assert "#nope" in proc.stderr


@needs_mkdocs
def test_site_builds_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = _build(ROOT / "mkdocs.yml", site)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-4000:]
    for page in _nav_pages(_config()["nav"]):
        html = site / (
            "index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html"
        )
        assert html.is_file(), f"{page} was not rendered to {html}"
    # the API reference is rendered from the docstrings, not left as a bare ::: directive
    api = (site / "api" / "training" / "index.html").read_text()
    assert 'id="nlhf.training.NashLoop"' in api
    assert ":::" not in api
