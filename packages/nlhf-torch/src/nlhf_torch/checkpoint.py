"""The torch blobs of a Nash checkpoint ``checkpoints/step-N/`` (core writes the rest:
``trainer_state.json``, :mod:`nlhf.training.state`).

``torch_state.pt`` holds the optimizer, the LR schedule, the RNG streams (Python, NumPy,
torch CPU and CUDA, and the sampling ``torch.Generator``) and the EMA opponent's weights;
under DeepSpeed the engine's own sharded state (optimizer partitions, fp32 master weights,
step counters) goes to ``deepspeed/`` in the same directory, written by every rank into the
temp dir before the atomic rename.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nlhf.errors import InputError

STATE_FILE = "torch_state.pt"
DEEPSPEED_DIR = "deepspeed"


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, NumPy, torch (CPU, CUDA) and sampling-generator RNG states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def load_state(checkpoint: Path) -> dict[str, Any]:
    """``torch_state.pt`` of ``checkpoint``. It holds NumPy/Python RNG tuples, so it is
    unpickled with ``weights_only=False``: resume only checkpoints you wrote yourself."""
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise InputError(
            f"--resume: checkpoint {checkpoint} has no {STATE_FILE}; it was not written by "
            "the torch backend (resume it with the backend that wrote it)"
        )
    return torch.load(path, map_location="cpu", weights_only=False)
