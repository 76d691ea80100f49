"""nlhf_torch.models: policy/reference/tokenizer loading and clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from nlhf.errors import InputError
from nlhf.spec import RunSpec
from nlhf_torch.models import load_models
from nlhf_torch.tiny import build_tiny_model, build_tokenizer


def _spec(model: str, **extra: Any) -> RunSpec:
    return RunSpec.model_validate(
        {
            "policy": {"model": model, **extra.pop("policy", {})},
            "preference": {"name": "oracle", "function": "population"},
            "data": {"path": "unused.jsonl"},
            "algorithm": {"name": "nash_md_pg"},
            **extra,
        }
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("m") / "llama", "llama", vocab_size=300)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_reference_is_frozen_copy_of_initial_policy(tmp_path: Path, arch: str) -> None:
    path = build_tiny_model(tmp_path / arch, arch, vocab_size=300, seed=2)
    models = load_models(_spec(str(path)))
    assert models.reference is not models.policy
    pol, ref = dict(models.policy.named_parameters()), dict(models.reference.named_parameters())
    assert pol.keys() == ref.keys()
    assert all(torch.equal(pol[k], ref[k]) for k in pol)
    assert all(p.data_ptr() != ref[k].data_ptr() for k, p in pol.items())
    assert not any(p.requires_grad for p in ref.values())
    assert all(p.requires_grad for p in pol.values())
    assert models.policy.training and not models.reference.training
    assert models.tokenizer.pad_token_id is not None


def test_separate_reference_and_dtype(tiny: Path, tmp_path: Path) -> None:
    other = build_tiny_model(tmp_path / "ref", "llama", tokenizer_dir=tiny, seed=7)
    models = load_models(
        _spec(str(tiny), policy={"dtype": "bfloat16"}, reference={"model": str(other)})
    )
    assert next(models.policy.parameters()).dtype == torch.bfloat16
    assert next(models.reference.parameters()).dtype == torch.bfloat16  # defaults to policy's
    w_pol = models.policy.get_output_embeddings().weight.float()
    w_ref = models.reference.get_output_embeddings().weight.float()
    assert not torch.equal(w_pol, w_ref)


def test_missing_model_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"policy\.model: model path not found"):
        load_models(_spec(str(tmp_path / "absent")))


def test_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"has no \w*config\.json"):
        load_models(_spec(str(tmp_path / "empty")))


def test_tokenizer_larger_than_model_vocabulary(tiny: Path, tmp_path: Path) -> None:
    big = tmp_path / "big-tok"
    corpus = [f"word{i} token{i * 7} piece{i * 13}" for i in range(400)]
    tok = build_tokenizer(big, corpus, vocab_size=900)
    assert len(tok) > 300
    with pytest.raises(InputError, match=r"tokenizer has \d+ tokens but the model"):
        load_models(_spec(str(tiny), policy={"tokenizer": str(big)}))


def test_reference_vocabulary_mismatch(tiny: Path, tmp_path: Path) -> None:
    other = build_tiny_model(tmp_path / "other", "llama", vocab_size=280)
    with pytest.raises(InputError, match=r"reference\.model: vocabulary"):
        load_models(_spec(str(tiny), reference={"model": str(other)}))


def test_lora_without_peft_is_a_clear_error(tiny: Path) -> None:
    pytest.importorskip("torch")
    try:
        import peft  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="pip install"):
            load_models(_spec(str(tiny), policy={"lora": {"r": 4}}))
    else:  # pragma: no cover - peft installed: the adapter-disabled reference is checked
        models = load_models(_spec(str(tiny), policy={"lora": {"r": 4}}))
        ids = torch.tensor([[3, 4, 5]])
        with torch.no_grad():
            for p in models.policy.parameters():
                if p.requires_grad:
                    p.add_(0.5)
            ref = models.reference(input_ids=ids).logits
            pol = models.policy(input_ids=ids).logits
        assert not torch.allclose(ref, pol)
