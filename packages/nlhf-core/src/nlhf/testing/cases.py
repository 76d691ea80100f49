"""Fixed, seeded inputs of the conformance cases (shared by every backend).

Each builder returns float64 NumPy arrays already rounded to the backend's dtype
(:func:`rounded`), so the oracle sees exactly the numbers the backend sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nlhf.algorithms import numpy_oracle
from nlhf.testing.numpy_lm import NumpyPairs
from nlhf.testing.tolerances import SAMPLER_MARGIN

SEED = 20231201  # arXiv 2312.00886


def rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype`` and back to float64."""
    return np.asarray(x, dtype=np.dtype(dtype)).astype(np.float64)


@dataclass(frozen=True)
class PreferenceInputs:
    v_fwd: np.ndarray  # (B,)
    v_bwd: np.ndarray  # (B,)
    target: np.ndarray  # (B,) in [0, 1]: hard and soft labels


def preference_inputs(dtype: str) -> PreferenceInputs:
    rng = np.random.default_rng(SEED)
    v_fwd = rng.normal(0.0, 2.0, size=8)
    v_bwd = rng.normal(0.0, 2.0, size=8)
    v_fwd[0], v_bwd[0] = 30.0, -25.0  # large margin: log σ must be stable
    target = np.array([1.0, 0.0, 1.0, 1.0, 0.3, 0.5, 0.0, 0.9])
    return PreferenceInputs(*(rounded(a, dtype) for a in (v_fwd, v_bwd, target)))


@dataclass(frozen=True)
class SequenceInputs:
    policy_logits: np.ndarray  # (B, T, V)
    reference_logits: np.ndarray  # (B, T, V)
    tokens: np.ndarray  # (B, T) int64; arbitrary ids at padded positions
    mask: np.ndarray  # (B, T) 0/1 float, suffix padding
    preference: np.ndarray  # (B,) P(y ≻ y')
    row_weights: np.ndarray  # (B,) weights of the rows in gradient checks


def sequence_inputs(dtype: str, batch: int = 3, length: int = 4, vocab: int = 5) -> SequenceInputs:
    rng = np.random.default_rng(SEED + 1)
    shape = (batch, length, vocab)
    policy = rng.normal(0.0, 1.5, size=shape)
    ref = policy + rng.normal(0.0, 0.7, size=shape)  # μ near π, as in training
    tokens = rng.integers(0, vocab, size=(batch, length)).astype(np.int64)
    lengths = [length, 2, length - 1][:batch] + [length] * max(0, batch - 3)
    mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.float64)
    preference = rng.uniform(0.05, 0.95, size=batch)
    weights = rng.uniform(0.5, 1.5, size=batch)
    return SequenceInputs(
        rounded(policy, dtype),
        rounded(ref, dtype),
        tokens,
        mask,
        rounded(preference, dtype),
        rounded(weights, dtype),
    )


@dataclass(frozen=True)
class SamplerInputs:
    logprobs: np.ndarray  # (B, T, V), normalised
    uniforms: np.ndarray  # (B, T), at least SAMPLER_MARGIN from every CDF boundary


def sampler_inputs(dtype: str) -> SamplerInputs:
    rng = np.random.default_rng(SEED + 2)
    logits = rng.normal(0.0, 2.0, size=(4, 6, 7))
    logprobs = rounded(numpy_oracle.log_softmax(logits), dtype)
    uniforms = rng.uniform(size=logprobs.shape[:-1])
    cdf = np.cumsum(np.exp(logprobs), axis=-1)
    for idx in np.ndindex(uniforms.shape):  # redraw uniforms too close to a boundary
        while (
            np.min(np.abs(cdf[idx] - uniforms[idx])) < SAMPLER_MARGIN
            or uniforms[idx] < SAMPLER_MARGIN
        ):
            uniforms[idx] = rng.uniform()
    uniforms[0, 0], uniforms[0, 1] = 0.999, 1e-3  # near both ends of [0, 1)
    uniforms = rounded(uniforms, dtype)
    if numpy_oracle.cdf_margin(logprobs, uniforms) < SAMPLER_MARGIN:  # pragma: no cover
        raise AssertionError("sampler inputs too close to a CDF boundary")
    return SamplerInputs(logprobs, uniforms)


@dataclass(frozen=True)
class TabularInputs:
    matrix: np.ndarray  # (n, n), P + Pᵀ = 1
    mu: np.ndarray  # (n,)
    tau: float
    steps: int


def tabular_inputs() -> TabularInputs:
    rng = np.random.default_rng(SEED + 3)
    n = 4
    a = rng.uniform(-0.45, 0.45, size=(n, n))
    matrix = 0.5 + (a - a.T) / 2
    mu = rng.dirichlet(np.ones(n) * 3)
    return TabularInputs(matrix, mu, tau=0.5, steps=25)


@dataclass(frozen=True)
class IPOInputs:
    y: SequenceInputs  # logits of π and μ over y, the tokens y and their mask
    y_prime: SequenceInputs  # the same over y'
    preference: np.ndarray  # (B,) P(y ≻ y'): above, at and below ½ (s = +1, +1, −1)
    tau: float


def ipo_inputs(dtype: str) -> IPOInputs:
    y = sequence_inputs(dtype)
    rng = np.random.default_rng(SEED + 4)
    shape = y.policy_logits.shape
    policy = rng.normal(0.0, 1.5, size=shape)
    ref = policy + rng.normal(0.0, 0.7, size=shape)
    tokens = rng.integers(0, shape[-1], size=shape[:2]).astype(np.int64)
    mask = y.mask[::-1].copy()  # other lengths than y's
    y_prime = SequenceInputs(
        rounded(policy, dtype), rounded(ref, dtype), tokens, mask, y.preference, y.row_weights
    )
    return IPOInputs(y, y_prime, np.array([0.8, 0.5, 0.2]), tau=0.4)


@dataclass(frozen=True)
class OfflinePairInputs:
    """Sequence log-probs of preference pairs (x, y_w, y_l) under π_θ and the cached μ."""

    policy_chosen: np.ndarray  # (B,) log π_θ(y_w|x)
    policy_rejected: np.ndarray  # (B,) log π_θ(y_l|x)
    reference_chosen: np.ndarray  # (B,) log μ(y_w|x)
    reference_rejected: np.ndarray  # (B,) log μ(y_l|x)
    tau: float  # IPO
    beta: float  # DPO


def offline_pair_inputs(dtype: str) -> OfflinePairInputs:
    rng = np.random.default_rng(SEED + 6)
    b = 6
    pc, pr = -rng.uniform(2.0, 8.0, size=b), -rng.uniform(2.0, 8.0, size=b)
    rc, rr = pc + rng.normal(0.0, 0.5, size=b), pr + rng.normal(0.0, 0.5, size=b)
    # |β·h| = 150: −log σ(β·h) overflows or underflows unless computed stably
    pc[0], rc[0], pr[0], rr[0] = -5.0, -305.0, -6.0, -6.0  # h = +300
    pc[1], rc[1], pr[1], rr[1] = -305.0, -5.0, -6.0, -6.0  # h = −300
    arrays = (rounded(a, dtype) for a in (pc, pr, rc, rr))
    return OfflinePairInputs(*arrays, tau=0.3, beta=0.5)


@dataclass(frozen=True)
class GenerationInputs:
    """A tiny Qwen2 policy and reference (``nlhf.testing.tiny_models``), left-padded
    prompts, and per opponent the pairs the float64 NumPy forward draws from uniforms that
    stay at least ``SAMPLER_MARGIN`` from every CDF boundary along the way."""

    policy: Path
    reference: Path
    input_ids: np.ndarray  # (B, P) int64, left-padded with pad_token_id
    attention_mask: np.ndarray  # (B, P) int64
    eos_token_id: list[int]
    pad_token_id: int
    beta: float
    temperature: float
    max_new_tokens: int
    expected: dict[str, NumpyPairs]  # opponent -> pairs (and the uniforms that drew them)


OPPONENTS = ("mixture", "reference", "policy")
_GENERATION: dict[Path, GenerationInputs] = {}


def generation_inputs(root: Path) -> GenerationInputs:
    """Build (once per ``root``) the checkpoints under ``root`` and the oracle's pairs."""
    root = Path(root)
    if root in _GENERATION:
        return _GENERATION[root]
    from nlhf.testing.numpy_lm import NumpyLM, generate_pairs
    from nlhf.testing.tiny_models import build_tiny_model

    weights = {"std": 0.3, "bias_std": 0.3, "norm_std": 0.3}
    policy = build_tiny_model(root / "policy", "qwen2", seed=SEED, **weights)
    reference = build_tiny_model(
        root / "reference", "qwen2", tokenizer_dir=policy, seed=SEED + 1, **weights
    )
    pi, mu = NumpyLM.load(policy), NumpyLM.load(reference)
    vocab, pad = pi.config["vocab_size"], pi.config["pad_token_id"]
    rng = np.random.default_rng(SEED + 5)
    ids = rng.integers(3, vocab, size=(3, 5)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :1] = 0
    ids[mask == 0] = pad
    eos = list(range(2, vocab, 7))  # many EOS ids, so some rows end early
    beta, temperature, steps = 0.3, 0.8, 6
    expected = {}
    for opponent in OPPONENTS:
        expected[opponent] = generate_pairs(
            pi,
            mu,
            ids,
            mask,
            rng.uniform(size=(6, steps)),
            beta=beta,
            temperature=temperature,
            max_new_tokens=steps,
            eos_token_id=eos,
            pad_token_id=pad,
            opponent=opponent,
            redraw=(rng, SAMPLER_MARGIN),
        )
    lengths = np.concatenate([expected["mixture"].y_mask, expected["mixture"].y_prime_mask])
    if not 0 < lengths.sum(-1).min() < steps == lengths.sum(-1).max():  # pragma: no cover
        raise AssertionError("generation inputs: want rows that end early and rows that do not")
    _GENERATION[root] = GenerationInputs(
        policy, reference, ids, mask, eos, pad, beta, temperature, steps, expected
    )
    return _GENERATION[root]


@dataclass(frozen=True)
class GameFamilyInputs:
    """Sequence log-probs of sampled pairs (y, y') under π_θ, π_t (the policy at the start
    of the step) and μ, with P(y ≻ y'), SPPO's estimated win rates P̂(y ≻ π_t), τ and η:
    the inputs of the sppo, inpo and egpo kernels."""

    policy_y: np.ndarray  # (B,) log π_θ(y|x)
    policy_y_prime: np.ndarray  # (B,) log π_θ(y'|x)
    anchor_y: np.ndarray  # (B,) log π_t(y|x)
    anchor_y_prime: np.ndarray  # (B,) log π_t(y'|x)
    reference_y: np.ndarray  # (B,) log μ(y|x)
    reference_y_prime: np.ndarray  # (B,) log μ(y'|x)
    preference: np.ndarray  # (B,) P(y ≻ y'): above, at and below ½
    win_rate: np.ndarray  # (B,) P̂(y ≻ π_t) ∈ [0, 1]
    tau: float
    eta: float


def game_family_inputs(dtype: str) -> GameFamilyInputs:
    rng = np.random.default_rng(SEED + 7)
    b = 6
    py, pyp = -rng.uniform(2.0, 8.0, size=b), -rng.uniform(2.0, 8.0, size=b)
    # π_t, μ near π_θ but not equal: every term of INPO's h_t matters
    ay, ayp = py + rng.normal(0.0, 0.3, size=b), pyp + rng.normal(0.0, 0.3, size=b)
    ry, ryp = py + rng.normal(0.0, 0.6, size=b), pyp + rng.normal(0.0, 0.6, size=b)
    preference = np.array([0.9, 0.5, 0.2, 0.65, 0.05, 0.4])
    win_rate = np.array([0.8, 0.5, 0.1, 0.6, 0.35, 1.0])
    arrays = (rounded(a, dtype) for a in (py, pyp, ay, ayp, ry, ryp, preference, win_rate))
    return GameFamilyInputs(*arrays, tau=0.3, eta=1.7)
