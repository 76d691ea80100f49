"""Kernel interfaces every backend implements on its own arrays (docs/architecture.md §5, §9).

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
    """Cross-entropy of a pairwise preference model (paper §3; docs/architecture.md §5).

    P(y≻y'|x) = σ(v(x,y,y') − v(x,y',y)) (antisymmetric by construction; for a
    Bradley–Terry reward v(x,y,y') = r(x,y)). With target p = P*(y≻y') (1 for
    (chosen, rejected); soft labels allowed):
    loss = mean_b −[p_b log σ(z_b) + (1−p_b) log σ(−z_b)], z_b = v_fwd_b − v_bwd_b.
    """

    def __call__(self, v_fwd: Array, v_bwd: Array, target: Array) -> Array: ...


class MixtureLogprobs(Protocol):
    """Geometric mixture π̃_β ∝ π^(1−β) μ^β at token level (paper §7):
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


class SequenceLogprobs(Protocol):
    """Sequence log-probability at temperature T (paper §7: the score term's log π(y|x)):
    log π(y_b|x_b) = Σ_n m_bn · log_softmax(ℓ_bn / T)[y_bn]; logits (B, T, V), tokens and
    mask (B, T); returns (B,)."""

    def __call__(self, logits: Array, tokens: Array, mask: Array, temperature: float) -> Array: ...


class OnlineIPOObjective(Protocol):
    """Online IPO (Calandriello et al. 2024, eq. 7 on on-policy pairs; Azar et al. 2023):

    h_b = [log π_θ(y_b) − log μ(y_b)] − [log π_θ(y'_b) − log μ(y'_b)] (sequence log-probs of
    :class:`SequenceLogprobs`), s_b = +1 if P_b ≥ ½ else −1 (so s_b·h_b = h(y_w, y_l)),
    loss = mean_b (s_b·h_b − 1/(2τ))². P and the reference logits carry no gradient.
    Returns ``(loss, metrics)``; metrics holds at least ``preference`` (mean P),
    ``margin`` (mean s·h) and ``kl`` (mean log π_θ/μ(y), the sampled KL estimate).
    """

    def __call__(
        self,
        logits_y: Array,
        reference_logits_y: Array,
        y: Array,
        y_mask: Array,
        logits_y_prime: Array,
        reference_logits_y_prime: Array,
        y_prime: Array,
        y_prime_mask: Array,
        preference: Array,
        tau: float,
        temperature: float,
    ) -> tuple[Array, dict[str, Array]]: ...


class OfflineIPOObjective(Protocol):
    """IPO on fixed preference pairs (Azar et al. 2023, "A general theoretical paradigm to
    understand learning from human preferences", the sampled IPO loss):

    h_b = [log π_θ(y_w) − log μ(y_w)] − [log π_θ(y_l) − log μ(y_l)] (sequence log-probs,
    :class:`SequenceLogprobs`), loss = mean_b (h_b − 1/(2τ))². The reference log-probs are
    computed once per example and cached; they carry no gradient. Shapes (B,). Returns
    ``(loss, metrics)``; metrics (no gradient) hold ``margin`` (mean h), ``accuracy``
    (mean 1[h > 0]), ``chosen_ratio`` and ``rejected_ratio`` (mean log π/μ of y_w, y_l).
    """

    def __call__(
        self,
        policy_chosen: Array,
        policy_rejected: Array,
        reference_chosen: Array,
        reference_rejected: Array,
        tau: float,
    ) -> tuple[Array, dict[str, Array]]: ...


class DPOObjective(Protocol):
    """DPO (Rafailov et al. 2023, "Direct preference optimization", eq. 7) on fixed pairs:
    with h_b as in :class:`OfflineIPOObjective`, loss = mean_b −log σ(β·h_b), computed
    stably for large |β·h|; the cached reference log-probs carry no gradient. Returns
    ``(loss, metrics)`` with the metrics of :class:`OfflineIPOObjective`.
    """

    def __call__(
        self,
        policy_chosen: Array,
        policy_rejected: Array,
        reference_chosen: Array,
        reference_rejected: Array,
        beta: float,
    ) -> tuple[Array, dict[str, Array]]: ...


@runtime_checkable
class OfflinePairLosses(Protocol):
    """Optional extra of a backend's :class:`Kernels`: the offline losses on preference
    pairs (x, y_w, y_l), for training without sampling."""

    offline_ipo_loss: OfflineIPOObjective
    dpo_loss: DPOObjective


class SPPOObjective(Protocol):
    """SPPO (Wu et al. 2024, arXiv 2405.00675), the squared loss on responses y_b ~ π_t:
    loss = mean_b (log π_θ(y_b) − log π_t(y_b) − η·(P̂_b − ½))², with sequence log-probs
    (B,) (:class:`SequenceLogprobs`), ``anchor`` = log π_t (the policy at the start of the
    step) carrying no gradient and P̂_b ≈ P(y_b ≻ π_t) the win rate estimated from K
    samples (:func:`nlhf.training.algorithms.sppo_win_rates`). Returns ``(loss,
    metrics)``; metrics (no gradient) hold ``log_ratio`` (mean log π_θ/π_t) and
    ``win_rate_gap`` (mean |P̂ − ½|)."""

    def __call__(
        self, policy: Array, anchor: Array, win_rate: Array, eta: float
    ) -> tuple[Array, dict[str, Array]]: ...


class INPOObjective(Protocol):
    """INPO's pairwise loss (Zhang et al., ICLR 2025, arXiv 2407.00617) on y, y' ~ π_t,
    from sequence log-probs (B,):
    h_t = log π_θ(y)/π_θ(y') − ητ·log μ(y)/μ(y') − (1 − ητ)·log π_t(y)/π_t(y'),
    loss = mean_b (h_t,b − η·(P_b − ½))² (the paper's (h_t(y_w, y_l) − η/2)² in
    expectation over the label y_w ~ Bernoulli(P), up to a constant). π_t (``anchor_*``)
    and μ (``reference_*``) carry no gradient. Returns ``(loss, metrics)``; metrics hold
    ``preference`` (mean P), ``margin`` (mean h_t), ``kl`` (mean log π_θ/μ(y))."""

    def __call__(
        self,
        policy_y: Array,
        policy_y_prime: Array,
        anchor_y: Array,
        anchor_y_prime: Array,
        reference_y: Array,
        reference_y_prime: Array,
        preference: Array,
        tau: float,
        eta: float,
    ) -> tuple[Array, dict[str, Array]]: ...


class EGPOObjective(Protocol):
    """EGPO's loss (Zhou et al., COLM 2025, arXiv 2503.08942; the online IPO form of its
    extragradient step, as in the authors' code) from sequence log-probs (B,):
    h = log π/μ(y) − log π/μ(y'), loss = mean_b (h_b − (P_b − ½)/τ)²; μ carries no
    gradient. Returns ``(loss, metrics)`` with the metrics of :class:`INPOObjective`."""

    def __call__(
        self,
        policy_y: Array,
        policy_y_prime: Array,
        reference_y: Array,
        reference_y_prime: Array,
        preference: Array,
        tau: float,
    ) -> tuple[Array, dict[str, Array]]: ...


@runtime_checkable
class GameFamilyLosses(Protocol):
    """Optional extra of a backend's :class:`Kernels`: the loss kernels of the LLM forms of
    sppo, inpo/onpo and egpo (mpo trains with :class:`NashMDPGObjective`)."""

    sppo_loss: SPPOObjective
    inpo_loss: INPOObjective
    egpo_loss: EGPOObjective


@runtime_checkable
class PairSample(Protocol):
    """Pairs drawn by :class:`PairGenerator`: ``y``/``y_prime`` (B, T') token ids, ``pad``
    after a row's EOS; ``y_mask``/``y_prime_mask`` (B, T') 1 up to and including the EOS.
    T' ≤ max_new_tokens (a backend may stop the buffer once every row has ended)."""

    y: Array
    y_mask: Array
    y_prime: Array
    y_prime_mask: Array


@runtime_checkable
class PairGenerator(Protocol):
    """Optional extra of a backend's :class:`Kernels`: its causal LM and pair sampler, so the
    conformance kit can draw pairs from a shared checkpoint.

    ``generate_pairs`` draws, for each left-padded prompt x_b, y_b ~ π_θ and y'_b from the
    opponent, token by token, by inverse CDF (:class:`CategoricalSampler`) on
    ``uniforms[row, n]`` (rows 0..B−1 = y, B..2B−1 = y'): y from log_softmax(ℓ_π/T), y'
    from ``mixture`` log π̃_β = log_softmax(((1−β)ℓ_π + βℓ_μ)/T) (paper §7), ``reference``
    (β = 1) or ``policy`` (β = 0). A row that emitted an id of ``eos_token_id`` continues
    with ``pad_token_id`` (mask 0). ``sequence_logits`` returns the (B, T, V) logits that
    predict each completion token, from one forward pass over prompt + completion.
    """

    def load_causal_lm(self, path: str | Path, dtype: str = "float32") -> Any:
        """The backend's model of a transformers checkpoint directory, in ``dtype``."""
        ...

    def generate_pairs(
        self,
        policy: Any,
        reference: Any,
        input_ids: Array,
        attention_mask: Array,
        *,
        beta: float,
        max_new_tokens: int,
        temperature: float,
        eos_token_id: int | Sequence[int],
        pad_token_id: int,
        opponent: str = "mixture",
        uniforms: Array,
    ) -> PairSample: ...

    def sequence_logits(
        self,
        model: Any,
        prompt_ids: Array,
        prompt_mask: Array,
        completion_ids: Array,
        completion_mask: Array,
    ) -> Array: ...


@runtime_checkable
class Kernels(Protocol):
    """The kernel set of a backend, plus array conversion for the conformance kit."""

    preference_loss: PreferenceLoss
    mixture_logprobs: MixtureLogprobs
    sample: CategoricalSampler
    kl: KLRegularizer
    nash_md_pg_loss: NashMDPGObjective
    sequence_logprobs: SequenceLogprobs
    online_ipo_loss: OnlineIPOObjective

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
    ``nlhf_torch.launch`` under DeepSpeed). Backends without it refuse ``--nproc > 1``.
    A ``nodes`` keyword (:class:`nlhf.multinode.Nodes`) makes it a multi-node launch
    (``nlhf run --nnodes N --node-rank R --master-addr H``); without one, ``--nnodes`` is
    refused."""

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
        """``(argv, extra environment)`` of the launcher (this machine's ``nproc``
        processes); raise a located error when ``spec`` cannot run distributed (e.g. no
        ``distributed`` engine)."""
        ...
