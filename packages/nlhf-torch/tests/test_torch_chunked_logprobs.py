"""The chunked LM-head log-probabilities (:func:`nlhf_torch.kernels.head_token_logprobs`,
``training.logprob_chunk``): values and gradients against the plain full-logits path
(autograd through ``F.linear`` and ``log_softmax``), ``torch.autograd.gradcheck``, one
LM-head weight gradient per backward, and one trainer step of every loss family with
chunks equal to the step without."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import nlhf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nlhf.plugins import build_plugins
from nlhf.spec import RunSpec
from nlhf.testing.tolerances import assert_close
from nlhf.testing.trainer import LengthOracle
from nlhf.training import nash_loop
from nlhf_torch import kernels
from torch.utils._python_dispatch import TorchDispatchMode

B, T, H, V, TEMP = 3, 7, 5, 37, 0.7


def _case(
    dtype: torch.dtype, *, tied: bool, bias: bool, seed: int = 0
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Parameters of a tiny "model": hidden states h = tanh(E[ids] A) (with ``tied`` the
    head's weight is the embedding E, so its gradient has two sources), the head W (V, H)
    and its bias; completion tokens, right-padded masks as the trainer builds them, and
    reference logits for the exact-KL terms."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(V, H, generator=g, dtype=dtype)
    params = {
        "emb": emb,
        "mix": torch.randn(H, H, generator=g, dtype=dtype) / H**0.5,
        "weight": emb if tied else torch.randn(V, H, generator=g, dtype=dtype),
        "bias": torch.randn(V, generator=g, dtype=dtype) if bias else None,
    }
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 4:] = 0  # right padding (a row that hit EOS early)
    mask[2, 6:] = 0
    ref = torch.randn(B, T, V, generator=g, dtype=dtype)
    return params, tokens, mask, ref


def _loss(
    params: dict[str, Any],
    tokens: torch.Tensor,
    mask: torch.Tensor,
    ref: torch.Tensor,
    softcap: float | None,
    chunk: int | None,
    exact_kl: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A trainer-shaped loss: Σ_b w_b·Σ_n m_bn log π(y_bn) (+ Σ_b Σ_n m_bn E_bn, the exact
    KL), through the chunked kernel (``chunk``) or the full logits (``chunk=None``)."""
    hidden = torch.tanh(params["emb"][tokens.roll(1, dims=1)] @ params["mix"])
    reference = ref if exact_kl else None
    if chunk is None:
        logits = F.linear(hidden, params["weight"], params["bias"])
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        lp = kernels.token_logprobs(logits, tokens, TEMP)
        exact = None
        if exact_kl:
            logp = torch.log_softmax(logits / TEMP, -1)
            exact = kernels.exact_terms(logp, torch.log_softmax(ref / TEMP, -1))
    else:
        lp, exact = kernels.head_token_logprobs(
            hidden,
            params["weight"],
            params["bias"],
            tokens,
            TEMP,
            chunk,
            softcap=softcap,
            reference_logits=reference,
        )
    m = mask.to(lp.dtype)
    seq = (lp * m).sum(-1)
    row_weights = torch.tensor([0.4, -1.3, 0.9], dtype=lp.dtype)
    loss = (row_weights * seq).sum()
    if exact_kl:
        assert exact is not None
        loss = loss + (exact * m).sum()
    return loss, lp


def _grads(
    dtype: torch.dtype,
    tied: bool,
    bias: bool,
    softcap: float | None,
    chunk: int | None,
    exact_kl: bool,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    params, tokens, mask, ref = _case(dtype, tied=tied, bias=bias)
    leaves = {
        k: v.requires_grad_(True)
        for k, v in params.items()
        if v is not None and not (tied and k == "weight")  # tied: W is E
    }
    loss, lp = _loss(params, tokens, mask, ref, softcap, chunk, exact_kl)
    loss.backward()
    return loss.detach(), lp.detach(), {k: v.grad.clone() for k, v in leaves.items()}


def _oracle_token_logprobs(
    params: dict[str, Any], tokens: torch.Tensor, softcap: float | None
) -> np.ndarray:
    """float64 NumPy: log_softmax(ℓ/T)[y], ℓ = h Wᵀ + b (soft-capped: c·tanh(ℓ/c))."""
    emb, mix = params["emb"].numpy(), params["mix"].numpy()
    hidden = np.tanh(emb[tokens.roll(1, dims=1).numpy()] @ mix)
    logits = hidden @ params["weight"].numpy().T
    if params["bias"] is not None:
        logits = logits + params["bias"].numpy()
    if softcap is not None:
        logits = softcap * np.tanh(logits / softcap)
    z = logits / TEMP
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.take_along_axis(logp, tokens.numpy()[..., None], -1)[..., 0]


@pytest.mark.parametrize("chunk", [1, 3, 7, 20])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("softcap", "exact_kl"), [(None, False), (None, True), (1.5, True)])
def test_value_and_gradients_equal_the_full_logits_path(
    chunk: int, tied: bool, bias: bool, softcap: float | None, exact_kl: bool
) -> None:
    """float64: the chunked kernel's log-probs equal a NumPy oracle, and the loss and its
    gradients w.r.t. every parameter (the hidden states' inputs, W, b; W tied to the
    embedding or not) equal autograd through the full B×T×V logits."""
    loss, lp, grads = _grads(torch.float64, tied, bias, softcap, chunk, exact_kl)
    want_loss, want_lp, want = _grads(torch.float64, tied, bias, softcap, None, exact_kl)
    params, tokens, _, _ = _case(torch.float64, tied=tied, bias=bias)
    oracle = _oracle_token_logprobs(params, tokens, softcap)
    assert_close(lp, oracle, "float64", "token log-probs vs NumPy", scope="kernel")
    assert_close(lp, want_lp, "float64", "token log-probs", scope="kernel")
    assert_close(loss, want_loss, "float64", "loss", scope="kernel")
    assert grads.keys() == want.keys() and ("bias" in grads) == bias
    for name, g in want.items():
        assert float(g.abs().max()) > 0, name
        assert_close(grads[name], g, "float64", f"∂loss/∂{name}", scope="kernel")


@pytest.mark.parametrize(("softcap", "with_reference"), [(None, False), (2.0, True)])
def test_gradcheck(softcap: float | None, with_reference: bool) -> None:
    """torch.autograd.gradcheck (finite differences, float64) of both outputs w.r.t.
    h, W and b, chunks of 2 over 5 positions (the last chunk short)."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 6, (2, 5), generator=g)
    ref = torch.randn(2, 5, 6, generator=g, dtype=torch.float64) if with_reference else None

    def fn(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lp, exact = kernels.head_token_logprobs(
            h, w, b, tokens, TEMP, 2, softcap=softcap, reference_logits=ref
        )
        return (lp,) if exact is None else (lp, exact)

    assert torch.autograd.gradcheck(fn, (h, w, b))


def test_bf16_autocast_matches_the_autocast_full_path() -> None:
    """Under ``torch.autocast(bfloat16)`` (bf16-mixed) the kernel runs the head's matmuls
    in bfloat16 like ``F.linear`` there: float32 gradients within the bfloat16 tolerance of
    the full path under the same autocast (and not equal to the float32 ones)."""
    results = []
    for chunk, autocast in ((3, True), (None, True), (None, False)):
        params, tokens, mask, ref = _case(torch.float32, tied=False, bias=True, seed=2)
        leaves = {k: v.requires_grad_(True) for k, v in params.items() if v is not None}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, _ = _loss(params, tokens, mask, ref, None, chunk, True)
        loss.backward()
        assert all(v.grad.dtype == torch.float32 for v in leaves.values())
        results.append({k: v.grad for k, v in leaves.items()})
    chunked, full, fp32 = results
    for name in full:
        scale = float(full[name].abs().max())
        assert_close(chunked[name] / scale, full[name] / scale, "bfloat16", name, scope="model")
    assert any(not torch.allclose(full[k], fp32[k], rtol=1e-5, atol=1e-6) for k in full)


class _Allocations(TorchDispatchMode):
    """Records the shapes of the new tensors (not views, not in-place or ``out=``
    results) that ops return."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[torch.Size] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        for o, ret in zip(outs, func._schema.returns, strict=False):
            if ret.alias_info is None and isinstance(o, torch.Tensor):  # else it aliases
                self.shapes.append(o.shape)
        return out


@pytest.mark.parametrize("exact_kl", [False, True])
def test_one_head_gradient_and_fixed_work_buffers(exact_kl: bool) -> None:
    """The fused backward allocates one V×H buffer for ∂W and a fixed number of
    chunk-sized work buffers (forward too), however many chunks; autograd through
    checkpointed chunks (a head that is not a plain Linear: the generic path) builds one
    ∂W per chunk."""
    b, h, v, chunk = 2, 6, 512, 4
    head = torch.nn.Linear(h, v, bias=False)
    counts = {}
    for t in (8, 32):  # 2 and 8 chunks
        hidden = torch.randn(b, t, h, requires_grad=True)
        tokens = torch.randint(0, v, (b, t))
        ref = torch.randn(b, t, v) if exact_kl else None
        for fused in (True, False):
            run: Any = head if fused else (lambda x: head(x))
            forward, backward = _Allocations(), _Allocations()
            with forward:
                lp, exact = kernels.chunked_token_logprobs(
                    hidden, run, tokens, 0.8, chunk, reference_logits=ref
                )
            loss = lp.sum() + (exact.sum() if exact is not None else 0.0)
            with backward:
                loss.backward()
            head.weight.grad = None
            large = [
                sum(math.prod(s) >= b * chunk * v for s in mode.shapes)
                for mode in (forward, backward)
            ]
            counts[t, fused] = (sum(s == (v, h) for s in backward.shapes), *large)
    assert counts[8, True] == counts[32, True]  # independent of the number of chunks
    d_weight, forward_buffers, backward_buffers = counts[32, True]
    assert d_weight == 1
    assert forward_buffers <= 3 and backward_buffers <= 4
    assert counts[32, False][0] >= 32 // chunk


# ------------------------------------------------------------------- one trainer step
class _Plugin:
    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("length", lambda **kw: LengthOracle())


@pytest.fixture(scope="module")
def assets(torch_tiny: dict[str, str]) -> dict[str, str]:
    """The session's torch-initialised tiny Llama and tied Qwen2 (tests/conftest.py)."""
    return torch_tiny


ALGORITHMS = {
    "nash_md_pg": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1, "kl_estimator": "exact"},
    "online_ipo": {"name": "online_ipo", "tau": 0.1},
    "inpo": {"name": "inpo", "tau": 0.1, "eta": 1.0},
    "egpo": {"name": "egpo", "tau": 0.1},
    "sppo": {"name": "sppo", "eta": 1.0, "num_samples": 3},
}


def _step(
    assets: dict[str, str], out: Path, model: str, algorithm: str, chunk: int | str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The parameter update of one SGD step (update = −lr·g), and which models' full
    logits the loss computed (``grad`` or ``no grad``: the reference's)."""
    spec = RunSpec.model_validate(
        {
            "seed": 3,
            "policy": {"model": assets[model]},
            "preference": {"name": "oracle", "function": "length"},
            "data": {"path": assets["data"], "shuffle": False},
            "algorithm": ALGORITHMS[algorithm],
            "training": {
                "steps": 1,
                "batch_size": 4,
                "lr": 0.5,
                "optimizer": {"name": "sgd"},
                "max_grad_norm": None,
                "logprob_chunk": chunk,
                "generation": {"max_new_tokens": 6},
            },
            "output": {"dir": str(out)},
        }
    )
    loop = nash_loop(spec, out, backend="torch", plugins=build_plugins(extra=[_Plugin()]))
    stepper = loop.stepper
    before = {k: v.detach().clone() for k, v in stepper.policy.named_parameters()}
    full_logits: list[str] = []
    import nlhf_torch.trainer as trainer

    original = trainer.sequence_logits

    def spy(model: Any, *args: Any) -> torch.Tensor:
        grad = "grad" if torch.is_grad_enabled() else "no grad"
        full_logits.append(f"{type(model).__name__} ({grad})")
        return original(model, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "sequence_logits", spy)
        loop.step(1)
    after = dict(stepper.policy.named_parameters())
    return {k: after[k].detach() - before[k] for k in before}, full_logits


@pytest.mark.parametrize(
    ("model", "algorithm"),
    [
        ("tied", "nash_md_pg"),
        ("model", "online_ipo"),
        ("tied", "inpo"),
        ("model", "egpo"),
        ("tied", "sppo"),
    ],
)
def test_one_step_with_chunks_equals_one_step_without(
    assets: dict[str, str], tmp_path: Path, model: str, algorithm: str
) -> None:
    """One SGD step of every loss family (Nash-MD-PG, online IPO and the game family's
    pairwise and K-sample losses): the update with ``logprob_chunk: 2`` equals the update
    with full logits within the float32 model tolerance, and the chunked step computes no
    full logits of any model, with gradient (the policy) or without (the reference)."""
    full, full_calls = _step(assets, tmp_path / "full", model, algorithm, "off")
    chunked, chunked_calls = _step(assets, tmp_path / "chunked", model, algorithm, 2)
    assert any(call.endswith("(grad)") for call in full_calls)
    assert not chunked_calls
    scale = max(float(u.abs().max()) for u in full.values())
    assert scale > 1e-4
    for name in full:
        assert_close(chunked[name] / scale, full[name] / scale, "float32", name, scope="model")
