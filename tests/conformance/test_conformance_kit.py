"""The kit has teeth: each known kernel bug (docs/architecture.md §5, pitfalls) makes a
kit case fail; and the pytest plugin turns declared gaps into strict xfails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nlhf.algorithms import numpy_oracle as R
from nlhf.testing import BackendConformance, cases


class _Kit(BackendConformance):  # not collected (no Test prefix): cases called directly
    backend = "numpy"
    dtype = "float64"


class SwappedMixture(R.NumpyKernels):
    """TRL PR #1853: the mixture coefficients swapped."""

    def mixture_logprobs(self, p: Any, r: Any, beta: float, temperature: float) -> Any:  # type: ignore[override]
        return R.mixture_logprobs(p, r, 1.0 - beta, temperature)


class NoTemperatureKL(R.NumpyKernels):
    """Temperature used for sampling but not for log-probs."""

    def kl(self, p, r, t, m, estimator, temperature):  # type: ignore[override]
        return R.kl(p, r, t, m, estimator, 1.0)


class UnmaskedKL(R.NumpyKernels):
    """Padding after EOS counted (TRL #6802-like)."""

    def kl(self, p, r, t, m, estimator, temperature):  # type: ignore[override]
        return R.kl(p, r, t, np.ones_like(m), estimator, temperature)


class GreedySampler(R.NumpyKernels):
    def sample(self, logprobs, uniforms):  # type: ignore[override]
        return np.argmax(logprobs, axis=-1)


class UncenteredPreference(R.NumpyKernels):
    """−P·Σ log π instead of −(P − ½)·Σ log π."""

    def nash_md_pg_loss(self, p, r, t, m, pref, tau, temperature, estimator):  # type: ignore[override]
        return R.nash_md_pg_loss(p, r, t, m, np.asarray(pref) - 0.5, tau, temperature, estimator)


class NoTemperatureLogprobs(R.NumpyKernels):
    """Sequence log-probs at T = 1 although sampling used T."""

    def sequence_logprobs(self, logits, tokens, mask, temperature):  # type: ignore[override]
        return R.sequence_logprobs(logits, tokens, mask, 1.0)


class UnsignedIPO(R.NumpyKernels):
    """(h − 1/(2τ))² for every pair: y' is never the winner (no s = sign(P − ½))."""

    def online_ipo_loss(self, *args):  # type: ignore[override]
        *sequences, pref, tau, temperature = args
        return R.online_ipo_loss(*sequences, np.ones_like(pref), tau, temperature)


class IPOTargetOneOverTau(R.NumpyKernels):
    """Target 1/τ instead of IPO's 1/(2τ)."""

    def online_ipo_loss(self, *args):  # type: ignore[override]
        *sequences, pref, tau, temperature = args
        return R.online_ipo_loss(*sequences, pref, tau / 2.0, temperature)


class IPOGradThroughReference(R.NumpyKernels):
    """The policy logits also stand in for the reference's over y', so the log-ratio of y'
    has no gradient (a reference copy that shares, or detaches, the wrong tensor)."""

    def online_ipo_loss(self, *args):  # type: ignore[override]
        zy, ry, y, my, zp, rp, yp, mp, *rest = args
        return R.online_ipo_loss(zy, ry, y, my, R.sg(zp), rp, yp, mp, *rest)


class PolicyOnlyOpponent(R.NumpyKernels):
    """y' sampled from π_θ whatever the opponent: the mixture with μ is ignored."""

    def generate_pairs(self, policy, reference, input_ids, attention_mask, **kwargs):  # type: ignore[override]
        return super().generate_pairs(
            policy, reference, input_ids, attention_mask, **{**kwargs, "opponent": "policy"}
        )


class SwappedRows(R.NumpyKernels):
    """y drawn with the uniforms of y' rows and vice versa (rows B..2B−1 taken as y)."""

    def generate_pairs(self, policy, reference, input_ids, attention_mask, **kwargs):  # type: ignore[override]
        u = np.asarray(kwargs.pop("uniforms"))
        half = u.shape[0] // 2
        swapped = np.concatenate([u[half:], u[:half]])
        return super().generate_pairs(
            policy, reference, input_ids, attention_mask, uniforms=swapped, **kwargs
        )


class NoEosStop(R.NumpyKernels):
    """Rows keep sampling after their EOS."""

    def generate_pairs(self, policy, reference, input_ids, attention_mask, **kwargs):  # type: ignore[override]
        return super().generate_pairs(
            policy, reference, input_ids, attention_mask, **{**kwargs, "eos_token_id": []}
        )


class OfflineIPOTargetOneOverTau(R.NumpyKernels):
    """Offline IPO with target 1/τ instead of 1/(2τ)."""

    def offline_ipo_loss(self, pc, pr, rc, rr, tau):  # type: ignore[override]
        return R.offline_ipo_loss(pc, pr, rc, rr, tau / 2.0)


class DPOWithoutBeta(R.NumpyKernels):
    """DPO with β forgotten (−log σ(h))."""

    def dpo_loss(self, pc, pr, rc, rr, beta):  # type: ignore[override]
        return R.dpo_loss(pc, pr, rc, rr, 1.0)


class DPOSwappedPair(R.NumpyKernels):
    """DPO with chosen and rejected swapped (h of the wrong sign)."""

    def dpo_loss(self, pc, pr, rc, rr, beta):  # type: ignore[override]
        return R.dpo_loss(pr, pc, rr, rc, beta)


class OfflineGradThroughReference(R.NumpyKernels):
    """The cached reference log-probs not gradient-stopped."""

    def offline_ipo_loss(self, pc, pr, rc, rr, tau):  # type: ignore[override]
        h = (pc - rc) - (pr - rr)
        return np.mean((h - 1.0 / (2.0 * tau)) ** 2), {}


class SPPOGradThroughAnchor(R.NumpyKernels):
    """π_t's log-probs not detached: the loss then pulls π_t too (and its value at
    θ = θ_t is unchanged, so only the gradient case can tell)."""

    def sppo_loss(self, policy, anchor, win_rate, eta):  # type: ignore[override]
        return np.mean((policy - anchor - eta * (win_rate - 0.5)) ** 2), {
            "log_ratio": np.mean(np.real(policy - anchor)),
            "win_rate_gap": np.mean(np.abs(np.real(win_rate) - 0.5)),
        }


class SPPOUncentredWinRate(R.NumpyKernels):
    """The target η·P̂ instead of η(P̂ − ½) (the log-partition constant dropped)."""

    def sppo_loss(self, policy, anchor, win_rate, eta):  # type: ignore[override]
        return R.sppo_loss(policy, anchor, np.asarray(win_rate) + 0.5, eta)


class INPOWithoutAnchor(R.NumpyKernels):
    """log π_t's (1 − ητ) term dropped: the DPO/IPO-like margin against μ only."""

    def inpo_loss(self, py, pyp, ay, ayp, ry, ryp, p, tau, eta):  # type: ignore[override]
        return R.inpo_loss(py, pyp, np.zeros_like(ay), np.zeros_like(ayp), ry, ryp, p, tau, eta)


class EGPOHardLabel(R.NumpyKernels):
    """Online IPO's hard-label target 1/(2τ) on the pair ordered by P, not (P − ½)/τ."""

    def egpo_loss(self, py, pyp, ry, ryp, p, tau):  # type: ignore[override]
        s = np.where(np.real(p) >= 0.5, 1.0, -1.0)
        return R.egpo_loss(py, pyp, ry, ryp, 0.5 + s / 2, tau)


def _fails(method: str, kernels: Any, **kwargs: Any) -> None:
    with pytest.raises(AssertionError):
        getattr(_Kit(), method)(kernels, **kwargs)


@pytest.fixture(scope="module")
def generation(tmp_path_factory: pytest.TempPathFactory) -> cases.GenerationInputs:
    return cases.generation_inputs(tmp_path_factory.getbasetemp() / "nlhf-conformance-lm")


def test_kit_catches_known_generation_and_ipo_bugs(generation: cases.GenerationInputs) -> None:
    _fails("test_sequence_logprobs", NoTemperatureLogprobs(), temperature=0.7)
    _fails("test_sequence_logprobs_grad", NoTemperatureLogprobs())
    for bad in (UnsignedIPO(), IPOTargetOneOverTau()):
        _fails("test_online_ipo_loss", bad)
        _fails("test_online_ipo_grad", bad)
    _fails("test_online_ipo_grad", IPOGradThroughReference())
    for opponent in ("mixture", "reference"):
        _fails(
            "test_generate_pairs", PolicyOnlyOpponent(), generation=generation, opponent=opponent
        )
    for opponent in cases.OPPONENTS:
        _fails("test_generate_pairs", SwappedRows(), generation=generation, opponent=opponent)
        _fails("test_generate_pairs", NoEosStop(), generation=generation, opponent=opponent)
    _fails("test_model_sequence_logprobs", NoTemperatureLogprobs(), generation=generation)


def test_kit_catches_known_offline_loss_bugs() -> None:
    _fails("test_offline_ipo_loss", OfflineIPOTargetOneOverTau())
    _fails("test_offline_ipo_grad", OfflineIPOTargetOneOverTau())
    for bad in (DPOWithoutBeta(), DPOSwappedPair()):
        _fails("test_dpo_loss", bad)
        _fails("test_dpo_grad", bad)
    _fails("test_offline_ipo_grad", OfflineGradThroughReference())
    _Kit().test_offline_ipo_grad(R.NumpyKernels())  # and the oracle passes
    _Kit().test_dpo_grad(R.NumpyKernels())


def test_kit_catches_known_game_family_bugs() -> None:
    _fails("test_sppo_grad", SPPOGradThroughAnchor())
    _Kit().test_sppo_loss(SPPOGradThroughAnchor())  # its value is right: only ∇ tells
    for case in ("test_sppo_loss", "test_sppo_grad"):
        _fails(case, SPPOUncentredWinRate())
    for case in ("test_inpo_loss", "test_inpo_grad"):
        _fails(case, INPOWithoutAnchor())
    for case in ("test_egpo_loss", "test_egpo_grad"):
        _fails(case, EGPOHardLabel())
    for case in ("sppo", "inpo", "egpo"):  # and the oracle passes
        getattr(_Kit(), f"test_{case}_grad")(R.NumpyKernels())


def test_kit_passes_the_oracle_itself() -> None:
    k = R.NumpyKernels()
    _Kit().test_mixture_logprobs(k, beta=0.3, temperature=0.7)
    _Kit().test_kl_grad(k, estimator="sampled")
    _Kit().test_online_ipo_grad(k)


def test_kit_catches_known_bugs() -> None:
    _fails("test_mixture_logprobs", SwappedMixture(), beta=0.3, temperature=1.0)
    for est in R.ESTIMATORS:
        _fails("test_kl_value", NoTemperatureKL(), estimator=est)
        _fails("test_kl_value", UnmaskedKL(), estimator=est)
    _fails("test_sample", GreedySampler())
    _fails("test_nash_md_pg_loss", UncenteredPreference(), estimator="exact")
    # EasyDeL: KL log-ratio not gradient-stopped -> wrong sampled-KL gradient
    _fails("test_kl_grad", R.NumpyKernels("central"), estimator="sampled")
    _fails("test_nash_md_pg_grad", R.NumpyKernels("central"), estimator="sampled")


def test_plugin_applies_strict_xfails(tmp_path: Path) -> None:
    (tmp_path / "test_plugin_probe.py").write_text(
        "from nlhf.testing import BackendConformance\n"
        "class TestProbe(BackendConformance):\n"
        "    backend = 'example'\n"
        "    dtype = 'float32'\n"
        "    xfails = {'test_sample': 'sampler broken on purpose',\n"
        "              'test_kl_value[k3]': 'declared but passes'}\n"
        "    def test_sample(self, kernels):\n"
        "        raise AssertionError('broken')\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rA",
            "-p",
            "no:cacheprovider",
            "-k",
            "test_sample or test_kl_value",
            str(tmp_path / "test_plugin_probe.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout
    assert "XFAIL test_plugin_probe.py::TestProbe::test_sample" in out, out
    assert "sampler broken on purpose" in out, out
    assert "[XPASS(strict)]" in out and "test_kl_value[k3]" in out, out
    assert "2 passed" in out, out  # kl_value[sampled], kl_value[exact]
