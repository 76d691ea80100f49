"""torch (transformers) vs jax (Flax NNX) from the same tiny checkpoint, step by step
(docs/architecture.md §7): logits, per-token log-probs, sampled pairs from the same
uniforms, the Nash-MD-PG loss and its parameter gradients, and the parameters after one
optimiser step. Each side runs its production code path (``sequence_logits``,
``generate_pairs``, ``nash_md_pg_loss``, the optimiser builders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytestmark = [pytest.mark.jax, pytest.mark.torch]

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from nlhf.spec.models import TrainingSpec  # noqa: E402
from nlhf.testing.tolerances import assert_close  # noqa: E402

B, P, T = 3, 6, 7
TEMP, BETA, TAU = 0.8, 0.3, 0.2


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Qwen2 policy (weights ~ N(0, 0.3²), biases non-zero) and a perturbed copy as
    the reference."""
    from nlhf_torch.tiny import build_tiny_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("xbackend")
    raw = build_tiny_model(root / "raw", "qwen2", tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(raw)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(root / "policy")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(root / "reference")
    return {"policy": root / "policy", "reference": root / "reference"}


@pytest.fixture(scope="module")
def models(ckpts):
    from nlhf_jax.models import load_model
    from transformers import AutoModelForCausalLM

    tp = AutoModelForCausalLM.from_pretrained(ckpts["policy"]).eval()
    tr = AutoModelForCausalLM.from_pretrained(ckpts["reference"]).eval()
    return tp, tr, load_model(ckpts["policy"]), load_model(ckpts["reference"])


@pytest.fixture(scope="module")
def batch(models):
    """Left-padded prompts and the pairs torch samples from fixed uniforms."""
    from nlhf_torch.generation import generate_pairs

    tp, tr, _, _ = models
    rng = np.random.RandomState(0)
    ids = rng.randint(3, tp.config.vocab_size, size=(B, P))
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0
    ids[mask == 0] = 0
    uniforms = rng.rand(2 * B, T)
    eos = list(range(2, tp.config.vocab_size, 7))  # many EOS ids: some rows stop early
    pairs = generate_pairs(
        tp, tr, torch.tensor(ids), torch.tensor(mask), beta=BETA, max_new_tokens=T,
        temperature=TEMP, eos_token_id=eos, pad_token_id=0, uniforms=torch.tensor(uniforms),
        return_reference_logits=True,
    )  # fmt: skip
    return dict(ids=ids, mask=mask, uniforms=uniforms, eos=eos, pairs=pairs)


def _torch_logits(model, b):
    from nlhf_torch.generation import sequence_logits

    p = b["pairs"]
    return sequence_logits(model, torch.tensor(b["ids"]), torch.tensor(b["mask"]), p.y, p.y_mask)


def _jax_logits(model, b):
    from nlhf_jax.generation import sequence_logits

    p = b["pairs"]
    return sequence_logits(
        model, jnp.asarray(b["ids"]), jnp.asarray(b["mask"]),
        jnp.asarray(p.y.numpy()), jnp.asarray(p.y_mask.numpy()),
    )  # fmt: skip


def test_logits_and_token_logprobs_match(models, batch):
    from nlhf_jax.kernels import token_logprobs as jax_lp
    from nlhf_torch.kernels import token_logprobs as torch_lp

    tp, _, jp, _ = models
    with torch.no_grad():
        t_logits = _torch_logits(tp, batch)
    j_logits = _jax_logits(jp, batch)
    assert t_logits.shape == j_logits.shape == (B, T, tp.config.vocab_size)
    real = batch["pairs"].y_mask.numpy() == 1  # positions after EOS are never used
    assert 0 < real.sum() < real.size
    assert_close(np.asarray(j_logits)[real], t_logits.numpy()[real], what="logits", scope="model")
    y = batch["pairs"].y
    t_lp = torch_lp(t_logits, y, TEMP).numpy()
    j_lp = np.asarray(jax_lp(j_logits, jnp.asarray(y.numpy()), TEMP))
    assert np.abs(t_lp).max() > 1.0
    assert_close(j_lp[real], t_lp[real], what="token log-probs", scope="model")


@pytest.mark.parametrize(
    "opponent",
    [
        "mixture",
        pytest.param("reference", marks=pytest.mark.slow),
        pytest.param("policy", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("fast_decode", [False, True], ids=["hf", "fastdecode"])
def test_generation_draws_the_same_pairs(models, batch, opponent, fast_decode):
    """Same uniforms → the same y and y' tokens and masks; the reference logits returned
    for the KL term agree at the model-scope float32 tolerance (torch's fused decode sums
    in another order than the HF path: 1.1e-5 seen at |logit| ≈ 4.4)."""
    from nlhf_jax.generation import generate_pairs as jgen
    from nlhf_torch.generation import generate_pairs as tgen

    tp, tr, jp, jr = models
    kw = dict(beta=BETA, max_new_tokens=T, temperature=TEMP, eos_token_id=batch["eos"],
              pad_token_id=0, opponent=opponent, return_reference_logits=True)  # fmt: skip
    t = tgen(tp, tr, torch.tensor(batch["ids"]), torch.tensor(batch["mask"]),
             uniforms=torch.tensor(batch["uniforms"]), fast_decode=fast_decode, **kw)  # fmt: skip
    assert t.stats["fast_decode"] == int(fast_decode)
    j = jgen(jp, jr, batch["ids"], batch["mask"], uniforms=batch["uniforms"], **kw)
    assert 0 < int(t.y_mask.sum() + t.y_prime_mask.sum()) < 2 * B * T  # some rows hit EOS
    tw = t.y.shape[1]  # torch stops the buffer when every row has finished
    for name in ("y", "y_mask", "y_prime", "y_prime_mask"):
        np.testing.assert_array_equal(np.asarray(getattr(j, name))[:, :tw],
                                      getattr(t, name).numpy(), err_msg=name)  # fmt: skip
    j_ref = np.asarray(j.reference_logits)[:, :tw]
    assert_close(j_ref, t.reference_logits.numpy(), what="reference logits", scope="model")


def _torch_loss_and_grads(tp, tr, batch, estimator):
    from nlhf_torch.kernels import nash_md_pg_loss

    p = batch["pairs"]
    pref = torch.tensor([0.9, 0.2, 0.65], dtype=torch.float32)
    tp.zero_grad(set_to_none=True)
    with torch.no_grad():
        ref = _torch_logits(tr, batch)
    loss, _ = nash_md_pg_loss(_torch_logits(tp, batch), ref, p.y, p.y_mask, pref, TAU, TEMP,
                              estimator)  # fmt: skip
    loss.backward()
    grads = {n: q.grad.numpy().copy() for n, q in tp.named_parameters()}
    return float(loss.detach()), grads, pref.numpy()


def _jax_loss_fn(jp, jr, batch, pref, estimator):
    from nlhf_jax.kernels import nash_md_pg_loss

    p = batch["pairs"]
    y, ym = jnp.asarray(p.y.numpy()), jnp.asarray(p.y_mask.numpy())
    ref = _jax_logits(jr, batch)
    graphdef, state = nnx.split(jp)

    def fn(s):
        logits = _jax_logits(nnx.merge(graphdef, s), batch)
        loss, _ = nash_md_pg_loss(logits, ref, y, ym, jnp.asarray(pref), TAU, TEMP, estimator)
        return loss

    return fn, state, graphdef


@pytest.mark.parametrize("estimator", ["sampled", "k3", "exact"])
def test_nash_md_pg_loss_and_parameter_gradients_match(models, batch, estimator):
    from nlhf_jax.models import to_hf_state_dict

    tp, tr, jp, jr = models
    t_loss, t_grads, pref = _torch_loss_and_grads(tp, tr, batch, estimator)
    fn, state, _ = _jax_loss_fn(jp, jr, batch, pref, estimator)
    j_loss, j_grads = jax.value_and_grad(fn)(state)
    assert_close(float(j_loss), t_loss, what="loss", scope="model")
    j_grads = to_hf_state_dict(j_grads)
    assert set(j_grads) == set(t_grads)
    scale = max(np.abs(g).max() for g in t_grads.values())
    assert scale > 1e-2
    for name, g in t_grads.items():
        # summation error grows with the largest gradient: compare in units of max(1, scale)
        s = max(1.0, scale)
        assert_close(j_grads[name] / s, g / s, what=name, scope="model")


@pytest.mark.slow
def test_one_adamw_step_gives_the_same_parameters(models, batch, ckpts):
    """torch.optim.AdamW + clip_grad_norm_ vs the optax chain of the same spec section."""
    from nlhf_jax.models import to_hf_state_dict
    from nlhf_jax.optim import build_optimizer
    from transformers import AutoModelForCausalLM

    training = TrainingSpec(
        lr=1e-3, max_grad_norm=0.5, steps=10,
        optimizer={"name": "adamw", "weight_decay": 0.01, "eps": 1e-8},
    )  # fmt: skip
    _, tr, jp, jr = models
    tp = AutoModelForCausalLM.from_pretrained(ckpts["policy"]).eval()  # a fresh copy to update
    _, _t_grads, pref = _torch_loss_and_grads(tp, tr, batch, "exact")
    opt = torch.optim.AdamW(tp.parameters(), lr=training.lr, betas=training.optimizer.betas,
                            eps=training.optimizer.eps, weight_decay=0.01)  # fmt: skip
    before = {n: q.detach().numpy().copy() for n, q in tp.named_parameters()}
    torch.nn.utils.clip_grad_norm_(tp.parameters(), training.max_grad_norm)
    opt.step()
    after_t = {n: q.detach().numpy() for n, q in tp.named_parameters()}

    fn, state, _graphdef = _jax_loss_fn(jp, jr, batch, pref, "exact")
    grads = jax.grad(fn)(state)
    tx = build_optimizer(training)
    import optax

    updates, _ = tx.update(grads, tx.init(state), state)
    after_j = to_hf_state_dict(optax.apply_updates(state, updates))
    moved = max(np.abs(after_t[n] - before[n]).max() for n in before)
    assert moved > 5e-4  # the step really moved the parameters (≈ lr)
    for name, value in after_t.items():
        assert_close(after_j[name], value, what=name, scope="model")


def test_online_ipo_loss_and_parameter_gradients_match(models, batch):
    """Online IPO on the sampled (y, y'): loss equal to the NumPy oracle on the same
    logits (float64), and torch vs jax parameter gradients."""
    from nlhf.algorithms import numpy_oracle
    from nlhf_jax.generation import sequence_logits as jax_seq
    from nlhf_jax.kernels import online_ipo_loss as jax_ipo
    from nlhf_jax.models import to_hf_state_dict
    from nlhf_torch.generation import sequence_logits as torch_seq
    from nlhf_torch.kernels import online_ipo_loss as torch_ipo

    tp, tr, jp, jr = models
    p = batch["pairs"]
    ids, mask = torch.tensor(batch["ids"]), torch.tensor(batch["mask"])
    pref = torch.tensor([0.9, 0.2, 0.5], dtype=torch.float32)  # s = +1, −1, +1
    tau = 0.7
    tp.zero_grad(set_to_none=True)
    with torch.no_grad():
        ref_y = torch_seq(tr, ids, mask, p.y, p.y_mask)
        ref_p = torch_seq(tr, ids, mask, p.y_prime, p.y_prime_mask)
    log_y = torch_seq(tp, ids, mask, p.y, p.y_mask)
    log_p = torch_seq(tp, ids, mask, p.y_prime, p.y_prime_mask)
    args = (p.y, p.y_mask)
    args_p = (p.y_prime, p.y_prime_mask)
    t_loss, t_metrics = torch_ipo(log_y, ref_y, *args, log_p, ref_p, *args_p, pref, tau, TEMP)
    t_loss.backward()
    t_loss = t_loss.detach()
    t_grads = {n: q.grad.numpy().copy() for n, q in tp.named_parameters()}

    as64 = [x.detach().double().numpy() for x in (log_y, ref_y)]
    as64p = [x.detach().double().numpy() for x in (log_p, ref_p)]
    np_loss, np_metrics = numpy_oracle.online_ipo_loss(
        *as64, p.y.numpy(), p.y_mask.numpy(), *as64p, p.y_prime.numpy(),
        p.y_prime_mask.numpy(), pref.numpy(), tau, TEMP,
    )  # fmt: skip
    # one float32 kernel against the float64 oracle on the same log-probs
    assert_close(float(t_loss), np_loss, what="online IPO loss")
    assert_close(float(t_metrics["margin"]), np_metrics["margin"], what="margin")

    j = {k: jnp.asarray(v.numpy()) for k, v in
         dict(ids=ids, mask=mask, y=p.y, ym=p.y_mask, yp=p.y_prime, ypm=p.y_prime_mask).items()}  # fmt: skip
    jref_y = jax_seq(jr, j["ids"], j["mask"], j["y"], j["ym"])
    jref_p = jax_seq(jr, j["ids"], j["mask"], j["yp"], j["ypm"])
    graphdef, state = nnx.split(jp)

    def fn(s):
        model = nnx.merge(graphdef, s)
        ly = jax_seq(model, j["ids"], j["mask"], j["y"], j["ym"])
        lp = jax_seq(model, j["ids"], j["mask"], j["yp"], j["ypm"])
        return jax_ipo(ly, jref_y, j["y"], j["ym"], lp, jref_p, j["yp"], j["ypm"],
                       jnp.asarray(pref.numpy()), tau, TEMP)[0]  # fmt: skip

    j_loss, j_grads = jax.value_and_grad(fn)(state)
    assert_close(float(j_loss), float(t_loss), what="loss", scope="model")
    j_grads = to_hf_state_dict(j_grads)
    scale = max(np.abs(g).max() for g in t_grads.values())
    assert scale > 1e-2
    for name, g in t_grads.items():
        s = max(1.0, scale)  # in units of the largest gradient, as above
        assert_close(j_grads[name] / s, g / s, what=name, scope="model")


def test_online_ipo_reference_closed_form():
    """One row, hand-computed: with log-ratios a = log π/μ(y), b = log π/μ(y') and h = a − b,
    the loss is IPO's (h(y_w, y_l) − 1/(2τ))² averaged over y_w ~ Bernoulli(P), up to a
    constant: (h − (P − ½)/τ)²; at P = 0 the pair is (y', y) exactly, (b − a − 1/(2τ))²."""
    from nlhf.algorithms import numpy_oracle

    rng = np.random.RandomState(3)
    z, zr, zp, zrp = (rng.randn(1, 2, 5) for _ in range(4))
    y, yp, m = np.array([[1, 4]]), np.array([[0, 2]]), np.ones((1, 2))

    def lp(logits, tokens):
        t = logits / TEMP
        t = t - np.log(np.exp(t).sum(-1, keepdims=True))
        return sum(t[0, n, tokens[0, n]] for n in range(2))

    a, b = lp(z, y) - lp(zr, y), lp(zp, yp) - lp(zrp, yp)
    tau, p = 0.3, 0.2
    args = (z, zr, y, m, zp, zrp, yp, m)
    loss, metrics = numpy_oracle.online_ipo_loss(*args, np.array([p]), tau, TEMP)
    assert_close(loss, (a - b - (p - 0.5) / tau) ** 2, "float64", "loss")
    expected = p * (a - b - 1 / (2 * tau)) ** 2 + (1 - p) * (b - a - 1 / (2 * tau)) ** 2
    constant = 1 / (4 * tau**2) - (p - 0.5) ** 2 / tau**2  # E over the label − the loss
    assert_close(loss + constant, expected, "float64", "label-averaged sampled loss")
    hard, _ = numpy_oracle.online_ipo_loss(*args, np.array([0.0]), tau, TEMP)
    assert_close(hard, (b - a - 1 / (2 * tau)) ** 2, "float64", "P = 0: the sampled loss")
    assert_close(metrics["margin"], b - a, "float64", "margin")
