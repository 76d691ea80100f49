"""A one-file third-party nlhf backend: the kernels of nlhf's Protocols in NumPy float32.

Written independently of :mod:`nlhf.algorithms.numpy_oracle` (it is a second
implementation the conformance kit can catch disagreeing). Registered through the
entry point ``[project.entry-points.nlhf] example = "nlhf_example_backend"``.

Gradients: complex-step differentiation in float64, f'(x) = Im f(x + ih)/h
(a finite difference without cancellation), cast back to float32. Every kernel below
therefore computes in the dtype of its inputs (float32, or complex128 inside ``grad``)
and writes stop-gradients as ``Re(·)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import nlhf
import numpy as np
from nlhf.spec.capabilities import Capabilities, require

__version__ = "0.1.0"


def _work(x: Any) -> np.ndarray:
    a = np.asarray(x)
    return a if np.iscomplexobj(a) or a.dtype == np.float64 else a.astype(np.float32)


def _stop(x: np.ndarray) -> np.ndarray:
    return x.real if np.iscomplexobj(x) else x


def _logsoftmax(x: np.ndarray) -> np.ndarray:
    top = x.real.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(x - top).sum(axis=-1, keepdims=True)) + top
    return x - lse


def _softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + e^x) = max(x, 0) + log1p(e^{−|x|}), |·| and max taken on the real part."""
    neg = x.real < 0
    absx = np.where(neg, -x, x)
    return np.where(neg, 0, x) + np.log1p(np.exp(-absx))


def _pick(logp: np.ndarray, tokens: Any) -> np.ndarray:
    idx = np.asarray(tokens).astype(np.intp)
    b, t = np.indices(idx.shape)
    return logp[b, t, idx]


class ExampleKernels:
    """NumPy kernels; float32 in, float32 out."""

    def preference_loss(self, v_fwd: Any, v_bwd: Any, target: Any) -> np.ndarray:
        # −[p log σ(z) + (1−p) log σ(−z)] = p·softplus(−z) + (1−p)·softplus(z)
        z = _work(v_fwd) - _work(v_bwd)
        p = _work(target)
        return (p * _softplus(-z) + (1 - p) * _softplus(z)).mean()

    def mixture_logprobs(
        self, policy_logits: Any, reference_logits: Any, beta: float, temperature: float
    ) -> np.ndarray:
        pol, ref = _work(policy_logits), _work(reference_logits)
        return _logsoftmax((pol + beta * (ref - pol)) / temperature)

    def sample(self, logprobs: Any, uniforms: Any) -> np.ndarray:
        probs = np.exp(_work(logprobs).real)
        flat = probs.reshape(-1, probs.shape[-1])
        u = np.asarray(uniforms).reshape(-1)
        out = np.empty(u.shape, dtype=np.int64)
        for i in range(u.size):  # walk the CDF row by row
            acc, tok = 0.0, flat.shape[1] - 1
            for v in range(flat.shape[1]):
                acc += flat[i, v]
                if acc > u[i]:
                    tok = v
                    break
            out[i] = tok
        return out.reshape(np.shape(uniforms))

    def kl(
        self,
        policy_logits: Any,
        reference_logits: Any,
        tokens: Any,
        mask: Any,
        estimator: str,
        temperature: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        logp = _logsoftmax(_work(policy_logits) / temperature)
        logq = _logsoftmax(_work(reference_logits) / temperature)
        m = _work(mask)
        if estimator == "exact":
            per_pos = (np.exp(logp) * (logp - logq)).sum(-1)
            v = (per_pos * m).sum(-1)
            return v, v
        lp_y = _pick(logp, tokens)
        diff = (lp_y - _pick(logq, tokens)) * m
        if estimator == "k3":
            v = ((np.exp(-diff) - 1 + diff) * m).sum(-1)
            return v, v
        if estimator == "sampled":
            total = diff.sum(-1, keepdims=True)
            before = np.cumsum(diff, axis=-1) - diff  # Σ_{m<n}
            to_go = _stop(total - before)  # Σ_{m≥n}, no gradient
            return (lp_y * m * to_go).sum(-1), diff.sum(-1)
        raise ValueError(f"unknown KL estimator {estimator!r}")

    def nash_md_pg_loss(
        self,
        policy_logits: Any,
        reference_logits: Any,
        tokens: Any,
        mask: Any,
        preference: Any,
        tau: float,
        temperature: float,
        estimator: str,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        m = _work(mask)
        pref = _stop(_work(preference))
        lp_y = _pick(_logsoftmax(_work(policy_logits) / temperature), tokens)
        score = (0.5 - pref) * (lp_y * m).sum(-1)
        surrogate, value = self.kl(
            policy_logits, reference_logits, tokens, mask, estimator, temperature
        )
        loss = (score + tau * surrogate).mean()
        return loss, {"score": score.mean(), "kl": value.mean(), "preference": pref.mean()}

    def sequence_logprobs(
        self, logits: Any, tokens: Any, mask: Any, temperature: float
    ) -> np.ndarray:
        lp_y = _pick(_logsoftmax(_work(logits) / temperature), tokens)
        return (lp_y * _work(mask)).sum(-1)

    def online_ipo_loss(
        self,
        logits_y: Any,
        reference_logits_y: Any,
        y: Any,
        y_mask: Any,
        logits_y_prime: Any,
        reference_logits_y_prime: Any,
        y_prime: Any,
        y_prime_mask: Any,
        preference: Any,
        tau: float,
        temperature: float,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        # h = log π/μ(y) − log π/μ(y'); IPO's (h(y_w, y_l) − 1/(2τ))² averaged over the
        # label y_w ~ Bernoulli(P) is (h − (P − ½)/τ)² up to a constant; margin: s·h, s = ±1
        def log_ratio(pol: Any, ref: Any, tokens: Any, mask: Any) -> np.ndarray:
            ref_lp = self.sequence_logprobs(_stop(_work(ref)), tokens, mask, temperature)
            return self.sequence_logprobs(pol, tokens, mask, temperature) - ref_lp

        ratio_y = log_ratio(logits_y, reference_logits_y, y, y_mask)
        h = ratio_y - log_ratio(logits_y_prime, reference_logits_y_prime, y_prime, y_prime_mask)
        pref = _stop(_work(preference))
        margin = np.where(pref < 0.5, -h, h)
        loss = ((h - (pref - 0.5) / tau) ** 2).mean()
        return loss, {"preference": pref.mean(), "margin": margin.mean(), "kl": ratio_y.mean()}

    def asarray(self, x: Any, dtype: str = "float32") -> np.ndarray:
        return np.array(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def grad(self, fn: Callable[[np.ndarray], Any], x: Any) -> np.ndarray:
        base = np.asarray(x)
        point = base.astype(np.complex128)
        out = np.zeros(base.shape, dtype=np.float64)
        h = 1e-20
        for idx in np.ndindex(base.shape):
            point[idx] += 1j * h
            out[idx] = np.imag(fn(point)) / h
            point[idx] -= 1j * h
        return out.astype(base.dtype)


CAPABILITIES = Capabilities()
"""Kernels only: no task, so ``nlhf validate`` and ``nlhf run`` refuse every spec for this
backend, each with a located message. A backend that trains lists what it runs, e.g.
``Capabilities(tabular_tasks=("nash",), tabular_algorithms=("nash_md",))``."""


class ExampleBackend:
    """Backend ``example``: kernels only (``train`` runs no spec)."""

    name = "example"
    capabilities = CAPABILITIES

    def __init__(self) -> None:
        self.kernels = ExampleKernels()

    def train(self, spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
        require(spec, self.name, self.capabilities)  # refuses every spec
        raise NotImplementedError("the example backend provides kernels only")


@nlhf.hookimpl
def nlhf_register_backends(register: Any) -> None:
    register(
        "example",
        ExampleBackend,
        description="example third-party NumPy float32 kernels",
        capabilities=CAPABILITIES,
    )
