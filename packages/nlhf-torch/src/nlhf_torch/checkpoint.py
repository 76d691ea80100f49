"""Checkpoints of the torch trainer (issue 3, part 6): ``checkpoints/step-N/``.

Layout: the policy's ``save_pretrained`` output (``model.safetensors`` + config; with
LoRA the adapter), the tokenizer, and ``trainer_state.pt`` holding everything needed to
continue bit-exactly: optimizer, LR scheduler, torch CPU (and CUDA) RNG, the sampling
generator's state, Python and NumPy RNG states, the EMA opponent's parameters, the step
and the position in the prompt order. The directory is written to a temp dir and renamed
(:func:`nlhf.runio.atomic_directory`), so a crash never leaves a half-written checkpoint.

Under DeepSpeed (:mod:`nlhf_torch.distributed`) the weights are gathered into the same
consolidated ``model.safetensors`` and the engine's own sharded state (optimizer
partitions, fp32 master weights, LR schedule, step counters) goes to ``deepspeed/`` in the
same directory, written by every rank into the temp dir before the rename.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nlhf.errors import NLHFError
from nlhf.runio import atomic_directory, checkpoint_dir, latest_checkpoint, prune_checkpoints

STATE_FILE = "trainer_state.pt"
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


def save_checkpoint(
    output: Path,
    step: int,
    *,
    policy: Any,
    tokenizer: Any,
    trainer_state: dict[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Write ``output/checkpoints/step-{step}/`` atomically, then prune to ``keep_last``."""
    final = checkpoint_dir(output, step)
    with atomic_directory(final) as tmp:
        write_checkpoint_files(tmp, step, policy=policy, tokenizer=tokenizer, state=trainer_state)
    prune_checkpoints(output, keep_last)
    return final


def write_checkpoint_files(
    directory: Path, step: int, *, policy: Any, tokenizer: Any, state: dict[str, Any]
) -> None:
    """The weights (safetensors), tokenizer and ``trainer_state.pt`` into ``directory``."""
    policy.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    torch.save({"step": step, **state}, Path(directory) / STATE_FILE)


def load_trainer_state(path: Path) -> dict[str, Any]:
    """Read ``trainer_state.pt`` of a checkpoint written by :func:`save_checkpoint`.

    It holds NumPy/Python RNG tuples, so it is unpickled with ``weights_only=False``:
    load only checkpoints you wrote yourself.
    """
    file = Path(path) / STATE_FILE
    if not file.exists():
        raise NLHFError(f"checkpoint {path} has no {STATE_FILE}; it was not written by nlhf-torch")
    return torch.load(file, map_location="cpu", weights_only=False)


def resume_point(output: Path) -> tuple[int, Path]:
    """The latest complete checkpoint under ``output``, or a clear error when none exists."""
    found = latest_checkpoint(output)
    if found is None:
        raise NLHFError(
            f"--resume: no checkpoint under {Path(output) / 'checkpoints'}; run without "
            f"--resume to start fresh (and set output.checkpoint_every to save checkpoints)"
        )
    return found
