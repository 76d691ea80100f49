"""Kernel interfaces every backend implements on its own arrays (DESIGN §4, §5).

Shapes: B batch, T completion tokens, V vocabulary. ``mask[b, n] = 1`` for real
completion tokens (up to and including EOS), 0 for padding after EOS. Sequence
quantities are sums over tokens; batch quantities are means over rows. All
log-probabilities use the sampling temperature: log π(·) = log_softmax(logits / T).
The float64 NumPy oracle of every kernel is :mod:`nlhf.algorithms.numpy_oracle`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from nlhf.algorithms.params import KLEstimator

Array = Any  # a backend's array type (numpy.ndarray, torch.Tensor, jax.Array)


class PreferenceLoss(Protocol):
    """Cross-entropy of a pairwise preference model (DESIGN §5, paper §3).

    P(y≻y'|x) = σ(v(x,y,y') − v(x,y',y)) (antisymmetric by construction; for a
    Bradley–Terry reward v(x,y,y') = r(x,y)). With target p = P*(y≻y') (1 for
    (chosen, rejected); soft labels allowed):
    loss = mean_b −[p_b log σ(z_b) + (1−p_b) log σ(−z_b)], z_b = v_fwd_b − v_bwd_b.
    """

    def __call__(self, v_fwd: Array, v_bwd: Array, target: Array) -> Array: ...


class MixtureLogprobs(Protocol):
    """Geometric mixture π̃_β ∝ π^(1−β) μ^β at token level (paper §7, DESIGN §5):
    log π̃(·|x,y_<n) = log_softmax(((1−β)·ℓ_π + β·ℓ_μ) / T), over the last axis."""

    def __call__(
        self, policy_logits: Array, reference_logits: Array, beta: float, temperature: float
    ) -> Array: ...


class CategoricalSampler(Protocol):
    """Inverse-CDF sampling with injected uniforms u ∈ [0, 1): token = the smallest v with
    Σ_{w≤v} p_w > u (clamped to V−1). Shapes: logprobs (..., V), uniforms (...)."""

    def __call__(self, logprobs: Array, uniforms: Array) -> Array: ...


class KLRegularizer(Protocol):
    """KL(π_θ‖μ) of sampled sequences, per row; returns ``(surrogate, value)`` of shape (B,).

    With ℓ_n = log π_θ(y_n|·) − log μ(y_n|·) (both at temperature T):
    - ``sampled``: value = Σ_n ℓ_n; surrogate = Σ_n log π_θ(y_n|·)·sg(Σ_{m≥n} ℓ_m)
      (score function with reward-to-go; its gradient is unbiased for ∇ KL).
    - ``k3``: value = surrogate = Σ_n (e^{−ℓ_n} − 1 + ℓ_n) (Schulman's k3).
    - ``exact``: value = surrogate = Σ_n Σ_v π(v|·)(log π(v|·) − log μ(v|·)) over the
      full vocabulary at each sampled prefix. Unbiased for the sequence KL, but its
      gradient omits the effect of earlier tokens on later states.
    """

    def __call__(
        self,
        policy_logits: Array,
        reference_logits: Array,
        tokens: Array,
        mask: Array,
        estimator: KLEstimator,
        temperature: float,
    ) -> tuple[Array, Array]: ...


class NashMDPGObjective(Protocol):
    """Nash-MD-PG loss (paper §7, eq. for ∇ of the regularised preference game):

    loss = mean_b [ −(P_b − ½)·Σ_n m_bn log π_θ(y_bn|·) + τ·KL_b ]
    where P_b = P(y_b ≻ y'_b | x_b) is a constant (no gradient) and KL_b the surrogate of
    :class:`KLRegularizer`. Returns ``(loss, metrics)``; metrics holds at least
    ``score`` (the first term), ``kl`` (mean KL value), ``preference`` (mean P).
    """

    def __call__(
        self,
        policy_logits: Array,
        reference_logits: Array,
        tokens: Array,
        mask: Array,
        preference: Array,
        tau: float,
        temperature: float,
        estimator: KLEstimator,
    ) -> tuple[Array, dict[str, Array]]: ...


@runtime_checkable
class Kernels(Protocol):
    """The kernel set of a backend, plus array conversion for the conformance kit."""

    preference_loss: PreferenceLoss
    mixture_logprobs: MixtureLogprobs
    sample: CategoricalSampler
    kl: KLRegularizer
    nash_md_pg_loss: NashMDPGObjective

    def asarray(self, x: Any, dtype: str = "float64") -> Array: ...

    def to_numpy(self, x: Array) -> Any: ...

    def grad(self, fn: Any, x: Array) -> Array:
        """Gradient of the scalar ``fn(x)`` with respect to ``x`` (same shape as x)."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A compute backend, registered via ``nlhf_register_backends``."""

    name: str
    kernels: Kernels | None

    def train(self, spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
        """Run ``spec`` (a :class:`nlhf.spec.RunSpec`), writing ``spec.resolved.yaml``,
        ``metrics.jsonl``, ``summary.json`` and checkpoints under ``output``; return the
        summary."""
        ...


@runtime_checkable
class DistributedLaunch(Protocol):
    """Optional extra of a :class:`Backend`: how ``nlhf run --nproc N`` (N > 1) starts
    the run on N local processes (the torch backend: torch's elastic launcher running
    ``nlhf_torch.launch`` under DeepSpeed). Backends without it refuse ``--nproc > 1``."""

    def launch_command(
        self,
        spec: Any,
        spec_path: str | Path,
        nproc: int,
        *,
        overrides: Sequence[str] = (),
        output: str | Path | None = None,
        resume: bool = False,
    ) -> tuple[list[str], dict[str, str]]:
        """``(argv, extra environment)`` of the launcher; raise a located error when
        ``spec`` cannot run distributed (e.g. no ``distributed`` engine)."""
        ...
