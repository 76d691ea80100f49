"""Prefill once per distinct prompt, and the fused decode's weights read in place
(:mod:`nlhf_torch.fastdecode`, :func:`nlhf_torch.generation.generate_pairs`).

Oracles: the rows each prefill matmul sees (counted on the fused path's linear layers and
on the HF model's own forward), Python's first-occurrence dedup of the prompt rows, and the
tokens of the path that prefills every row (``unique_prompts`` replaced by the identity,
as the code did before), on the HF path and the fused one. float64 models make token
equality exact (random uniforms, no CDF boundary within rounding).
"""

from __future__ import annotations

import pytest
import torch
from nlhf.testing.tolerances import assert_close
from nlhf_torch import fastdecode
from nlhf_torch.generation import generate_pairs
from nlhf_torch.tiny import tiny_config
from transformers import AutoModelForCausalLM

V, EOS, PAD, B, P, MAX_NEW = 40, 0, 1, 3, 7, 5


def _model(arch: str, seed: int, tie: bool = False):
    cfg = tiny_config(arch, V, hidden_size=32, heads=4, kv_heads=2, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).to(torch.float64).eval()


def _prompts(tile: int = 1):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, V, (B, P), generator=g)
    mask = torch.ones_like(ids)
    for row, n_pad in enumerate([3, 0, 5]):
        mask[row, :n_pad], ids[row, :n_pad] = 0, PAD
    return ids.repeat(tile, 1), mask.repeat(tile, 1)


def _uniforms(rows: int):
    g = torch.Generator().manual_seed(4)
    return (0.05 + 0.9 * torch.rand(rows, MAX_NEW, generator=g)).double()


def _generate(policy, reference, ids, mask, fast, **kw):
    args = dict(beta=0.4, temperature=0.9, max_new_tokens=MAX_NEW, eos_token_id=EOS)
    args.update(kw)
    u = _uniforms(2 * ids.shape[0])
    return generate_pairs(
        policy, reference, ids, mask, pad_token_id=PAD, uniforms=u, fast_decode=fast, **args
    )


def _count_linear_rows(monkeypatch) -> list[tuple[int, int]]:
    """(M, N) of every fused linear call: M members, N rows (prefill: prompts × width)."""
    seen: list[tuple[int, int]] = []
    call = fastdecode._Linear.__call__

    def counting(self, x):
        seen.append((x.shape[0], x.shape[1]))
        return call(self, x)

    monkeypatch.setattr(fastdecode._Linear, "__call__", counting)
    return seen


def _every_row(input_ids, attention_mask):
    rows = torch.arange(input_ids.shape[0])
    return rows, rows


def _same_tokens(a, b):
    for name in ("y", "y_mask", "y_prime", "y_prime_mask"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_unique_prompts_against_first_occurrence_dedup():
    ids = torch.tensor([[5, 6], [7, 8], [5, 6], [1, 6], [7, 8], [5, 6]])
    mask = torch.ones_like(ids)
    mask[3, 0] = 0  # same ids as no other row; row 5 differs from row 0 by its mask
    mask[5, 0] = 0
    ids[5, 0] = 5
    keep, source = fastdecode.unique_prompts(ids, mask)
    rows = [tuple(r) for r in torch.cat([ids, mask], 1).tolist()]
    first = list(dict.fromkeys(rows))  # Python's own first-occurrence order
    assert keep.tolist() == [rows.index(r) for r in first] == [0, 1, 3, 5]
    assert source.tolist() == [first.index(r) for r in rows] == [0, 1, 0, 2, 1, 3]
    back = ids[keep][source]
    assert torch.equal(back, ids) and torch.equal(mask[keep][source], mask)
    distinct = torch.arange(6)[:, None].expand(6, 2)
    keep, source = fastdecode.unique_prompts(distinct, torch.ones_like(distinct))
    assert keep.tolist() == source.tolist() == list(range(6))


def test_nash_md_pg_prefills_each_prompt_once_per_pair(monkeypatch):
    """The Nash-MD-PG trainer's call (mixture opponent, reference logits along y): policy
    and reference decode all 2B rows in one group, but the prefill matmuls see each of the
    B prompts once (B·P rows per model, not 2B·P); tokens and reference logits equal the
    HF path's."""
    policy, reference = _model("llama", 0), _model("llama", 1)
    ids, mask = _prompts()
    seen = _count_linear_rows(monkeypatch)
    fast = _generate(policy, reference, ids, mask, True, return_reference_logits=True)
    per_layer = 4 * policy.config.num_hidden_layers  # qkv, o, gate/up, down
    assert seen[:per_layer] == [(2, B * P)] * per_layer  # prefill: both models, B prompts
    assert seen[per_layer] == (2, B)  # the LM head on each prompt's last position
    assert seen[per_layer + 1] == (2, 2 * B)  # decoding: y and y′ rows
    slow = _generate(policy, reference, ids, mask, False, return_reference_logits=True)
    _same_tokens(fast, slow)
    assert_close(fast.reference_logits, slow.reference_logits, "float64", scope="model")


@pytest.mark.parametrize("pool", [False, True], ids=["fresh-cache", "cache-pool"])
@pytest.mark.parametrize("opponent", ["mixture", "policy", "model"])
def test_repeated_prompts_are_prefilled_once(opponent, pool, monkeypatch):
    """Prompts tiled twice (as K responses per prompt are sampled): every model's prefill
    runs the B distinct prompts once, on the fused and on the HF path, and both draw the
    tokens of the former per-row prefill."""
    policy, reference, ema = (_model("qwen2", s, tie=True) for s in (0, 1, 2))
    ids, mask = _prompts(tile=2)
    kw = dict(opponent=opponent, opponent_model=ema, return_reference_logits=True)
    with monkeypatch.context() as m:  # today's output: each of the 2B rows prefilled
        m.setattr(fastdecode, "unique_prompts", _every_row)
        want_hf = _generate(policy, reference, ids, mask, False, **kw)
        want_fast = _generate(policy, reference, ids, mask, True, **kw)
    with monkeypatch.context() as m:
        seen = _count_linear_rows(m)
        cache = fastdecode.KVCachePool() if pool else None
        fast = _generate(policy, reference, ids, mask, True, cache_pool=cache, **kw)
    assert fast.decode_path == "fused"
    prefill = [n for _, n in seen if n > 2 * ids.shape[0]]
    assert prefill and set(prefill) == {B * P}  # never 2B·P
    hf_rows: list[int] = []
    hooks = [
        net.register_forward_pre_hook(
            lambda mod, args, kwargs: hf_rows.append(kwargs["input_ids"].shape), with_kwargs=True
        )
        for net in (policy, reference, ema)
    ]
    try:
        slow = _generate(policy, reference, ids, mask, False, **kw)
    finally:
        for h in hooks:
            h.remove()
    assert {s for s in hf_rows if s[1] > 1} == {(B, P)}  # HF prefills: B prompts each
    for got in (fast, slow, want_fast):
        _same_tokens(got, want_hf)
    assert_close(fast.reference_logits, want_hf.reference_logits, "float64", scope="model")
    assert_close(slow.reference_logits, want_hf.reference_logits, "float64", scope="model")


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_in_place_path_reads_the_parameters_themselves(tie, monkeypatch):
    """Above FUSE_MAX_PARAMS the group holds no weight copy: every weight and embedding
    table it multiplies by is a parameter tensor of policy or reference (same storage);
    tokens equal the HF path."""
    monkeypatch.setattr(fastdecode, "FUSE_MAX_PARAMS", 0)
    policy, reference = _model("llama", 0, tie), _model("llama", 1, tie)
    group = fastdecode.FastGroup([policy, reference], torch.arange(2 * B), MAX_NEW)
    params = {p.data_ptr() for net in (policy, reference) for p in net.parameters()}

    def weights(lin):
        flat = [w for ws in lin.w for w in ws]
        return flat + [b for bs in lin.b for b in bs if b is not None]

    held = [w for p in group.layers for k in ("qkv", "o", "gu", "down") for w in weights(p[k])]
    held += weights(group.head) + group.embeds
    assert len(held) == policy.config.num_hidden_layers * 2 * 7 + 2 + 2
    assert {w.data_ptr() for w in held} <= params
    assert group.embed.ndim == 2  # no stacked (M, V, h) table
    ids, mask = _prompts()
    fast = _generate(policy, reference, ids, mask, True, return_reference_logits=True)
    slow = _generate(policy, reference, ids, mask, False, return_reference_logits=True)
    assert fast.decode_path == "fused"
    _same_tokens(fast, slow)
    assert_close(fast.reference_logits, slow.reference_logits, "float64", scope="model")
