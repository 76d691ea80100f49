"""nlhf.data.prompts.load_prompts: formats and clear errors (no framework needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nlhf.data.prompts import hh_rlhf_prompt, load_prompts
from nlhf.errors import InputError
from nlhf.spec import DataSpec


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_prompt_format(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b c"}])
    assert load_prompts(DataSpec(path=path, format="prompt")) == ["a", "b c"]
    assert load_prompts(DataSpec(path=path)) == ["a", "b c"]  # auto


def test_preference_format_uses_prompt_column(tmp_path: Path) -> None:
    rows = [{"prompt": "Q1", "chosen": "good", "rejected": "bad"}]
    path = _jsonl(tmp_path / "pref.jsonl", rows)
    assert load_prompts(DataSpec(path=path, format="preference")) == ["Q1"]


def test_column_mapping(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "q.jsonl", [{"question": "why?"}])
    spec = DataSpec(path=path, format="prompt", columns={"prompt": "question"})
    assert load_prompts(spec) == ["why?"]


def test_hh_rlhf_shared_prefix(tmp_path: Path) -> None:
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bake bread?\n\nAssistant: Mix flour."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bake bread?\n\nAssistant: No."
    expected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bake bread?\n\nAssistant:"
    path = _jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": rejected}])
    assert load_prompts(DataSpec(path=path, format="hh_rlhf")) == [expected]
    assert load_prompts(DataSpec(path=path)) == [expected]  # auto-detected


def test_hh_rlhf_prefix_inside_assistant_word() -> None:
    # Responses sharing their first characters must not leak into the prompt.
    chosen = "\n\nHuman: Q\n\nAssistant: Sure, here"
    rejected = "\n\nHuman: Q\n\nAssistant: Sorry"
    assert hh_rlhf_prompt(chosen, rejected) == "\n\nHuman: Q\n\nAssistant:"


def test_hh_rlhf_without_assistant_tag(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", [{"chosen": "x y", "rejected": "x z"}])
    with pytest.raises(InputError, match="Assistant"):
        load_prompts(DataSpec(path=path, format="hh_rlhf"))


def test_missing_prompt_column_names_columns(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "a", "id": 1}])
    with pytest.raises(InputError) as info:
        load_prompts(DataSpec(path=path, format="prompt"))
    assert "'prompt'" in str(info.value)
    assert "text, id" in str(info.value)
    with pytest.raises(InputError, match="columns found: text, id"):
        load_prompts(DataSpec(path=path))  # auto


def test_empty_dataset(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(InputError, match=r"empty\.jsonl is empty \(no rows\)"):
        load_prompts(DataSpec(path=str(path), format="prompt"))


def test_non_text_prompt(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [{"prompt": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(InputError, match="row 0"):
        load_prompts(DataSpec(path=path, format="prompt"))


def test_limit(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "l.jsonl", [{"prompt": str(i)} for i in range(5)])
    assert load_prompts(DataSpec(path=path, limit=2)) == ["0", "1"]
