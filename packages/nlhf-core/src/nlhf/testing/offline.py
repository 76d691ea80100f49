"""Oracles and fixtures for the ``task: offline`` trainers (:mod:`nlhf.training.offline`),
shared by every backend's tests: a tiny policy, a different tiny reference with the same
tokenizer, a pairs file, and the float64 NumPy log-probs, loss and directional derivative
of the loss in parameter space (central differences of :class:`~nlhf.testing.numpy_lm.NumpyLM`),
computed row by row without padding, independently of the backends' batching."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nlhf.algorithms import numpy_oracle
from nlhf.testing.numpy_lm import NumpyLM
from nlhf.testing.tiny_models import build_tiny_model

PAIRS = [
    {"prompt": "Which fruit?", "chosen": " apple", "rejected": " banana"},
    {"prompt": "How do I bake bread?", "chosen": " Mix flour and water.", "rejected": " No."},
    {"prompt": "Say hi", "chosen": " hi", "rejected": " I cannot help with that."},
    {"prompt": "Count", "chosen": " 1 2 3", "rejected": " 3 2 1"},
    {"prompt": "Game", "chosen": " rock", "rejected": " paper scissors"},
    {"prompt": "The quick brown fox", "chosen": " jumps.", "rejected": " sleeps over the dog."},
]
"""Six (prompt, chosen, rejected) pairs in the words of the tiny tokenizer's corpus."""


def build_offline_fixture(
    root: Path, pairs: Sequence[Mapping[str, str]] = PAIRS
) -> dict[str, Path]:
    """``policy`` (seed 0) and ``reference`` (seed 1, the policy's tokenizer) tiny Llamas and
    ``pairs.jsonl`` under ``root``; returns their paths."""
    root = Path(root)
    policy = build_tiny_model(root / "policy", "llama", seed=0, std=0.2)
    reference = build_tiny_model(root / "reference", "llama", tokenizer_dir=policy, seed=1, std=0.2)
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(dict(p)) + "\n" for p in pairs), encoding="utf-8")
    return {"policy": policy, "reference": reference, "pairs": data}


def numpy_pair_logprobs(
    lm: NumpyLM,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    temperature: float,
) -> np.ndarray:
    """log π(y|x) = Σ_n log_softmax(ℓ_n/T)[y_n] of each (prompt, response), float64, one
    unpadded row at a time."""
    out = []
    for prompt, response in zip(prompts, responses, strict=True):
        ids = np.asarray([list(prompt) + list(response)], dtype=np.int64)
        logits = lm.logits(ids, np.ones_like(ids))[0]
        start = len(prompt) - 1
        predicting = logits[start : start + len(response)][None]
        tokens = np.asarray([list(response)], dtype=np.int64)
        out.append(
            numpy_oracle.sequence_logprobs(predicting, tokens, np.ones_like(tokens), temperature)[0]
        )
    return np.asarray(out, dtype=np.float64)


def numpy_offline_loss(
    name: str,
    policy: NumpyLM,
    reference: NumpyLM,
    tokens: Any,
    tau: float,
    temperature: float = 1.0,
) -> float:
    """The float64 loss of ``dpo`` / ``ipo`` on :class:`nlhf.training.offline.PairTokens`
    ``tokens`` (:mod:`nlhf.algorithms.numpy_oracle`)."""
    kernel = numpy_oracle.dpo_loss if name == "dpo" else numpy_oracle.offline_ipo_loss
    logp = [
        numpy_pair_logprobs(model, tokens.prompt, responses, temperature)
        for model in (policy, reference)
        for responses in (tokens.chosen, tokens.rejected)
    ]
    loss, _ = kernel(logp[0], logp[1], logp[2], logp[3], tau)
    return float(loss)


def directional_derivative(
    name: str,
    policy: NumpyLM,
    reference: NumpyLM,
    tokens: Any,
    tau: float,
    direction: Mapping[str, np.ndarray],
    eps: float = 1e-5,
    temperature: float = 1.0,
) -> float:
    """d/dε L(θ + ε·v) at ε = 0 by central differences, (L(θ+εv) − L(θ−εv)) / 2ε, in float64
    (truncation error O(ε²), rounding O(1e-16/ε))."""

    def at(sign: float) -> float:
        weights = dict(policy.weights)
        for key, v in direction.items():
            weights[key] = weights[key] + sign * eps * v
        return numpy_offline_loss(
            name, replace(policy, weights=weights), reference, tokens, tau, temperature
        )

    return (at(1.0) - at(-1.0)) / (2 * eps)


def random_direction(gradients: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded unit direction v in parameter space, with the names and shapes of ``gradients``."""
    rng = np.random.default_rng(seed)
    v = {k: rng.standard_normal(g.shape) for k, g in sorted(gradients.items())}
    norm = np.sqrt(sum(float(np.sum(x * x)) for x in v.values()))
    return {k: x / norm for k, x in v.items()}
