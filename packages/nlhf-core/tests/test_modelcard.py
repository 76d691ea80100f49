"""Model cards (nlhf.modelcard): the front matter parses as a Hugging Face model card and
the body states the spec's values; base model and licence of a local starting point."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nlhf
import pytest
import yaml
from nlhf.modelcard import (
    base_model_metadata,
    last_metrics,
    model_card,
    read_front_matter,
    write_model_card,
)
from nlhf.spec import RunSpec


def _spec(tmp_path: Path, **policy: Any) -> RunSpec:
    return RunSpec.model_validate(
        {
            "seed": 5,
            "policy": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", **policy},
            "preference": {"name": "pairwise_model", "path": "runs/preference-hh/model"},
            "data": {"path": "prompts.jsonl", "limit": 64},
            "algorithm": {"name": "nash_md_pg", "tau": 0.03, "beta": 0.2},
            "training": {"steps": 7, "lr": 2.5e-6, "batch_size": 4},
            "output": {"dir": str(tmp_path / "my-run")},
        }
    )


def _front(text: str) -> dict[str, Any]:
    """The front matter, read by huggingface_hub's ModelCard when installed (the parser
    the hub uses), else by PyYAML."""
    try:
        from huggingface_hub import ModelCard
    except ImportError:
        assert text.startswith("---\n")
        return yaml.safe_load(text[4:].split("\n---", 1)[0])
    return ModelCard(text).data.to_dict()


def _table(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\| `([^`]+)` \| (.+?) \|$", text, flags=re.M))


def test_full_model_card_states_the_spec(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    metrics = {"step": 7, "loss": -0.125, "kl": 0.0625, "preference": 0.5, "tau": 0.03}
    text = model_card(spec, step=7, metrics=metrics, backend="torch")
    front = _front(text)
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert front["library_name"] == "transformers"
    assert {"nlhf", "nash-md-pg"} <= set(front["tags"]) and "lora" not in front["tags"]
    table = _table(text)
    assert table["algorithm.tau"] == "0.03"
    assert table["algorithm.beta"] == "0.2"
    assert table["training.steps"] == "7"
    assert table["training.lr"] == "2.5e-06"
    assert table["data.limit"] == "64"
    assert table["seed"] == "5"
    assert "policy.lora.r" not in table
    assert table["loss"] == "-0.125" and table["kl"] == "0.0625"
    assert f"nlhf {nlhf.__version__}" in text
    assert "runs/preference-hh/model" in text and "backend `torch`" in text


def test_lora_card_is_a_peft_card_until_merged(tmp_path: Path) -> None:
    spec = _spec(tmp_path, lora={"r": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"]})
    adapter = model_card(spec, step=3)
    assert _front(adapter)["library_name"] == "peft"
    table = _table(adapter)
    assert table["policy.lora.r"] == "4" and table["policy.lora.alpha"] == "8"
    assert table["policy.lora.target_modules"] == '`["q_proj", "v_proj"]`'
    assert "AutoPeftModelForCausalLM" in adapter
    assert "No step was logged" in adapter
    merged = model_card(spec, step=3, merged=True)
    front = _front(merged)
    assert front["library_name"] == "transformers" and "lora" in front["tags"]
    assert "folded in" in merged and "AutoPeftModelForCausalLM" not in merged


def test_local_base_model_passes_on_its_card(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    assert base_model_metadata(str(base)) == {}  # nothing known: no base_model, no licence
    (base / "README.md").write_text("---\nlicense: mit\nbase_model: org/tiny\n---\n# tiny\n")
    assert base_model_metadata(str(base)) == {"base_model": "org/tiny", "license": "mit"}
    text = model_card(_spec(tmp_path, model=str(base)), step=1)
    assert _front(text)["license"] == "mit" and _front(text)["base_model"] == "org/tiny"


def test_packaged_model_licence(tmp_path: Path) -> None:
    models = tmp_path / "runs" / "models" / "smollm2-135m-instruct"
    models.mkdir(parents=True)
    assert base_model_metadata(str(models)) == {"license": "apache-2.0"}


def test_write_and_last_metrics(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n')
    assert last_metrics(out, 1) == {"step": 1, "loss": 1.0}
    assert last_metrics(out, 5) == {"step": 2, "loss": 2.0}
    assert last_metrics(tmp_path / "none", 1) is None
    path = write_model_card(out, _spec(tmp_path), step=2, metrics=last_metrics(out, 2))
    assert read_front_matter(path)["library_name"] == "transformers"
    assert _table(path.read_text())["loss"] == "2"


@pytest.mark.parametrize("text", ["no front matter", "---\nnot: [closed\n---\n", "---\nx: 1\n"])
def test_read_front_matter_of_other_files(tmp_path: Path, text: str) -> None:
    (tmp_path / "README.md").write_text(text)
    assert read_front_matter(tmp_path / "README.md") == {}


def test_offline_card_names_the_pairs_instead_of_a_preference(tmp_path: Path) -> None:
    spec = RunSpec.model_validate(
        {
            "task": "offline",
            "policy": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
            "algorithm": {"name": "dpo", "tau": 0.1},
            "data": {"path": "pairs.jsonl.gz", "format": "hh_rlhf"},
            "training": {"steps": 40, "lr": 1e-4, "batch_size": 8},
            "output": {"dir": str(tmp_path / "dpo")},
        }
    )
    text = model_card(spec, step=40)
    assert _front(text)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "DPO on fixed preference pairs" in text and "arXiv:2305.18290" in text
    assert "the fixed (chosen, rejected) pairs" in text
    assert (
        _table(text)["algorithm.tau"] == "0.1" and _table(text)["data.path"] == "`pairs.jsonl.gz`"
    )
