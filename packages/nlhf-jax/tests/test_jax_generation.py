"""The jitted cached decode loop draws the same tokens as an uncached full-prefix loop
(every step re-runs both models over prompt + tokens so far) given the same uniforms."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from nlhf.algorithms import numpy_oracle as ref_np
from nlhf.testing.tolerances import assert_close

pytestmark = pytest.mark.jax


def _uncached(policy, reference, ids, mask, uniforms, beta, temp, eos, pad, steps):
    b = ids.shape[0]
    rows_ids = np.concatenate([ids, ids])
    rows_mask = np.concatenate([mask, mask])
    toks = np.full((2 * b, steps), pad)
    done = np.zeros(2 * b, bool)
    for n in range(steps):
        full = np.concatenate([rows_ids, toks[:, :n]], 1)
        fmask = np.concatenate([rows_mask, np.ones((2 * b, n), int)], 1)
        lp = np.asarray(policy(full, fmask)[0][:, -1], np.float64)
        lr = np.asarray(reference(full, fmask)[0][:, -1], np.float64)
        logp = np.concatenate([ref_np.log_softmax(lp[:b] / temp),
                               ref_np.mixture_logprobs(lp[b:], lr[b:], beta, temp)])  # fmt: skip
        new = np.where(done, pad, ref_np.sample(logp, uniforms[:, n]))
        toks[:, n] = new
        done |= np.isin(new, eos)
    return toks


@pytest.mark.slow
def test_cached_decode_equals_uncached_loop(tiny_ckpts):
    from nlhf_jax.generation import generate_pairs
    from nlhf_jax.models import load_model

    policy, reference = load_model(tiny_ckpts["llama"]), load_model(tiny_ckpts["llama_tied"])
    rng = np.random.RandomState(4)
    ids = rng.randint(3, policy.config.vocab_size, (2, 5))
    mask = np.ones_like(ids)
    mask[0, :2] = 0
    ids[mask == 0] = 0
    u = rng.rand(4, 6)
    eos = list(range(2, policy.config.vocab_size, 6))
    want = _uncached(policy, reference, ids, mask, u, 0.4, 0.9, eos, 0, 6)
    got = generate_pairs(policy, reference, ids, mask, beta=0.4, max_new_tokens=6,
                         temperature=0.9, eos_token_id=eos, pad_token_id=0, uniforms=u)  # fmt: skip
    tokens = np.concatenate([np.asarray(got.y), np.asarray(got.y_prime)])
    assert (want == 0).any()  # some row stopped at EOS
    np.testing.assert_array_equal(tokens, want)
    masks = np.concatenate([np.asarray(got.y_mask), np.asarray(got.y_prime_mask)])
    first_eos = [next((i for i, t in enumerate(r) if t in eos), 5) for r in want]
    np.testing.assert_array_equal(masks, np.arange(6)[None, :] <= np.array(first_eos)[:, None])
    # PRNG keys: same key -> same draw, different key -> different draw
    k = dict(beta=0.4, max_new_tokens=6, temperature=0.9, eos_token_id=eos, pad_token_id=0)
    a = generate_pairs(policy, reference, ids, mask, key=jax.random.key(0), **k).y
    b = generate_pairs(policy, reference, ids, mask, key=jax.random.key(0), **k).y
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_float64_kernels_do_not_flip_the_global_x64_switch():
    from nlhf_jax.kernels import JaxKernels

    k = JaxKernels()
    x = k.asarray(np.array([0.1, 0.2]), "float64")
    assert x.dtype == np.float64
    g = k.grad(lambda v: k.preference_loss(v, v * 0, v * 0 + 1.0), x)
    assert_close(np.asarray(g), (ref_np.sigmoid([0.1, 0.2]) - 1.0) / 2, "float64")
    assert not jax.config.jax_enable_x64
    assert k.asarray(np.array([0.1]), "float32").dtype == np.float32
