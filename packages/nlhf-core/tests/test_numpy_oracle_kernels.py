"""The float64 NumPy oracle (nlhf.algorithms.numpy_oracle) against independent oracles:
scipy.special, closed forms, hand-written loops and central finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nlhf.algorithms import numpy_oracle as R
from nlhf.algorithms.protocols import Kernels
from nlhf.testing.tolerances import Tolerance, assert_close, tolerance
from scipy.special import expit, log_softmax, rel_entr, softmax

RNG = np.random.default_rng(7)
B, T, V = 3, 4, 5
TEMP = 0.7
POLICY = RNG.normal(0, 1.5, (B, T, V))
REF = POLICY + RNG.normal(0, 0.8, (B, T, V))
TOKENS = RNG.integers(0, V, (B, T))
MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=float)
PREF = np.array([0.9, 0.2, 0.55])
W = np.array([1.3, 0.6, 0.9])


#: Central differences with step h = 1e-5 are exact to O(h²·f''' + ε·|f|/h) ≈ 1e-10 on these
#: O(1) functions; FD comparisons allow 1e-9 (1e-8 where f sums a batch). These bounds come
#: from the finite-difference oracle, not from a dtype.
FD_ATOL = 1e-9


def fd(fn, x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Plain central differences (the test's own, independent of numpy_oracle.py)."""
    x = x.astype(float).copy()
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        up = fn(x)
        x[idx] = old - h
        down = fn(x)
        x[idx] = old
        g[idx] = (up - down) / (2 * h)
    return g


def tok_lp(logits: np.ndarray, tokens: np.ndarray, temp: float) -> np.ndarray:
    lp = log_softmax(logits / temp, axis=-1)
    return np.array(
        [[lp[b, t, tokens[b, t]] for t in range(tokens.shape[1])] for b in range(len(lp))]
    )


def loop_kl(z, zr, tokens, mask, est, temp, to_go_at=None):
    """(surrogate, value) by explicit loops over rows and positions; the sampled
    estimator's reward-to-go is computed at ``to_go_at`` (the stop-gradient point)."""
    lp, lq = tok_lp(z, tokens, temp), tok_lp(zr, tokens, temp)
    ratio = lp - lq
    anchor = ratio if to_go_at is None else tok_lp(to_go_at, tokens, temp) - lq
    sur, val = np.zeros(len(z)), np.zeros(len(z))
    for b in range(len(z)):
        for n in range(tokens.shape[1]):
            if not mask[b, n]:
                continue
            if est == "exact":
                p = softmax(z[b, n] / temp)
                q = softmax(zr[b, n] / temp)
                term = rel_entr(p, q).sum()
                sur[b] += term
                val[b] += term
            elif est == "k3":
                term = math.exp(-ratio[b, n]) - 1 + ratio[b, n]
                sur[b] += term
                val[b] += term
            else:
                to_go = sum(anchor[b, m] for m in range(n, tokens.shape[1]) if mask[b, m])
                sur[b] += lp[b, n] * to_go
                val[b] += ratio[b, n]
    return sur, val


# ----------------------------------------------------------------- forward values


def test_preference_loss_matches_scipy_and_closed_form() -> None:
    vf, vb = RNG.normal(0, 2, 6), RNG.normal(0, 2, 6)
    p = np.array([1, 0, 0.3, 1, 0.5, 0.8])
    z = vf - vb
    expected = np.mean(-(p * np.log(expit(z)) + (1 - p) * np.log(expit(-z))))
    assert_close(R.preference_loss(vf, vb, p), expected, "float64")
    assert R.preference_loss(np.zeros(4), np.zeros(4), np.ones(4)) == pytest.approx(math.log(2))
    # stable for huge margins: −log σ(−60) = 60 + log(1 + e^−60)
    assert R.preference_loss(np.array([60.0]), np.array([0.0]), np.array([0.0])) == pytest.approx(
        60.0
    )
    assert R.preference_loss(np.array([-800.0]), np.array([0.0]), np.array([1.0])) == pytest.approx(
        800.0
    )


def test_mixture_logprobs_is_the_normalised_geometric_mean() -> None:
    pi = softmax(POLICY, axis=-1)
    mu = softmax(REF, axis=-1)
    for beta in (0.0, 0.3, 1.0):
        mix = pi ** (1 - beta) * mu**beta
        mix /= mix.sum(-1, keepdims=True)
        assert_close(np.exp(R.mixture_logprobs(POLICY, REF, beta, 1.0)), mix, "float64")
    # temperature applies to the mixed logits
    mixed = 0.7 * POLICY + 0.3 * REF
    assert_close(
        R.mixture_logprobs(POLICY, REF, 0.3, 0.7), log_softmax(mixed / 0.7, axis=-1), "float64"
    )


def test_sample_inverse_cdf_by_hand() -> None:
    lp = np.log(np.array([0.2, 0.5, 0.3]))
    u = np.array([0.0, 0.1, 0.25, 0.69, 0.75, 0.999999, 1.0])
    np.testing.assert_array_equal(R.sample(np.broadcast_to(lp, (7, 3)), u), [0, 0, 1, 1, 2, 2, 2])
    # a uniform grid of u reproduces the probabilities to 1/N
    probs = softmax(RNG.normal(0, 1, 6))
    n = 10_000
    toks = R.sample(np.broadcast_to(np.log(probs), (n, 6)), (np.arange(n) + 0.5) / n)
    # a grid of n points puts ⌊n·p⌋ or ⌈n·p⌉ in each bin: within 1/n (+1% for rounding)
    np.testing.assert_allclose(np.bincount(toks, minlength=6) / n, probs, atol=1.01 / n)


@pytest.mark.parametrize("est", R.ESTIMATORS)
def test_kl_matches_loops(est: str) -> None:
    sur, val = R.kl(POLICY, REF, TOKENS, MASK, est, TEMP)
    e_sur, e_val = loop_kl(POLICY, REF, TOKENS, MASK, est, TEMP)
    assert_close(sur, e_sur, "float64")
    assert_close(val, e_val, "float64")


def test_exact_kl_equals_categorical_kl_sum() -> None:
    _, val = R.kl(POLICY, REF, TOKENS, np.ones((B, T)), "exact", 1.0)
    direct = rel_entr(softmax(POLICY, -1), softmax(REF, -1)).sum(axis=(1, 2))
    assert_close(val, direct, "float64")
    # KL(π‖π) = 0 and the k3 / sampled values vanish too
    for est in R.ESTIMATORS:
        assert_close(R.kl(POLICY, POLICY, TOKENS, MASK, est, TEMP)[1], 0.0, "float64")


@pytest.mark.parametrize("est", R.ESTIMATORS)
def test_padding_is_ignored(est: str) -> None:
    z2, r2, t2 = POLICY.copy(), REF.copy(), TOKENS.copy()
    pad = MASK == 0
    z2[pad] += 5.0
    r2[pad] -= 3.0
    t2[pad] = (t2[pad] + 1) % V
    for a, b in zip(
        R.kl(POLICY, REF, TOKENS, MASK, est, TEMP), R.kl(z2, r2, t2, MASK, est, TEMP), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    g = R.kl_grad(POLICY, REF, TOKENS, MASK, est, TEMP)
    assert np.all(g[pad] == 0.0)


@pytest.mark.parametrize("est", R.ESTIMATORS)
def test_nash_md_pg_loss_by_hand(est: str) -> None:
    tau = 0.2
    loss, metrics = R.nash_md_pg_loss(POLICY, REF, TOKENS, MASK, PREF, tau, TEMP, est)
    seq = (tok_lp(POLICY, TOKENS, TEMP) * MASK).sum(1)
    sur, val = loop_kl(POLICY, REF, TOKENS, MASK, est, TEMP)
    score = -(PREF - 0.5) * seq
    assert_close(loss, np.mean(score + tau * sur), "float64")
    assert_close(metrics["score"], score.mean(), "float64")
    assert_close(metrics["kl"], val.mean(), "float64")
    assert_close(metrics["preference"], PREF.mean(), "float64")


def test_tabular_nash_md_one_step_and_convergence() -> None:
    P = np.array([[0.5, 0.7], [0.3, 0.5]])
    mu = np.array([0.5, 0.5])
    tau = 0.5
    traj = R.tabular_nash_md(P, mu, tau, 400)
    np.testing.assert_allclose(traj[0], mu)
    # step 0: η_0 = 1/τ, so π_0^μ = μ and π_1 ∝ μ·exp(Pμ/τ)
    one = mu * np.exp(P @ mu / tau)
    assert_close(traj[1], one / one.sum(), "float64")
    # closed form regularised NE: π1 = σ(0.2/τ); paper bound KL(π*, π_T) ≤ 8/(τ²(T+1))
    star = np.array([expit(0.2 / tau), expit(-0.2 / tau)])
    for t in (1, 10, 100, 400):
        assert rel_entr(star, traj[t]).sum() <= 8 / (tau**2 * (t + 1))
    # a convergence claim after 400 steps (not a rounding tolerance)
    np.testing.assert_allclose(traj[-1], star, atol=2e-3)


# ----------------------------------------------------------------- gradients


def test_preference_loss_grad_vs_finite_differences() -> None:
    vf, vb = RNG.normal(0, 2, 5), RNG.normal(0, 2, 5)
    p = np.array([1, 0, 0.3, 1, 0.6])
    g_f, g_b = R.preference_loss_grad(vf, vb, p)
    np.testing.assert_allclose(g_f, fd(lambda v: R.preference_loss(v, vb, p), vf), atol=FD_ATOL)
    np.testing.assert_allclose(g_b, fd(lambda v: R.preference_loss(vf, v, p), vb), atol=FD_ATOL)


@pytest.mark.parametrize("est", R.ESTIMATORS)
def test_kl_grad_vs_finite_differences(est: str) -> None:
    # the sampled surrogate's reward-to-go is a stop-gradient: hold it at POLICY
    anchor = POLICY if est == "sampled" else None

    def f(z: np.ndarray) -> float:
        return float(W @ loop_kl(z, REF, TOKENS, MASK, est, TEMP, to_go_at=anchor)[0])

    g = R.kl_grad(POLICY, REF, TOKENS, MASK, est, TEMP, W)
    np.testing.assert_allclose(g, fd(f, POLICY), atol=10 * FD_ATOL)


@pytest.mark.parametrize("est", R.ESTIMATORS)
def test_nash_md_pg_grad_vs_finite_differences(est: str) -> None:
    tau = 0.2
    anchor = POLICY if est == "sampled" else None

    def f(z: np.ndarray) -> float:
        seq = (tok_lp(z, TOKENS, TEMP) * MASK).sum(1)
        sur, _ = loop_kl(z, REF, TOKENS, MASK, est, TEMP, to_go_at=anchor)
        return float(np.mean(-(PREF - 0.5) * seq + tau * sur))

    g = R.nash_md_pg_loss_grad(POLICY, REF, TOKENS, MASK, PREF, tau, TEMP, est)
    np.testing.assert_allclose(g, fd(f, POLICY), atol=10 * FD_ATOL)


# ------------------------------------------------------------------- NumpyKernels


def test_numpy_kernels_protocol_and_conversion() -> None:
    k = R.NumpyKernels()
    assert isinstance(k, Kernels)
    x = k.asarray([1, 2], dtype="float64")
    assert x.dtype == np.float64 and k.to_numpy(x) is not None
    assert k.asarray([1, 2], dtype="int64").dtype == np.int64


@pytest.mark.parametrize("method", ["complex_step", "central"])
def test_numpy_kernels_grad_on_sg_free_functions(method: str) -> None:
    """Both numerical gradients agree with the analytic ones where no sg(·) is involved."""
    k = R.NumpyKernels(method)  # type: ignore[arg-type]
    # the complex step has no subtraction: exact to float64 rounding; central: FD_ATOL
    tol = tolerance("float64") if method == "complex_step" else Tolerance(0.0, FD_ATOL)
    for est in ("k3", "exact"):
        g = k.grad(lambda z, est=est: W @ k.kl(z, REF, TOKENS, MASK, est, TEMP)[0], POLICY)
        expected = R.kl_grad(POLICY, REF, TOKENS, MASK, est, TEMP, W)
        np.testing.assert_allclose(g, expected, **tol.kwargs())


def test_complex_step_honours_stop_gradient_but_central_does_not() -> None:
    expected = R.kl_grad(POLICY, REF, TOKENS, MASK, "sampled", TEMP, W)

    def f(z):
        return W @ R.kl(z, REF, TOKENS, MASK, "sampled", TEMP)[0]

    assert_close(R.NumpyKernels().grad(f, POLICY), expected, "float64")
    assert np.abs(R.NumpyKernels("central").grad(f, POLICY) - expected).max() > 1e-3
