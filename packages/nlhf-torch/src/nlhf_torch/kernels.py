"""Torch kernels of nlhf (:class:`nlhf.algorithms.protocols.Kernels`, docs/architecture.md §5).

Every kernel is a module-level function (the trainer imports them directly) and
:class:`TorchKernels` bundles them for the backend object and the conformance kit.
Shapes follow :mod:`nlhf.algorithms.protocols`: B rows, T completion tokens, V vocabulary;
``mask[b, n] = 1`` for real completion tokens (EOS included). All log-probabilities use
the sampling temperature: log π(·) = log_softmax(logits / T).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # keep this module importable without pydantic
    from nlhf.algorithms.params import KLEstimator

__all__ = [
    "TorchKernels",
    "chunked_logits_logprobs",
    "chunked_sequence_logprobs",
    "chunked_token_logprobs",
    "dpo_loss",
    "egpo_loss",
    "exact_terms",
    "head_token_logprobs",
    "inpo_loss",
    "kl",
    "kl_from_logprobs",
    "mixture_logprobs",
    "nash_md_pg_loss",
    "nash_md_pg_loss_from_logprobs",
    "offline_ipo_loss",
    "online_ipo_loss",
    "online_ipo_loss_from_logprobs",
    "preference_loss",
    "sample",
    "sequence_logprobs",
    "sppo_loss",
    "token_logprobs",
]

_KL_ESTIMATORS = ("sampled", "k3", "exact")


def _float(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are upcast to float32; float32/float64 are kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def preference_loss(v_fwd: torch.Tensor, v_bwd: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a pairwise preference model (paper §3).

    z = v_fwd − v_bwd, P(y≻y') = σ(z);
    loss = mean_b −[p_b log σ(z_b) + (1 − p_b) log σ(−z_b)] (soft targets p allowed).
    """
    z = v_fwd - v_bwd
    target = torch.as_tensor(target, dtype=z.dtype, device=z.device)
    return -(target * F.logsigmoid(z) + (1.0 - target) * F.logsigmoid(-z)).mean()


def mixture_logprobs(
    policy_logits: torch.Tensor,
    reference_logits: torch.Tensor,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    """Geometric mixture π̃_β ∝ π^(1−β) μ^β (arXiv:2312.00886 v4, App. F.3, eq. 15) at token
    level (its App. F.1):
    log π̃(·|x,y_<n) = log_softmax(((1−β)·ℓ_π + β·ℓ_μ) / T) over the last axis."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1]; got {beta}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    mixed = (1.0 - beta) * _float(policy_logits) + beta * _float(reference_logits)
    return torch.log_softmax(mixed / temperature, dim=-1)


def sample(logprobs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling (protocols.CategoricalSampler): the smallest v with
    Σ_{w≤v} p_w > u, clamped to V−1. The CDF is accumulated in float64 so float32 and
    float64 inputs pick the same token away from CDF boundaries. Returns int64 (...)."""
    cdf = torch.cumsum(torch.exp(logprobs.to(torch.float64)), dim=-1)
    u = torch.as_tensor(uniforms, device=cdf.device).to(torch.float64)
    idx = (cdf <= u.unsqueeze(-1)).sum(dim=-1)
    return idx.clamp_(max=logprobs.shape[-1] - 1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log π(y_n|x,y_<n) = log_softmax(ℓ_n / T)[y_n], shape (B, T)."""
    logp = torch.log_softmax(_float(logits) / temperature, dim=-1)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def sequence_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """log π(y|x) = Σ_n m_n log π(y_n|x,y_<n), shape (B,)."""
    lp = token_logprobs(logits, tokens, temperature)
    return (lp * mask.to(lp.dtype)).sum(-1)


def _chunk_terms(
    head: Callable[[torch.Tensor], torch.Tensor],
    softcap: float | None,
    temperature: float,
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    reference_logits: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = _float(head(hidden))
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logp = torch.log_softmax(logits / temperature, dim=-1)
    lp = logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    if reference_logits is None:
        return lp, torch.zeros_like(lp)
    logq = torch.log_softmax(_float(reference_logits) / temperature, dim=-1)
    return lp, exact_terms(logp, logq)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The LM head matmul's dtype: autocast's (bf16-mixed) for float32/half operands when
    autocast is on for their device, else their promoted dtype (as ``F.linear`` would)."""
    device = hidden.device.type
    autocastable = (torch.float32, torch.float16, torch.bfloat16)
    if (
        torch.is_autocast_enabled(device)
        and hidden.dtype in autocastable
        and weight.dtype in autocastable
    ):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


class _ChunkBuffers:
    """Work buffers of B·chunk·V elements each, allocated once per call and viewed as
    (B·n, V) for a chunk of n ≤ ``chunk`` positions: no per-chunk allocations of logit
    size (each would also leave the allocator a hole of that size)."""

    def __init__(
        self, count: int, rows: int, chunk: int, vocab: int, dtype: torch.dtype, device: Any
    ) -> None:
        self.rows, self.vocab = rows, vocab
        self.flat = [torch.empty(rows * chunk * vocab, dtype=dtype, device=device)]
        self.flat += [torch.empty_like(self.flat[0]) for _ in range(count - 1)]

    def __call__(self, i: int, n: int) -> torch.Tensor:
        return self.flat[i][: self.rows * n * self.vocab].view(self.rows * n, self.vocab)


def _head_logits(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    compute: torch.dtype,
    out: torch.Tensor,
    staging: torch.Tensor | None,
) -> torch.Tensor:
    """z = h Wᵀ + b (h: (N, H); W, b already in ``compute``) written into ``out`` (N, V):
    directly when ``out`` has the ``compute`` dtype, else through ``staging`` (half
    precision, then upcast like :func:`_float`)."""
    target = out if staging is None else staging
    x = h.to(compute)
    if bias is None:
        torch.matmul(x, weight.T, out=target)
    else:
        torch.addmm(bias, x, weight.T, out=target)
    if staging is not None:
        out.copy_(staging)
    return out


class _HeadTokenLogprobs(torch.autograd.Function):
    """log_softmax(ℓ/T)[y] (and exact-KL terms) of ℓ = head(h), chunk by chunk over the
    positions, with a hand-written backward (:func:`head_token_logprobs`)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        tokens: torch.Tensor,
        reference_logits: torch.Tensor | None,
        temperature: float,
        chunk: int,
        softcap: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        compute = _compute_dtype(hidden, weight)
        acc = torch.float64 if compute == torch.float64 else torch.float32
        rows, positions = tokens.shape
        w = weight.to(compute)
        b = None if bias is None else bias.to(compute)
        chunk = max(1, min(chunk, positions))
        vocab, device = w.shape[0], hidden.device
        count = 3 if reference_logits is not None else 2  # z, log p, [log q]
        buf = _ChunkBuffers(count, rows, chunk, vocab, acc, device)
        staging = None if compute == acc else _ChunkBuffers(1, rows, chunk, vocab, compute, device)
        lp = torch.empty(rows, positions, dtype=acc, device=hidden.device)
        exact = torch.zeros_like(lp)
        with torch.autocast(device.type, enabled=False):  # dtypes set explicitly
            for start in range(0, positions, chunk):
                cut = slice(start, start + chunk)
                n = min(chunk, positions - start)
                h = hidden[:, cut].reshape(rows * n, -1)
                stage = None if staging is None else staging(0, n)
                z = _head_logits(h, w, b, compute, buf(0, n), stage)
                if softcap is not None:  # ℓ = c·tanh(z/c)
                    z.div_(softcap).tanh_().mul_(softcap)
                logp = torch.log_softmax(z.div_(temperature), dim=-1, out=buf(1, n))
                y = tokens[:, cut].reshape(-1, 1).long()
                lp[:, cut] = logp.gather(-1, y).view(rows, n)
                if reference_logits is not None:  # E = Σ_v p_v (log p_v − log q_v)
                    z.view(rows, n, vocab).copy_(reference_logits[:, cut]).div_(temperature)
                    logq = torch.log_softmax(z, dim=-1, out=buf(2, n))
                    diff = torch.sub(logp, logq, out=logq)
                    p = torch.exp(logp, out=z)
                    exact[:, cut] = p.mul_(diff).sum(-1).view(rows, n)
        ctx.save_for_backward(hidden, weight, bias, tokens, reference_logits, exact)
        ctx.options = (temperature, chunk, softcap, compute)
        ctx.set_materialize_grads(False)
        if reference_logits is None:
            ctx.mark_non_differentiable(exact)
        return lp, exact

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, grad_lp: torch.Tensor | None, grad_exact: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, tokens, reference_logits, exact = ctx.saved_tensors
        temperature, chunk, softcap, compute = ctx.options
        if reference_logits is None:
            grad_exact = None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        none = (None,) * 5
        if (grad_lp is None and grad_exact is None) or not (need_h or need_w or need_b):
            return (None, None, None, *none)
        acc = exact.dtype
        rows, positions = tokens.shape
        w = weight.to(compute)
        b = None if bias is None else bias.to(compute)
        vocab, device = w.shape[0], hidden.device
        count = 2 + (grad_exact is not None) + (softcap is not None)
        buf = _ChunkBuffers(count, rows, chunk, vocab, acc, device)  # z, log p, [log q, t]
        staging = None if compute == acc else _ChunkBuffers(1, rows, chunk, vocab, compute, device)
        d_hidden = torch.empty_like(hidden) if need_h else None
        d_weight = torch.zeros_like(weight) if need_w else None
        d_bias = torch.zeros_like(bias) if need_b and bias is not None else None
        with torch.autocast(device.type, enabled=False):  # dtypes set explicitly
            for start in range(0, positions, chunk):
                cut = slice(start, start + chunk)
                n = min(chunk, positions - start)
                h = hidden[:, cut].reshape(rows * n, -1)
                y = tokens[:, cut].reshape(-1, 1).long()
                logq = None
                if grad_exact is not None:  # log q first, while the logits buffer is free
                    z = buf(0, n)
                    z.view(rows, n, vocab).copy_(reference_logits[:, cut])
                    logq = torch.log_softmax(z.div_(temperature), dim=-1, out=buf(2, n))
                stage = None if staging is None else staging(0, n)
                z = _head_logits(h, w, b, compute, buf(0, n), stage)
                capped = None
                if softcap is not None:  # t = tanh(z/c), ℓ = c·t
                    capped = torch.div(z, softcap, out=buf(count - 1, n)).tanh_()
                    torch.mul(capped, softcap, out=z)
                logp = torch.log_softmax(z.div_(temperature), dim=-1, out=buf(1, n))
                g = None if grad_lp is None else grad_lp[:, cut].reshape(-1, 1).to(acc)
                if logq is None:  # ∂ log p_y/∂s_v = 1[v = y] − p_v: first −g·p
                    assert g is not None
                    d_s = logp.exp_().mul_(-g)
                else:  # ∂E/∂s_v = p_v (log p_v − log q_v − E)
                    assert grad_exact is not None
                    p = torch.exp(logp, out=z)
                    e = exact[:, cut].reshape(-1, 1)
                    d_s = logp.sub_(logq).sub_(e).mul_(p)
                    d_s.mul_(grad_exact[:, cut].reshape(-1, 1).to(acc))
                    if g is not None:
                        d_s.sub_(p.mul_(g))
                if g is not None:  # + g·1[v = y]
                    d_s.scatter_add_(-1, y, g)
                d_s.div_(temperature)  # s = ℓ/T
                if capped is not None:  # ∂ℓ/∂z = 1 − t²
                    d_s.mul_(capped.square_().neg_().add_(1.0))
                dz = d_s if stage is None else stage.copy_(d_s)
                if d_hidden is not None:
                    d_hidden[:, cut] = (dz @ w).view(rows, n, -1).to(hidden.dtype)
                if d_weight is not None:
                    x = h.to(compute)
                    if compute == weight.dtype:
                        d_weight.addmm_(dz.T, x)
                    else:
                        d_weight.add_(dz.T @ x)
                if d_bias is not None:
                    d_bias.add_(dz.sum(0))
        return (d_hidden, d_weight, d_bias, *none)


def head_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    tokens: torch.Tensor,
    temperature: float,
    chunk: int,
    *,
    softcap: float | None = None,
    reference_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(y_n|·) = log_softmax(ℓ_n/T)[y_n] (B, T) of the LM head ℓ = h Wᵀ + b (Gemma 2/3:
    ℓ ← c·tanh(ℓ/c)) on final hidden states h (B, T, H), W (V, H) — tied to the embedding
    or not — ``chunk`` positions at a time, never holding B×T×V logits nor saving any for
    the backward. With ``reference_logits`` (B, T, V) also the exact KL terms
    E_n = Σ_v π(v)(log π(v) − log μ(v)) (:func:`exact_terms`), else None.

    The backward recomputes each chunk's logits from h and W and applies the log-softmax
    gradients (s = ℓ/T, p = softmax(s); e.g. Bishop, *Pattern Recognition and Machine
    Learning*, eq. 4.106): ∂ log p_y/∂s_v = 1[v = y] − p_v and ∂E/∂s_v = p_v(log p_v −
    log μ_v − E), times 1/T and the cap's 1 − tanh²(z/c); then ∂h = ∂z W per chunk and
    ∂W = Σ_chunks ∂zᵀ h, ∂b = Σ ∂z into one V×H (V) buffer — autograd through chunks would
    build one dense ∂W per chunk. Each pass allocates its two to four B×chunk×V work
    buffers once and reuses them for every chunk (:class:`_ChunkBuffers`). Under
    ``torch.autocast`` the matmuls run in autocast's dtype (as ``F.linear`` there), the
    softmax in float32; float64 stays float64."""
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of positions; got {chunk}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    lp, exact = _HeadTokenLogprobs.apply(
        hidden, weight, bias, tokens, reference_logits, temperature, chunk, softcap
    )
    return lp, (exact if reference_logits is not None else None)


def _plain_linear(head: Any) -> bool:
    """Whether ``head`` computes exactly ``F.linear(h, head.weight, head.bias)``: a
    ``torch.nn.Linear`` without hooks (a peft LoRA layer or a hooked module is not)."""
    return (
        isinstance(head, torch.nn.Linear)
        and not head._forward_hooks
        and not head._forward_pre_hooks
    )


def chunked_token_logprobs(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    tokens: torch.Tensor,
    temperature: float,
    chunk: int,
    *,
    softcap: float | None = None,
    reference_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(y_n|·) (B, T) from the final hidden states (B, T, H) without holding the
    B×T×V logits: positions go through ``head`` (the LM head module, tied or LoRA-adapted
    as it is) ``chunk`` at a time, ℓ = head(h) (Gemma 2/3: ℓ ← c·tanh(ℓ/c), ``softcap`` c),
    log_softmax(ℓ/T) gathered at y. With ``reference_logits`` (B, T, V) also the exact KL
    terms Σ_v π(v)(log π(v) − log μ(v)) per position (:func:`exact_terms`), else None.
    A plain ``torch.nn.Linear`` head runs :func:`head_token_logprobs` (one ∂W buffer, no
    saved logits); any other head (a LoRA-adapted one) runs each chunk under
    ``torch.utils.checkpoint`` (non-reentrant), whose backward recomputes the chunk's
    logits but builds a gradient of the head's weights per chunk.
    Equal to :func:`token_logprobs` of the full logits up to summation order."""
    if _plain_linear(head):
        linear: Any = head
        return head_token_logprobs(
            hidden,
            linear.weight,
            linear.bias,
            tokens,
            temperature,
            chunk,
            softcap=softcap,
            reference_logits=reference_logits,
        )
    from torch.utils.checkpoint import checkpoint

    step = functools.partial(_chunk_terms, head, softcap, temperature)
    lps, exacts = [], []
    for start in range(0, tokens.shape[1], chunk):
        cut = slice(start, start + chunk)
        ref = None if reference_logits is None else reference_logits[:, cut]
        args = (hidden[:, cut], tokens[:, cut], ref)
        if torch.is_grad_enabled():
            lp, ex = checkpoint(step, *args, use_reentrant=False)
        else:
            lp, ex = step(*args)
        lps.append(lp)
        exacts.append(ex)
    exact = torch.cat(exacts, dim=1) if reference_logits is not None else None
    return torch.cat(lps, dim=1), exact


def chunked_sequence_logprobs(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    tokens: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    chunk: int,
    *,
    softcap: float | None = None,
) -> torch.Tensor:
    """log π(y|x) = Σ_n m_n log π(y_n|·) (B,) by :func:`chunked_token_logprobs`."""
    lp, _ = chunked_token_logprobs(hidden, head, tokens, temperature, chunk, softcap=softcap)
    return (lp * mask.to(lp.dtype)).sum(-1)


def chunked_logits_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float, chunk: int
) -> torch.Tensor:
    """:func:`token_logprobs` (B, T) of logits that exist already (B, T, V) — μ's from the
    fused decode — ``chunk`` positions at a time: log_softmax(ℓ/T)[y] per chunk, so the
    log-softmax never makes a second B×T×V array. Equal to :func:`token_logprobs` (the same
    operations on each row)."""
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of positions; got {chunk}")
    parts = [
        token_logprobs(
            logits[:, start : start + chunk], tokens[:, start : start + chunk], temperature
        )
        for start in range(0, tokens.shape[1], chunk)
    ]
    return torch.cat(parts, dim=1)


def kl(
    policy_logits: torch.Tensor,
    reference_logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    estimator: KLEstimator,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(π_θ‖μ) per row; returns ``(surrogate, value)`` each of shape (B,).

    With ℓ_n = log π_θ(y_n|·) − log μ(y_n|·), both at temperature T, summed over m_n = 1:

    - ``sampled``: value = Σ_n ℓ_n; surrogate = Σ_n log π_θ(y_n|·)·sg(Σ_{m≥n} ℓ_m)
      (score function with reward-to-go; ∇surrogate is unbiased for ∇KL).
    - ``k3`` (Schulman): value = surrogate = Σ_n (e^{−ℓ_n} − 1 + ℓ_n).
    - ``exact``: value = surrogate = Σ_n Σ_v π(v|·)(log π(v|·) − log μ(v|·)), the full
      vocabulary at each sampled prefix. Its value is unbiased for the sequence KL, but
      its gradient omits the effect of earlier tokens on the distribution of later
      prefixes (only the per-position KLs are differentiated).
    """
    if estimator not in _KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {_KL_ESTIMATORS}")
    logp = torch.log_softmax(_float(policy_logits) / temperature, dim=-1)
    logq = torch.log_softmax(_float(reference_logits) / temperature, dim=-1)
    if estimator == "exact":
        return kl_from_logprobs(None, None, mask, estimator, exact_terms(logp, logq))
    idx = tokens.long().unsqueeze(-1)
    lp = logp.gather(-1, idx).squeeze(-1)
    lq = logq.gather(-1, idx).squeeze(-1)
    return kl_from_logprobs(lp, lq, mask, estimator)


def exact_terms(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Σ_v π(v|·)(log π(v|·) − log μ(v|·)) at each position, from log-probs (..., V)."""
    return (logp.exp() * (logp - logq)).sum(-1)


def kl_from_logprobs(
    lp: torch.Tensor | None,
    lq: torch.Tensor | None,
    mask: torch.Tensor,
    estimator: KLEstimator,
    exact: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`kl` from per-token log-probs ``lp`` = log π_θ(y_n|·), ``lq`` = log μ(y_n|·)
    (B, T) — or, for ``exact``, from the per-position full-vocabulary KL ``exact`` (B, T)
    (:func:`exact_terms`; e.g. from :func:`chunked_token_logprobs`)."""
    if estimator == "exact":
        if exact is None:
            raise ValueError("the exact KL estimator needs the per-position terms `exact`")
        value = (exact * mask.to(exact.dtype)).sum(-1)
        return value, value
    if lp is None or lq is None:
        raise ValueError(f"the {estimator} KL estimator needs token log-probs lp and lq")
    m = mask.to(lp.dtype)
    ratio = (lp - lq) * m
    if estimator == "k3":
        value = ((torch.exp(-ratio) - 1.0 + ratio) * m).sum(-1)
        return value, value
    # reward-to-go: Σ_{m≥n} ℓ_m = reversed cumulative sum
    to_go = torch.flip(torch.cumsum(torch.flip(ratio.detach(), [-1]), -1), [-1])
    surrogate = (lp * m * to_go).sum(-1)
    return surrogate, ratio.sum(-1)


def nash_md_pg_loss(
    policy_logits: torch.Tensor,
    reference_logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    preference: torch.Tensor,
    tau: float,
    temperature: float,
    estimator: KLEstimator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Nash-MD-PG loss (arXiv:2312.00886 v4, §7; the gradient estimate of its App. F.2,
    eq. 13): loss = mean_b[−(P_b − ½)·Σ_n m_bn log π_θ(y_bn|·) + τ·KL_b] with
    P_b = P(y_b ≻ y'_b|x_b) held constant and KL_b the surrogate of :func:`kl`.

    Metrics (detached): ``score`` = mean_b −(P_b − ½)·log π_θ(y_b), ``kl`` = mean KL value,
    ``kl_surrogate``, ``preference`` = mean P, ``logprob`` = mean log π_θ(y_b).
    """
    seq_lp = sequence_logprobs(policy_logits, tokens, mask, temperature)
    kl_terms = kl(policy_logits, reference_logits, tokens, mask, estimator, temperature)
    return nash_md_pg_loss_from_logprobs(seq_lp, kl_terms, preference, tau)


def nash_md_pg_loss_from_logprobs(
    seq_lp: torch.Tensor,
    kl_terms: tuple[torch.Tensor, torch.Tensor],
    preference: torch.Tensor,
    tau: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`nash_md_pg_loss` from log π_θ(y_b|x_b) (B,) and the ``(surrogate, value)`` of
    :func:`kl` / :func:`kl_from_logprobs` (the chunked path, :func:`chunked_token_logprobs`)."""
    surrogate, value = kl_terms
    p = torch.as_tensor(preference, device=seq_lp.device).to(seq_lp.dtype).detach()
    score = -(p - 0.5) * seq_lp
    loss = (score + tau * surrogate).mean()
    metrics = {
        "score": score.mean().detach(),
        "kl": value.mean().detach(),
        "kl_surrogate": surrogate.mean().detach(),
        "preference": p.mean(),
        "logprob": seq_lp.mean().detach(),
    }
    return loss, metrics


def online_ipo_loss(
    logits_y: torch.Tensor,
    reference_logits_y: torch.Tensor,
    y: torch.Tensor,
    y_mask: torch.Tensor,
    logits_y_prime: torch.Tensor,
    reference_logits_y_prime: torch.Tensor,
    y_prime: torch.Tensor,
    y_prime_mask: torch.Tensor,
    preference: torch.Tensor,
    tau: float,
    temperature: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Online IPO (Calandriello et al. 2024, arXiv:2403.08635, §4, eq. 11; IPO-MD when y' comes
    from the mixture, its §5; the loss is arXiv:2310.12036 v2 eq. 17 on online pairs):
    h = log π/μ(y) − log π/μ(y'), loss = mean_b (h_b − (P_b − ½)/τ)², the sampled loss
    (h(y_w, y_l) − 1/(2τ))² averaged over the label y_w ~ Bernoulli(P) up to a constant in θ
    (:func:`nlhf.algorithms.numpy_oracle.online_ipo_loss`); the reference logits carry no
    gradient. Metrics (detached): ``preference`` (mean P), ``margin`` (mean s·h, s =
    sign(P − ½), +1 at ½),
    ``kl`` (mean log π/μ(y))."""
    lp_y = sequence_logprobs(logits_y, y, y_mask, temperature)
    lq_y = sequence_logprobs(reference_logits_y.detach(), y, y_mask, temperature)
    lp_p = sequence_logprobs(logits_y_prime, y_prime, y_prime_mask, temperature)
    lq_p = sequence_logprobs(reference_logits_y_prime.detach(), y_prime, y_prime_mask, temperature)
    return online_ipo_loss_from_logprobs(lp_y, lq_y, lp_p, lq_p, preference, tau)


def online_ipo_loss_from_logprobs(
    lp_y: torch.Tensor,
    lq_y: torch.Tensor,
    lp_p: torch.Tensor,
    lq_p: torch.Tensor,
    preference: torch.Tensor,
    tau: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`online_ipo_loss` from the sequence log-probs (B,) of π_θ and μ on y and y'."""
    lq_y, lq_p = lq_y.detach(), lq_p.detach()
    p = torch.as_tensor(preference, device=lp_y.device).to(lp_y.dtype).detach()
    h = (lp_y - lq_y) - (lp_p - lq_p)
    margin = torch.where(p >= 0.5, 1.0, -1.0).to(lp_y.dtype) * h
    loss = ((h - (p - 0.5) / tau) ** 2).mean()
    return loss, {
        "preference": p.mean(),
        "margin": margin.mean().detach(),
        "kl": (lp_y - lq_y).mean().detach(),
    }


def _pair_margin(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, log π/μ(y_w), log π/μ(y_l)); the cached reference log-probs detached."""
    chosen = policy_chosen - reference_chosen.detach().to(policy_chosen.dtype)
    rejected = policy_rejected - reference_rejected.detach().to(policy_rejected.dtype)
    return chosen - rejected, chosen, rejected


def _pair_metrics(
    h: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor
) -> dict[str, torch.Tensor]:
    return {
        "margin": h.mean().detach(),
        "accuracy": (h > 0).to(h.dtype).mean().detach(),
        "chosen_ratio": chosen.mean().detach(),
        "rejected_ratio": rejected.mean().detach(),
    }


def offline_ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    tau: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IPO on fixed pairs (Azar et al. 2023, arXiv:2310.12036 v2, eq. 17):
    h = log π/μ(y_w) − log π/μ(y_l) from
    sequence log-probs (B,), loss = mean_b (h_b − 1/(2τ))²; the cached reference
    log-probs carry no gradient. Metrics (detached): ``margin``, ``accuracy``,
    ``chosen_ratio``, ``rejected_ratio``."""
    h, chosen, rejected = _pair_margin(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected
    )
    return ((h - 1.0 / (2.0 * tau)) ** 2).mean(), _pair_metrics(h, chosen, rejected)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290, eq. 7): loss = mean_b −log σ(β·h_b) with
    ``logsigmoid`` (stable for large |β·h|); h and the metrics as :func:`offline_ipo_loss`."""
    h, chosen, rejected = _pair_margin(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected
    )
    return -F.logsigmoid(beta * h).mean(), _pair_metrics(h, chosen, rejected)


def sppo_loss(
    policy: torch.Tensor, anchor: torch.Tensor, win_rate: torch.Tensor, eta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SPPO (Wu et al. 2024, arXiv:2405.00675 v5, eq. 4.6 = its Algorithm 1's eq. 4.7;
    protocols.SPPOObjective): loss =
    mean_b (log π_θ(y_b) − log π_t(y_b) − η·(P̂_b − ½))², the anchor log π_t detached.
    Metrics (detached): ``log_ratio`` (mean log π_θ/π_t), ``win_rate_gap`` (mean |P̂ − ½|)."""
    ratio = policy - anchor.detach().to(policy.dtype)
    gap = torch.as_tensor(win_rate, device=policy.device).to(policy.dtype).detach() - 0.5
    loss = ((ratio - eta * gap) ** 2).mean()
    return loss, {"log_ratio": ratio.mean().detach(), "win_rate_gap": gap.abs().mean()}


def inpo_loss(
    policy_y: torch.Tensor,
    policy_y_prime: torch.Tensor,
    anchor_y: torch.Tensor,
    anchor_y_prime: torch.Tensor,
    reference_y: torch.Tensor,
    reference_y_prime: torch.Tensor,
    preference: torch.Tensor,
    tau: float,
    eta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """INPO (Zhang et al., ICLR 2025, arXiv:2407.00617, ICLR version eq. 7–8, its η being
    1/η here; protocols.INPOObjective):
    h_t = log π_θ(y)/π_θ(y') − ητ·log μ(y)/μ(y') − (1 − ητ)·log π_t(y)/π_t(y'),
    loss = mean_b (h_t − η(P_b − ½))²; π_t and μ detached. Metrics (detached):
    ``preference``, ``margin`` (mean h_t), ``kl`` (mean log π_θ/μ(y))."""
    dtype = policy_y.dtype
    anchor = (anchor_y - anchor_y_prime).detach().to(dtype)
    reference = (reference_y - reference_y_prime).detach().to(dtype)
    h = (policy_y - policy_y_prime) - eta * tau * reference - (1.0 - eta * tau) * anchor
    p = torch.as_tensor(preference, device=h.device).to(dtype).detach()
    loss = ((h - eta * (p - 0.5)) ** 2).mean()
    kl_y = (policy_y - reference_y.detach().to(dtype)).mean().detach()
    return loss, {"preference": p.mean(), "margin": h.mean().detach(), "kl": kl_y}


def egpo_loss(
    policy_y: torch.Tensor,
    policy_y_prime: torch.Tensor,
    reference_y: torch.Tensor,
    reference_y_prime: torch.Tensor,
    preference: torch.Tensor,
    tau: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """EGPO (Zhou et al., COLM 2025, arXiv:2503.08942 v3, equation number not confirmed;
    protocols.EGPOObjective):
    h = log π/μ(y) − log π/μ(y'), loss = mean_b (h_b − (P_b − ½)/τ)², μ detached.
    Metrics (detached): ``preference``, ``margin`` (mean h), ``kl`` (mean log π_θ/μ(y))."""
    dtype = policy_y.dtype
    ratio_y = policy_y - reference_y.detach().to(dtype)
    h = ratio_y - (policy_y_prime - reference_y_prime.detach().to(dtype))
    p = torch.as_tensor(preference, device=h.device).to(dtype).detach()
    loss = ((h - (p - 0.5) / tau) ** 2).mean()
    return loss, {
        "preference": p.mean(),
        "margin": h.mean().detach(),
        "kl": ratio_y.mean().detach(),
    }


_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


class TorchKernels:
    """The kernel set of the torch backend (protocols.Kernels) on CPU tensors by default."""

    preference_loss = staticmethod(preference_loss)
    mixture_logprobs = staticmethod(mixture_logprobs)
    sample = staticmethod(sample)
    kl = staticmethod(kl)
    nash_md_pg_loss = staticmethod(nash_md_pg_loss)
    sequence_logprobs = staticmethod(sequence_logprobs)
    online_ipo_loss = staticmethod(online_ipo_loss)
    # protocols.OfflinePairLosses
    offline_ipo_loss = staticmethod(offline_ipo_loss)
    dpo_loss = staticmethod(dpo_loss)
    # protocols.GameFamilyLosses
    sppo_loss = staticmethod(sppo_loss)
    inpo_loss = staticmethod(inpo_loss)
    egpo_loss = staticmethod(egpo_loss)

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)

    # protocols.PairGenerator: the production model and sampler of the torch backend
    def load_causal_lm(self, path: str | Path, dtype: str = "float32") -> Any:
        """``transformers.AutoModelForCausalLM`` of a checkpoint directory, in eval mode."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[dtype])
        return model.to(self.device).eval()

    def generate_pairs(
        self, policy: Any, reference: Any, input_ids: Any, attention_mask: Any, **kwargs: Any
    ) -> Any:
        """:func:`nlhf_torch.generation.generate_pairs`."""
        from nlhf_torch.generation import generate_pairs

        return generate_pairs(policy, reference, input_ids, attention_mask, **kwargs)

    def sequence_logits(self, model: Any, *args: Any) -> torch.Tensor:
        """:func:`nlhf_torch.generation.sequence_logits`, without gradient."""
        from nlhf_torch.generation import sequence_logits

        with torch.no_grad():
            return sequence_logits(model, *args)

    def asarray(self, x: Any, dtype: str = "float64") -> torch.Tensor:
        """NumPy / Python data → a tensor of ``dtype`` (kernels cast token ids with
        ``.long()``, so token arrays may come in any dtype)."""
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return torch.as_tensor(arr, device=self.device).to(_DTYPES[str(dtype)])

    def to_numpy(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def grad(self, fn: Any, x: torch.Tensor) -> torch.Tensor:
        """∂fn(x)/∂x for a scalar fn, by torch.autograd (zeros where fn does not depend on
        x through autograd, e.g. a detached input)."""
        with torch.enable_grad():
            xr = x.detach().clone().requires_grad_(True)
            out = fn(xr)
            if not out.requires_grad:
                return torch.zeros_like(xr)
            (g,) = torch.autograd.grad(out, xr, allow_unused=True)
        return torch.zeros_like(xr) if g is None else g
