"""What a backend implements for the core Nash loop (:mod:`nlhf.training.loop`).

The loop decides *what* happens at each optimiser step (prompts, β and τ, preferences,
metrics, checkpoints); a :class:`NashStepper` decides *how* it is computed on its arrays.
The unit of work is one optimiser step over ``grad_accum`` micro-batches:

1. ``sample(step, offset, prompt_ids, beta)`` draws y ~ π_θ and y' from the opponent for
   the batch rows offset.. of one generation call (the stepper owns its randomness: torch
   a seeded ``Generator`` stream, jax ``fold_in(key(seed), step)`` keyed by row), and
   returns the completion tokens the loop decodes and scores; ``select`` cuts a call into
   the micro-batches of the loss;
2. ``accumulate(samples, preference, tau)`` adds the micro-batch's loss gradient, scaled
   by 1/``grad_accum`` (a backend may defer the work to ``apply``: jax fuses gradient and
   update into one jitted call when ``grad_accum`` is 1);
3. ``apply()`` clips (``training.max_grad_norm``) and takes the optimiser step, returning
   the per-micro-batch losses, the loss kernel's metrics and the gradient norm;
4. ``update_ema(decay)`` (nash_ema_pg) moves the opponent θ̄ ← d·θ̄ + (1 − d)·θ.

A step that cannot finish (the preference is unavailable) is undone with
``abandon_step(sampling_state())``, the state taken before its first ``sample``: the loop
then checkpoints the previous step, which a resume replays bit for bit.

Several processes (DeepSpeed ranks) each run the same loop; ``rank``/``world_size`` and
``all_reduce`` let the loop average metrics and gate files on rank 0, and a stepper
samples only its rows of each micro-batch (``Samples.rows``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from nlhf.training.algorithms import AlgorithmRule

Tokens = list[list[int]]
"""Token ids per row (a completion: its sampled tokens up to and including EOS)."""

UniformsFn = Callable[[int, int, int, int], np.ndarray]
"""``(step, offset, rows, tokens) -> (2·rows, tokens)`` uniforms in [0, 1)."""


@dataclass
class Samples:
    """The pairs of one micro-batch as the stepper sampled them."""

    rows: list[int]
    """Indices into the micro-batch's prompts of the rows this process sampled (all rows
    in a single process; this rank's share under DeepSpeed)."""
    y: Tokens
    y_prime: Tokens | None
    """None when the algorithm samples no opponent (rlhf_pg)."""
    payload: Any = None
    """The stepper's own arrays (prompt ids, masks, reference logits...), opaque to core."""
    generated_tokens: int | None = None
    """Tokens this call sampled, when the rows do not list each response once (sppo's
    rows are the K(K−1)/2 pairs of each prompt's K responses); None: the rows' lengths."""


@dataclass
class Update:
    """The outcome of one optimiser step (:meth:`NashStepper.apply`)."""

    losses: list[float]
    """The loss of each micro-batch (this process's rows), before the 1/grad_accum scale."""
    metrics: list[dict[str, float]] = field(default_factory=list)
    """The loss kernel's metrics of each micro-batch (``score``, ``kl``, ``preference``…)."""
    grad_norm: float | None = None
    """‖g‖₂ of the averaged gradient before clipping (None only where the engine does not
    compute it: DeepSpeed without gradient clipping)."""


@runtime_checkable
class PolicyProbe(Protocol):
    """Read-only access to the trained policy and the reference, for a preference's
    end-of-run ``summary`` hook (e.g. an oracle that compares answer probabilities with its
    exact Nash equilibrium). Every process calls it (ZeRO-3 gathers are collective)."""

    tokenizer: Any

    def sequence_logprobs(
        self,
        prompt_ids: Tokens,
        completion_ids: Tokens,
        *,
        model: Literal["policy", "reference"],
        temperature: float,
    ) -> np.ndarray:
        """Σ_n log π(y_n|x, y_<n) at ``temperature`` for each (prompt, completion) row,
        float64 of shape (rows,)."""
        ...

    def sample_completions(
        self, prompt_ids: Tokens, *, temperature: float, max_new_tokens: int, seed: int
    ) -> Tokens:
        """One completion y ~ π_θ(·|x) per row (seeded), tokens up to and including EOS."""
        ...


@runtime_checkable
class NashStepper(PolicyProbe, Protocol):
    """A backend's side of the Nash loop (see the module docstring). Built by a factory
    ``make(spec, checkpoint, plugins)`` that loads the models (from ``checkpoint`` on
    resume, then restores the blobs it wrote there), the tokenizer and the preference."""

    rank: int
    world_size: int
    device: str
    decode_path: str
    """How pairs were sampled, for ``summary.json``: e.g. ``"fused"`` or ``"hf: <why the
    fused path did not engage>"`` (torch), ``"jax: jitted while_loop"``."""
    uniforms: UniformsFn | None
    """Test seam of the trainer conformance kit: when set, ``uniforms(step, offset, rows,
    tokens)`` gives the (2·rows, tokens) draws in [0, 1) (rows of y, then of y') that
    replace the stepper's own stream, so every backend samples the same tokens."""
    preference: Any
    """P(y≻y'|x) on texts: ``prob(prompts, ys, yps)`` and, for rlhf_pg, ``reward(prompts,
    ys)``, each returning float64 NumPy of shape (rows,)."""

    def sample(self, step: int, offset: int, prompt_ids: Tokens, beta: float) -> Samples:
        """Pairs for the step's batch rows offset..offset+len(prompt_ids)."""
        ...

    def select(self, samples: Samples, start: int, stop: int) -> Samples:
        """Rows start..stop of a generation call's samples: one micro-batch of the loss
        (used when ``training.generation.batch_size`` spans several micro-batches)."""
        ...

    def accumulate(self, samples: Samples, preference: np.ndarray, tau: float) -> None: ...

    def apply(self) -> Update: ...

    def update_ema(self, decay: float) -> None: ...

    def sampling_state(self) -> Any:
        """What ``sample`` consumes and a checkpoint saves (torch: the generator's state;
        None where the draws are a pure function of the step, as on jax)."""
        ...

    def abandon_step(self, sampling_state: Any) -> None:
        """Undo the current step before ``apply``: drop its accumulated gradients, losses
        and metrics and restore ``sampling_state``, so a checkpoint written next holds the
        previous step exactly."""
        ...

    def all_reduce(self, values: Sequence[float], op: Literal["sum", "max"] = "sum") -> list[float]:
        """Sum (or max) over processes, float64; the identity in a single process."""
        ...

    def describe(self) -> dict[str, Any] | None:
        """The distributed layout (``{"engine": "deepspeed", "zero_stage": 2,
        "world_size": 2}``, a jax mesh), or None for one plain device."""
        ...

    def save(self, final: Path, write_core: Callable[[Path], None]) -> None:
        """Write checkpoint directory ``final`` atomically (all processes take part): the
        weights (transformers-loadable safetensors, or a peft adapter), the tokenizer and
        the stepper's blobs (optimizer, RNG, EMA, engine shards), plus ``write_core(tmp)``
        (the core trainer state) once, before the rename."""
        ...


StepperFactory = Callable[[Any, "Path | None", Any], NashStepper]
"""``make(spec, checkpoint_or_None, plugins) -> NashStepper``."""

__all__ = [
    "AlgorithmRule",
    "NashStepper",
    "PolicyProbe",
    "Samples",
    "StepperFactory",
    "Tokens",
    "UniformsFn",
    "Update",
]
