"""The cached pair generator draws exactly the tokens of an uncached TRL-style sampler.

The oracle below is written independently of :mod:`nlhf_torch.generation`: at every step it
re-runs each model over the full prompt + prefix (no KV cache, no logits_to_keep), mixes
the last-position logits directly and inverts the CDF with ``torch.searchsorted``. Models
are float64 so cache/no-cache rounding (~1e-15) cannot flip a token drawn with uniforms
that are random (or, to force EOS, 1e-6 below a CDF mass of ~1/V).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nlhf.testing.tolerances import assert_close
from nlhf_torch.generation import generate_pairs, sequence_logits
from nlhf_torch.tiny import tiny_config
from transformers import AutoModelForCausalLM

V = 48
EOS = 0  # inverse CDF maps u < p(0) to token 0: tiny uniforms force EOS
PAD = 1
B = 3
MAX_NEW = 7
ARCHS = ["llama", "qwen2", "gpt2"]


def _model(arch: str, seed: int):
    torch.manual_seed(seed)
    cfg = tiny_config(arch, V, hidden_size=32, layers=2, heads=4, kv_heads=2)
    return AutoModelForCausalLM.from_config(cfg).to(torch.float64).eval()


@pytest.fixture(scope="module", params=ARCHS)
def models(request):
    arch = request.param
    return _model(arch, 0), _model(arch, 1)


def _prompts():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, V, (B, 6), generator=g)
    mask = torch.ones_like(ids)
    for row, n_pad in enumerate([3, 0, 1]):  # different prompt lengths, left padded
        mask[row, :n_pad] = 0
        ids[row, :n_pad] = PAD
    return ids, mask


def _uniforms(eos_at: dict[int, int], seed: int = 4) -> torch.Tensor:
    """Random uniforms in [0.05, 0.95) with u = 1e-6 (→ EOS) at {row: step}."""
    g = torch.Generator().manual_seed(seed)
    u = 0.05 + 0.9 * torch.rand(2 * B, MAX_NEW, generator=g, dtype=torch.float64)
    for row, step in eos_at.items():
        u[row, step] = 1e-6
    return u


def _last_logits(model, ids, mask):
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]


def _naive_pairs(y_model, yp_model, reference, ids, mask, beta, temperature, u):
    """Uncached oracle: two generate-like loops, the full prefix through every model per token."""

    def loop(rows, logits_fn):
        seq, am = ids.clone(), mask.clone()
        done = torch.zeros(B, dtype=torch.bool)
        toks, msk = [], []
        for step in range(MAX_NEW):
            logp = torch.log_softmax(logits_fn(seq, am) / temperature, dim=-1)
            cdf = torch.cumsum(logp.exp(), dim=-1)
            tok = torch.searchsorted(cdf, u[rows, step].unsqueeze(-1).contiguous(), right=True)
            tok = tok.squeeze(-1).clamp(max=V - 1)
            tok = torch.where(done, torch.full_like(tok, PAD), tok)
            msk.append((~done).long())
            toks.append(tok)
            done = done | (tok == EOS)
            seq = torch.cat([seq, tok[:, None]], 1)
            am = torch.cat([am, torch.ones(B, 1, dtype=am.dtype)], 1)
        return torch.stack(toks, 1), torch.stack(msk, 1)

    with torch.no_grad():
        y, ym = loop(slice(0, B), lambda s, a: _last_logits(y_model, s, a))
        yp, ypm = loop(
            slice(B, 2 * B),
            lambda s, a: (
                (1 - beta) * _last_logits(yp_model, s, a) + beta * _last_logits(reference, s, a)
            ),
        )
    return y, ym, yp, ypm


def _trim(t: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    assert not mask[:, steps:].any(), "the engine stopped before every row had finished"
    return t[:, :steps]


def _check_equal(out, naive):
    y, ym, yp, ypm = naive
    steps = out.y.shape[1]
    full = torch.cat([ym, ypm])
    assert steps == MAX_NEW or not full[:, steps:].any()
    np.testing.assert_array_equal(out.y_mask, _trim(ym, full[:B], steps))
    np.testing.assert_array_equal(out.y_prime_mask, _trim(ypm, full[B:], steps))
    np.testing.assert_array_equal(out.y, y[:, :steps])
    np.testing.assert_array_equal(out.y_prime, yp[:, :steps])


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_cached_mixture_matches_uncached(models, beta):
    policy, reference = models
    ids, mask = _prompts()
    u = _uniforms({0: 1, 4: 3, 5: 0})  # y row 0, y' rows 1 and 2 stop early
    out = generate_pairs(
        policy,
        reference,
        ids,
        mask,
        beta=beta,
        max_new_tokens=MAX_NEW,
        temperature=0.7,
        eos_token_id=EOS,
        pad_token_id=PAD,
        uniforms=u,
        return_reference_logits=True,
    )
    naive = _naive_pairs(policy, policy, reference, ids, mask, beta, 0.7, u)
    _check_equal(out, naive)
    # EOS semantics: mask includes EOS, pad after it
    assert out.y[0, 1] == EOS and out.y_mask[0].tolist()[:3] == [1, 1, 0]
    assert (out.y[0, 2:] == PAD).all()
    assert out.y_prime[2, 0] == EOS and out.y_prime_mask[2, 1:].sum() == 0
    assert not out.y.is_inference()
    # reused reference logits = the reference's full-prefix logits along y (independent oracle)
    with torch.no_grad():
        for n in range(out.y.shape[1]):
            seq = torch.cat([ids, out.y[:, :n]], 1)
            am = torch.cat([mask, torch.ones(B, n, dtype=mask.dtype)], 1)
            want = _last_logits(reference, seq, am)
            live = out.y_mask[:, n].bool()
            assert_close(out.reference_logits[live, n], want[live], "float64", scope="model")


def test_all_rows_stop_early(models):
    policy, reference = models
    ids, mask = _prompts()
    u = _uniforms({0: 0, 1: 2, 2: 1, 3: 2, 4: 0, 5: 1})
    out = generate_pairs(
        policy,
        reference,
        ids,
        mask,
        beta=0.5,
        max_new_tokens=MAX_NEW,
        temperature=1.3,
        eos_token_id=[EOS],
        pad_token_id=PAD,
        uniforms=u,
    )
    assert out.y.shape == (B, 3) and out.y_prime.shape == (B, 3)
    assert out.reference_logits is None
    _check_equal(out, _naive_pairs(policy, policy, reference, ids, mask, 0.5, 1.3, u))


def test_opponents_match_uncached():
    policy, reference, ema = _model("llama", 0), _model("llama", 1), _model("llama", 2)
    ids, mask = _prompts()
    u = _uniforms({1: 2, 3: 4})
    kw = dict(max_new_tokens=MAX_NEW, temperature=0.9, eos_token_id=EOS, pad_token_id=PAD)
    cases = [
        ("reference", 0.3, None, policy, 1.0),  # best response: β forced to 1
        ("policy", 0.3, None, policy, 0.0),  # self-play: β forced to 0
        ("model", 0.0, ema, ema, 0.0),  # Nash-EMA-PG: y' from the EMA model
        ("model", 0.25, ema, ema, 0.25),  # EMA model mixed with μ
    ]
    for opponent, beta, opp, yp_model, eff_beta in cases:
        out = generate_pairs(
            policy,
            reference,
            ids,
            mask,
            beta=beta,
            opponent=opponent,
            opponent_model=opp,
            uniforms=u,
            **kw,
        )
        _check_equal(out, _naive_pairs(policy, yp_model, reference, ids, mask, eff_beta, 0.9, u))


def test_forward_calls_and_reference_skipped():
    policy, reference = _model("qwen2", 0), _model("qwen2", 1)
    ids, mask = _prompts()
    u = _uniforms({})
    kw = dict(max_new_tokens=MAX_NEW, temperature=1.0, eos_token_id=EOS, pad_token_id=PAD)

    class Boom(torch.nn.Module):
        training = False

        def forward(self, *a, **k):  # pragma: no cover - must not run
            raise AssertionError("the reference must not run for self-play")

    out = generate_pairs(policy, Boom(), ids, mask, beta=0.0, opponent="policy", uniforms=u, **kw)
    assert out.stats["forward_calls"] == MAX_NEW  # 1 prefill + (T−1) steps, one model
    out = generate_pairs(policy, reference, ids, mask, beta=0.5, uniforms=u, **kw)
    assert out.stats["forward_calls"] == 2 * MAX_NEW  # policy (2B rows) + reference, lockstep


def test_generator_determinism_and_modes():
    policy, reference = _model("gpt2", 0), _model("gpt2", 1)
    policy.train()  # GPT-2 has dropout: sampling must run in eval mode and restore train mode
    ids, mask = _prompts()
    kw = dict(beta=0.5, max_new_tokens=5, temperature=1.0, eos_token_id=EOS, pad_token_id=PAD)
    a = generate_pairs(
        policy, reference, ids, mask, generator=torch.Generator().manual_seed(7), **kw
    )
    b = generate_pairs(
        policy, reference, ids, mask, generator=torch.Generator().manual_seed(7), **kw
    )
    c = generate_pairs(
        policy, reference, ids, mask, generator=torch.Generator().manual_seed(8), **kw
    )
    assert torch.equal(a.y, b.y) and torch.equal(a.y_prime, b.y_prime)
    assert not (torch.equal(a.y, c.y) and torch.equal(a.y_prime, c.y_prime))
    assert policy.training and not reference.training


def test_bad_arguments():
    policy, reference = _model("llama", 0), _model("llama", 1)
    ids, mask = _prompts()
    kw = dict(max_new_tokens=3, temperature=1.0, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(ValueError, match="beta"):
        generate_pairs(policy, reference, ids, mask, beta=1.5, **kw)
    with pytest.raises(ValueError, match="opponent_model"):
        generate_pairs(policy, reference, ids, mask, beta=0.0, opponent="model", **kw)
    with pytest.raises(ValueError, match="uniforms"):
        generate_pairs(policy, reference, ids, mask, beta=0.5, uniforms=torch.rand(B, 3), **kw)


@pytest.mark.parametrize("arch", ARCHS)
def test_sequence_logits_match_unpadded_forward(arch):
    """One padded forward = each row run alone without padding (standard positions)."""
    model = _model(arch, 0)
    ids, mask = _prompts()
    g = torch.Generator().manual_seed(5)
    comp = torch.randint(3, V, (B, 4), generator=g)
    cmask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
    logits = sequence_logits(model, ids, mask, comp, cmask)
    assert logits.shape == (B, 4, V) and logits.requires_grad
    with torch.no_grad():
        for r in range(B):
            prompt = ids[r, mask[r].bool()]
            n = int(cmask[r].sum())
            seq = torch.cat([prompt, comp[r, :n]])[None]
            want = model(input_ids=seq).logits[0, len(prompt) - 1 : len(prompt) - 1 + n]
            assert_close(logits[r, :n].detach(), want, "float64", scope="model")
    logits[cmask.bool()].sum().backward()
    assert model.get_output_embeddings().weight.grad is not None
