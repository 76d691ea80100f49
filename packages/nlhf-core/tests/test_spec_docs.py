"""docs/spec.md is generated from the spec models and must be up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "gen_spec_docs", REPO / "scripts" / "gen_spec_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spec_docs_up_to_date() -> None:
    text = _generator().render()
    current = (REPO / "docs" / "spec.md").read_text(encoding="utf-8")
    assert current == text, (
        "docs/spec.md is stale: regenerate it with .venv/bin/python scripts/gen_spec_docs.py"
    )


def test_spec_docs_cover_every_section_and_field() -> None:
    from nlhf.spec.models import RunSpec, TabularPreference

    text = _generator().render()
    for name in RunSpec.model_fields:
        assert f"| `{name}` |" in text, name
    assert "## TabularPreference" in text and "## NashMDPG" in text
    for name in TabularPreference.model_fields:
        assert f"| `{name}` |" in text, name


def test_spec_docs_do_not_inherit_pydantic_docstrings() -> None:
    """A model without its own docstring gets none, not pydantic BaseModel's."""
    text = _generator().render()
    assert "A base class for creating Pydantic models" not in text
    assert "concepts/models.md" not in text
