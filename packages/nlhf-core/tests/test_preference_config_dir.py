"""``PreferenceConfig.for_directory``: what a model directory is scored as, shared by the
torch and jax ``load_preference_model``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nlhf.errors import InputError
from nlhf.preference.format import DEFAULT_JUDGE_TEMPLATE, PreferenceConfig


def _model_dir(root: Path, architectures: list[str] | None) -> Path:
    root.mkdir()
    cfg = {"model_type": "llama"} if architectures is None else {"architectures": architectures}
    (root / "config.json").write_text(json.dumps(cfg))
    return root


def test_saved_config_wins(tmp_path: Path) -> None:
    d = _model_dir(tmp_path / "m", ["LlamaForCausalLM"])
    saved = PreferenceConfig(
        kind="bradley_terry",
        head="classification",
        max_length=77,
        max_prompt_length=20,
        truncation="right",
    )
    saved.save(d)
    assert PreferenceConfig.for_directory(d) == saved


def test_an_older_save_gets_its_max_length_as_prompt_budget(tmp_path: Path) -> None:
    """Saved before ``max_prompt_length`` and ``truncation`` were recorded: the prompt is
    budgeted by ``max_length`` (as ``nlhf preference-eval`` reads it), cut ``left``."""
    d = _model_dir(tmp_path / "m", ["LlamaForCausalLM"])
    PreferenceConfig(kind="pairwise", max_length=77).save(d)
    raw = json.loads((d / "nlhf_preference.json").read_text())
    del raw["max_prompt_length"], raw["truncation"]
    (d / "nlhf_preference.json").write_text(json.dumps(raw))
    config = PreferenceConfig.for_directory(d)
    assert (config.max_length, config.max_prompt_length, config.truncation) == (77, 77, "left")


@pytest.mark.parametrize(
    ("archs", "kind", "head"),
    [
        (["Qwen2ForCausalLM"], "pairwise", "lm"),
        (["LlamaForSequenceClassification"], "bradley_terry", "classification"),
    ],
)
def test_from_architectures(tmp_path: Path, archs: list[str], kind: str, head: str) -> None:
    cfg = PreferenceConfig.for_directory(_model_dir(tmp_path / "m", archs))
    assert (cfg.kind, cfg.head, cfg.template) == (kind, head, DEFAULT_JUDGE_TEMPLATE)
    assert cfg.max_prompt_length is None  # no training budget to cut by


def test_unknown_architecture_and_missing_config_name_the_field(tmp_path: Path) -> None:
    d = _model_dir(tmp_path / "m", ["BertModel"])
    with pytest.raises(InputError, match=r"^judge\.path: .* \(BertModel\) is neither a causal"):
        PreferenceConfig.for_directory(d, "judge.path")
    with pytest.raises(InputError, match=r"\(unknown\) is neither"):
        PreferenceConfig.for_directory(_model_dir(tmp_path / "n", None))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"^preference\.path: .* is not a model directory"):
        PreferenceConfig.for_directory(tmp_path / "empty")
