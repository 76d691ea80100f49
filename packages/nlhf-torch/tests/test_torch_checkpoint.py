"""nlhf_torch.checkpoint: atomic save, RNG round trip, pruning, clear errors."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from nlhf.errors import NLHFError
from nlhf.runio import list_checkpoints
from nlhf_torch.checkpoint import (
    load_trainer_state,
    resume_point,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from nlhf_torch.tiny import build_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("ck") / "m", "llama", vocab_size=280)


def _draws(gen: torch.Generator) -> tuple:
    return (
        random.random(),
        float(np.random.rand()),
        torch.rand(3).tolist(),
        torch.rand(3, generator=gen).tolist(),
    )


def test_rng_state_round_trip() -> None:
    gen = torch.Generator().manual_seed(5)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = rng_state(gen)
    first = _draws(gen)
    _draws(gen)  # move every stream on
    set_rng_state(state, gen)
    assert _draws(gen) == first


def test_save_load_and_prune(model_dir: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.tensor([[3, 4, 5]])).logits.sum().backward()
    opt.step()
    for step in (1, 2, 3):
        path = save_checkpoint(
            tmp_path,
            step,
            policy=model,
            tokenizer=tok,
            trainer_state={"optimizer": opt.state_dict(), "position": 7 * step},
            keep_last=2,
        )
    assert path == tmp_path / "checkpoints" / "step-3"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    assert not any(p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())
    state = load_trainer_state(path)
    assert state["step"] == 3 and state["position"] == 21
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(state["optimizer"])
    exp_avg = next(iter(opt.state.values()))["exp_avg"]
    assert torch.equal(next(iter(opt2.state.values()))["exp_avg"], exp_avg)
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), reloaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resume_point(tmp_path) == (3, path)


def test_failed_save_leaves_no_checkpoint(model_dir: Path, tmp_path: Path) -> None:
    class Broken:
        def save_pretrained(self, *_a: object, **_k: object) -> None:
            raise RuntimeError("disk full")

    tok = AutoTokenizer.from_pretrained(model_dir)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, 1, policy=Broken(), tokenizer=tok, trainer_state={})
    assert list_checkpoints(tmp_path) == []
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_resume_point_errors(tmp_path: Path) -> None:
    with pytest.raises(NLHFError, match="no checkpoint"):
        resume_point(tmp_path)
    (tmp_path / "checkpoints" / "step-4").mkdir(parents=True)
    with pytest.raises(NLHFError, match=r"trainer_state\.pt"):
        load_trainer_state(tmp_path / "checkpoints" / "step-4")
