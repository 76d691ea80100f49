"""nlhf_torch.checkpoint: the RNG round trip and the torch blob's clear errors (the
checkpoint directory itself is written by the core loop: tests/test_torch_trainer.py)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from nlhf.errors import NLHFError
from nlhf_torch.checkpoint import STATE_FILE, load_state, rng_state, set_rng_state


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


def test_load_state_of_a_foreign_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "step-4").mkdir()
    with pytest.raises(NLHFError, match=STATE_FILE.replace(".", r"\.")):
        load_state(tmp_path / "step-4")
