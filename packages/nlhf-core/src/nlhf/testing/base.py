"""``BackendConformance``: the conformance kit's base test class (docs/architecture.md §7).

A backend proves itself by subclassing it in a test file::

    from nlhf.testing import BackendConformance

    class TestMyBackendConformance(BackendConformance):
        backend = "mybackend"     # its name in the nlhf backend registry
        dtype = "float32"         # "float64" (tolerance 1e-10) or "float32" (1e-5)
        capabilities = frozenset()  # add "tabular" if backend.train runs tabular specs

Every case feeds the same fixed, seeded inputs (:mod:`nlhf.testing.cases`) to the
backend's kernels (``nlhf.plugins.get_backend(backend).kernels``) and compares with the
float64 NumPy oracle :mod:`nlhf.algorithms.numpy_oracle`, within
:mod:`nlhf.testing.tolerances`. Arrays reach the backend through
``kernels.asarray(x, dtype)`` (``"int64"`` for tokens; masks are 0/1 in ``dtype``) and
come back through ``kernels.to_numpy``; gradients through ``kernels.grad(fn, x)``.
Kernels are called positionally, in the Protocols' parameter order.

Pair generation and model-scope log-probs (``test_generate_pairs``,
``test_model_sequence_logprobs``) need the kernels to implement
:class:`nlhf.algorithms.protocols.PairGenerator`: each backend loads the same tiny Qwen2
checkpoints (:mod:`nlhf.testing.tiny_models`) and must draw, from the same injected
uniforms, the tokens of the float64 NumPy forward (:mod:`nlhf.testing.numpy_lm`); the
uniforms stay ``SAMPLER_MARGIN`` away from every CDF boundary, so rounding cannot flip one.

The game-family losses (``test_sppo_*``, ``test_inpo_*``, ``test_egpo_*``) need the
optional :class:`nlhf.algorithms.protocols.GameFamilyLosses`; their inputs are sequence
log-probs of sampled pairs under π_θ, π_t and μ (:func:`nlhf.testing.cases.game_family_inputs`).

The offline pair losses (``test_offline_ipo_*``, ``test_dpo_*``) need the optional
:class:`nlhf.algorithms.protocols.OfflinePairLosses`; their inputs are sequence log-probs
of (y_w, y_l) under π_θ and the cached μ, with two rows at |β·h| = 150.

Known gaps are declared in ``nlhf/testing/xfails.yaml`` (backend -> case -> reason) or,
for a third-party package, in the subclass's ``xfails`` mapping; the pytest plugin
marks them ``xfail(strict=True)``. Cases may not be removed or overridden without a
reason (tests/conformance/test_conformance_guard.py).

Adding a case: write a ``test_*`` method here and add its name to
:data:`EXPECTED_CASES` (and to the guard's frozen list).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from nlhf.algorithms import numpy_oracle
from nlhf.algorithms.protocols import GameFamilyLosses, Kernels, OfflinePairLosses, PairGenerator
from nlhf.testing import cases
from nlhf.testing.tolerances import assert_close

#: Every case of the kit, frozen: the guard test fails if one disappears.
EXPECTED_CASES: tuple[str, ...] = (
    "test_kernels_protocol",
    "test_preference_loss",
    "test_preference_loss_grad",
    "test_mixture_logprobs",
    "test_sample",
    "test_kl_value",
    "test_kl_grad",
    "test_nash_md_pg_loss",
    "test_nash_md_pg_grad",
    "test_tabular_nash_md_trajectory",
    "test_sequence_logprobs",
    "test_sequence_logprobs_grad",
    "test_online_ipo_loss",
    "test_online_ipo_grad",
    "test_generate_pairs",
    "test_model_sequence_logprobs",
    "test_offline_ipo_loss",
    "test_offline_ipo_grad",
    "test_dpo_loss",
    "test_dpo_grad",
    "test_sppo_loss",
    "test_sppo_grad",
    "test_inpo_loss",
    "test_inpo_grad",
    "test_egpo_loss",
    "test_egpo_grad",
)

ESTIMATORS = numpy_oracle.ESTIMATORS
KL_TEMPERATURE = 0.7  # ≠ 1, so a backend that forgets the temperature fails
_BACKENDS: dict[str, Any] = {}


def _backend(name: str) -> Any:
    if name not in _BACKENDS:
        from nlhf.plugins import get_backend

        _BACKENDS[name] = get_backend(name)
    return _BACKENDS[name]


class BackendConformance:
    """Base class of a backend's conformance tests; set ``backend`` and ``dtype``."""

    __nlhf_conformance__: ClassVar[bool] = True  # lets the pytest plugin find the cases
    backend: ClassVar[str] = ""
    dtype: ClassVar[str] = "float64"
    capabilities: ClassVar[frozenset[str]] = frozenset()
    xfails: ClassVar[Mapping[str, str]] = {}  # case -> reason, for third-party packages

    # ------------------------------------------------------------------ fixtures

    @pytest.fixture
    def backend_impl(self) -> Any:
        if not self.backend:
            pytest.fail(f"{type(self).__name__} must set the class attribute `backend`")
        return _backend(self.backend)

    @pytest.fixture
    def kernels(self, backend_impl: Any) -> Any:
        k = getattr(backend_impl, "kernels", None)
        if k is None:
            pytest.fail(f"backend {self.backend!r} has no kernels (Backend.kernels is None)")
        return k

    @pytest.fixture
    def pair_generator(self, kernels: Any) -> Any:
        if not isinstance(kernels, PairGenerator):
            pytest.fail(
                f"the kernels of backend {self.backend!r} do not implement PairGenerator "
                "(load_causal_lm, generate_pairs, sequence_logits); declare the gap in "
                "xfails with a reason"
            )
        return kernels

    @pytest.fixture
    def offline_losses(self, kernels: Any) -> Any:
        if not isinstance(kernels, OfflinePairLosses):
            pytest.fail(
                f"the kernels of backend {self.backend!r} do not implement OfflinePairLosses "
                "(offline_ipo_loss, dpo_loss); declare the gap in xfails with a reason"
            )
        return kernels

    @pytest.fixture
    def game_losses(self, kernels: Any) -> Any:
        if not isinstance(kernels, GameFamilyLosses):
            pytest.fail(
                f"the kernels of backend {self.backend!r} do not implement GameFamilyLosses "
                "(sppo_loss, inpo_loss, egpo_loss); declare the gap in xfails with a reason"
            )
        return kernels

    @pytest.fixture
    def generation(self, tmp_path_factory: pytest.TempPathFactory) -> cases.GenerationInputs:
        """The kit's shared tiny checkpoints and the oracle's pairs (built once a session)."""
        return cases.generation_inputs(tmp_path_factory.getbasetemp() / "nlhf-conformance-lm")

    # ------------------------------------------------------------------- helpers

    def put(self, kernels: Any, x: np.ndarray, dtype: str | None = None) -> Any:
        """NumPy -> backend array (in ``self.dtype`` unless given)."""
        return kernels.asarray(x, dtype=dtype or self.dtype)

    def get(self, kernels: Any, x: Any) -> np.ndarray:
        """Backend array -> float64 NumPy array."""
        return np.asarray(kernels.to_numpy(x), dtype=np.float64)

    def put_sequences(self, kernels: Any, s: cases.SequenceInputs) -> tuple[Any, Any, Any, Any]:
        """(policy_logits, reference_logits, tokens, mask) as backend arrays, in the
        Protocols' positional order (the kit calls kernels positionally)."""
        return (
            self.put(kernels, s.policy_logits),
            self.put(kernels, s.reference_logits),
            self.put(kernels, s.tokens, "int64"),
            self.put(kernels, s.mask),
        )

    def check(self, actual: Any, expected: Any, what: str) -> None:
        assert_close(actual, expected, self.dtype, what=f"{self.backend}: {what}")

    # --------------------------------------------------------------------- cases

    def test_kernels_protocol(self, kernels: Any) -> None:
        """The kernels implement the Protocol and round-trip arrays."""
        assert isinstance(kernels, Kernels), f"{type(kernels).__name__} is not a Kernels"
        x = cases.rounded(np.linspace(-2.0, 3.0, 6).reshape(2, 3), self.dtype)
        np.testing.assert_array_equal(self.get(kernels, self.put(kernels, x)), x)
        t = np.array([[0, 4, 2]], dtype=np.int64)
        np.testing.assert_array_equal(
            np.asarray(kernels.to_numpy(self.put(kernels, t, "int64"))), t
        )

    def test_preference_loss(self, kernels: Any) -> None:
        """loss = mean −[p log σ(z) + (1−p) log σ(−z)], z = v_fwd − v_bwd."""
        p = cases.preference_inputs(self.dtype)
        out = kernels.preference_loss(
            self.put(kernels, p.v_fwd), self.put(kernels, p.v_bwd), self.put(kernels, p.target)
        )
        self.check(
            self.get(kernels, out),
            numpy_oracle.preference_loss(p.v_fwd, p.v_bwd, p.target),
            "preference loss",
        )

    def test_preference_loss_grad(self, kernels: Any) -> None:
        """∂loss/∂v_fwd = (σ(z) − p)/B = −∂loss/∂v_bwd."""
        p = cases.preference_inputs(self.dtype)
        vf, vb, tg = (self.put(kernels, a) for a in (p.v_fwd, p.v_bwd, p.target))
        g_fwd = kernels.grad(lambda v: kernels.preference_loss(v, vb, tg), vf)
        g_bwd = kernels.grad(lambda v: kernels.preference_loss(vf, v, tg), vb)
        e_fwd, e_bwd = numpy_oracle.preference_loss_grad(p.v_fwd, p.v_bwd, p.target)
        self.check(self.get(kernels, g_fwd), e_fwd, "∂ preference loss / ∂ v_fwd")
        self.check(self.get(kernels, g_bwd), e_bwd, "∂ preference loss / ∂ v_bwd")

    @pytest.mark.parametrize("temperature", [1.0, 0.7])
    @pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
    def test_mixture_logprobs(self, kernels: Any, beta: float, temperature: float) -> None:
        """log π̃ = log_softmax(((1−β)ℓ_π + βℓ_μ)/T)."""
        s = cases.sequence_inputs(self.dtype)
        out = kernels.mixture_logprobs(
            self.put(kernels, s.policy_logits),
            self.put(kernels, s.reference_logits),
            beta,
            temperature,
        )
        expected = numpy_oracle.mixture_logprobs(
            s.policy_logits, s.reference_logits, beta, temperature
        )
        self.check(self.get(kernels, out), expected, f"mixture log-probs β={beta} T={temperature}")

    def test_sample(self, kernels: Any) -> None:
        """Inverse-CDF sampling with injected uniforms draws exactly the oracle's tokens."""
        s = cases.sampler_inputs(self.dtype)
        out = kernels.sample(self.put(kernels, s.logprobs), self.put(kernels, s.uniforms))
        got = np.asarray(kernels.to_numpy(out))
        assert got.shape == s.uniforms.shape, f"sample shape {got.shape} != {s.uniforms.shape}"
        np.testing.assert_array_equal(
            got.astype(np.int64), numpy_oracle.sample(s.logprobs, s.uniforms)
        )

    @pytest.mark.parametrize("estimator", ESTIMATORS)
    def test_kl_value(self, kernels: Any, estimator: str) -> None:
        """(surrogate, value) per row of each KL estimator, padding masked."""
        s = cases.sequence_inputs(self.dtype)
        a = self.put_sequences(kernels, s)
        surrogate, value = kernels.kl(*a, estimator, KL_TEMPERATURE)
        e_sur, e_val = numpy_oracle.kl(
            s.policy_logits, s.reference_logits, s.tokens, s.mask, estimator, KL_TEMPERATURE
        )
        self.check(self.get(kernels, value), e_val, f"KL value ({estimator})")
        self.check(self.get(kernels, surrogate), e_sur, f"KL surrogate ({estimator})")

    @pytest.mark.parametrize("estimator", ESTIMATORS)
    def test_kl_grad(self, kernels: Any, estimator: str) -> None:
        """∇_{policy_logits} Σ_b w_b·surrogate_b (zero at padded positions)."""
        s = cases.sequence_inputs(self.dtype)
        a = self.put_sequences(kernels, s)
        w = self.put(kernels, s.row_weights)
        z0, *rest = a

        def fn(z: Any) -> Any:
            sur, _ = kernels.kl(z, *rest, estimator, KL_TEMPERATURE)
            return (sur * w).sum()

        g = kernels.grad(fn, z0)
        expected = numpy_oracle.kl_grad(
            s.policy_logits,
            s.reference_logits,
            s.tokens,
            s.mask,
            estimator,
            KL_TEMPERATURE,
            s.row_weights,
        )
        self.check(self.get(kernels, g), expected, f"∇ KL surrogate ({estimator})")

    @pytest.mark.parametrize("estimator", ESTIMATORS)
    def test_nash_md_pg_loss(self, kernels: Any, estimator: str) -> None:
        """Loss and the metrics score, kl, preference."""
        s = cases.sequence_inputs(self.dtype)
        a = self.put_sequences(kernels, s)
        tau = 0.15
        loss, metrics = kernels.nash_md_pg_loss(
            *a, self.put(kernels, s.preference), tau, KL_TEMPERATURE, estimator
        )
        e_loss, e_metrics = numpy_oracle.nash_md_pg_loss(
            s.policy_logits,
            s.reference_logits,
            s.tokens,
            s.mask,
            s.preference,
            tau,
            KL_TEMPERATURE,
            estimator,
        )
        self.check(self.get(kernels, loss), e_loss, f"Nash-MD-PG loss ({estimator})")
        for key, expected in e_metrics.items():
            assert key in metrics, f"metric {key!r} missing; got {sorted(metrics)}"
            self.check(self.get(kernels, metrics[key]), expected, f"metric {key} ({estimator})")

    @pytest.mark.parametrize("estimator", ESTIMATORS)
    def test_nash_md_pg_grad(self, kernels: Any, estimator: str) -> None:
        """∇_{policy_logits} of the Nash-MD-PG loss (P held constant)."""
        s = cases.sequence_inputs(self.dtype)
        a = self.put_sequences(kernels, s)
        z0, *rest = a
        pref, tau = self.put(kernels, s.preference), 0.15

        def fn(z: Any) -> Any:
            loss, _ = kernels.nash_md_pg_loss(z, *rest, pref, tau, KL_TEMPERATURE, estimator)
            return loss

        g = kernels.grad(fn, z0)
        expected = numpy_oracle.nash_md_pg_loss_grad(
            s.policy_logits,
            s.reference_logits,
            s.tokens,
            s.mask,
            s.preference,
            tau,
            KL_TEMPERATURE,
            estimator,
        )
        self.check(self.get(kernels, g), expected, f"∇ Nash-MD-PG loss ({estimator})")

    def test_tabular_nash_md_trajectory(self, backend_impl: Any, tmp_path: Path) -> None:
        """``train`` on a tabular nash_md spec ends at the oracle's π_T (paper §5 schedule)."""
        if "tabular" not in self.capabilities:
            pytest.skip(f"backend {self.backend!r} declares no 'tabular' capability")
        from nlhf.spec.models import RunSpec

        t = cases.tabular_inputs()
        spec = RunSpec.model_validate(
            {
                "spec_version": 1,
                "task": "nash",
                "preference": {"name": "tabular", "matrix": t.matrix.tolist()},
                "reference": {"probs": t.mu.tolist()},
                "algorithm": {"name": "nash_md", "tau": t.tau, "steps": t.steps},
                "output": {"dir": str(tmp_path / "run")},
            }
        )
        summary = backend_impl.train(spec, tmp_path / "run")
        expected = numpy_oracle.tabular_nash_md(t.matrix, t.mu, t.tau, t.steps)[-1]
        self.check(np.asarray(summary["policy"], dtype=np.float64), expected, "tabular Nash-MD π_T")

    @pytest.mark.parametrize("temperature", [1.0, 0.7])
    def test_sequence_logprobs(self, kernels: Any, temperature: float) -> None:
        """log π(y|x) = Σ_n m_n log_softmax(ℓ_n/T)[y_n] per row (padding masked)."""
        s = cases.sequence_inputs(self.dtype)
        _, _, tokens, mask = self.put_sequences(kernels, s)
        out = kernels.sequence_logprobs(
            self.put(kernels, s.policy_logits), tokens, mask, temperature
        )
        expected = numpy_oracle.sequence_logprobs(s.policy_logits, s.tokens, s.mask, temperature)
        self.check(self.get(kernels, out), expected, f"sequence log-probs T={temperature}")

    def test_sequence_logprobs_grad(self, kernels: Any) -> None:
        """∇_logits Σ_b w_b log π(y_b) = w_b·m_bn·(1[v = y_bn] − π_v)/T."""
        s = cases.sequence_inputs(self.dtype)
        z0, _, tokens, mask = self.put_sequences(kernels, s)
        w = self.put(kernels, s.row_weights)

        def fn(z: Any) -> Any:
            return (kernels.sequence_logprobs(z, tokens, mask, KL_TEMPERATURE) * w).sum()

        g = kernels.grad(fn, z0)
        expected = numpy_oracle.sequence_logprobs_grad(
            s.policy_logits, s.tokens, s.mask, KL_TEMPERATURE, s.row_weights
        )
        self.check(self.get(kernels, g), expected, "∇ sequence log-probs")

    def _ipo_args(self, kernels: Any, i: cases.IPOInputs) -> list[Any]:
        y, yp = self.put_sequences(kernels, i.y), self.put_sequences(kernels, i.y_prime)
        return [*y, *yp, self.put(kernels, i.preference)]

    def test_online_ipo_loss(self, kernels: Any) -> None:
        """loss = mean_b (h_b − (P_b − ½)/τ)² (the sampled IPO loss averaged over its
        label); metrics preference, margin (mean sign(P − ½)·h), kl."""
        i = cases.ipo_inputs(self.dtype)
        loss, metrics = kernels.online_ipo_loss(*self._ipo_args(kernels, i), i.tau, KL_TEMPERATURE)
        e_loss, e_metrics = numpy_oracle.online_ipo_loss(
            *_ipo_numpy(i), i.preference, i.tau, KL_TEMPERATURE
        )
        self.check(self.get(kernels, loss), e_loss, "online IPO loss")
        for key, expected in e_metrics.items():
            assert key in metrics, f"metric {key!r} missing; got {sorted(metrics)}"
            self.check(self.get(kernels, metrics[key]), expected, f"online IPO metric {key}")

    def test_online_ipo_grad(self, kernels: Any) -> None:
        """∇ of the online IPO loss with respect to the policy logits over y and over y'."""
        i = cases.ipo_inputs(self.dtype)
        args = self._ipo_args(kernels, i)
        g_y = kernels.grad(
            lambda z: kernels.online_ipo_loss(z, *args[1:], i.tau, KL_TEMPERATURE)[0], args[0]
        )

        def fn_prime(z: Any) -> Any:
            a = [*args[:4], z, *args[5:]]
            return kernels.online_ipo_loss(*a, i.tau, KL_TEMPERATURE)[0]

        g_yp = kernels.grad(fn_prime, args[4])
        e_y, e_yp = numpy_oracle.online_ipo_loss_grad(
            *_ipo_numpy(i), i.preference, i.tau, KL_TEMPERATURE
        )
        self.check(self.get(kernels, g_y), e_y, "∇_{logits y} online IPO loss")
        self.check(self.get(kernels, g_yp), e_yp, "∇_{logits y'} online IPO loss")

    def _generate(self, gen: Any, g: cases.GenerationInputs, opponent: str) -> Any:
        return gen.generate_pairs(
            gen.load_causal_lm(g.policy, self.dtype),
            gen.load_causal_lm(g.reference, self.dtype),
            self.put(gen, g.input_ids, "int64"),
            self.put(gen, g.attention_mask, "int64"),
            beta=g.beta,
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            eos_token_id=g.eos_token_id,
            pad_token_id=g.pad_token_id,
            opponent=opponent,
            uniforms=self.put(gen, g.expected[opponent].uniforms),
        )

    @pytest.mark.parametrize("opponent", cases.OPPONENTS)
    def test_generate_pairs(
        self, pair_generator: Any, generation: cases.GenerationInputs, opponent: str
    ) -> None:
        """Same checkpoint, same uniforms (≥ SAMPLER_MARGIN from every CDF boundary of the
        float64 oracle) → the oracle's y, y' and masks, token for token."""
        out = self._generate(pair_generator, generation, opponent)
        expected = generation.expected[opponent]
        for name in ("y", "y_mask", "y_prime", "y_prime_mask"):
            got = np.asarray(pair_generator.to_numpy(getattr(out, name))).astype(np.int64)
            want = getattr(expected, name)
            width = got.shape[1]  # a backend may stop its buffer once every row has ended
            assert got.shape[0] == want.shape[0] and width <= want.shape[1], (name, got.shape)
            fill = generation.pad_token_id if name in ("y", "y_prime") else 0
            np.testing.assert_array_equal(want[:, width:], fill, err_msg=f"{name}: cut short")
            np.testing.assert_array_equal(got, want[:, :width], err_msg=f"{opponent}: {name}")

    def test_model_sequence_logprobs(
        self, pair_generator: Any, generation: cases.GenerationInputs
    ) -> None:
        """log π(y|x) of the oracle's pairs through the backend's model (``sequence_logits``
        + ``sequence_logprobs``) equals the float64 NumPy forward's, at model scope."""
        from nlhf.testing.numpy_lm import NumpyLM

        g, gen = generation, pair_generator
        pairs = g.expected["mixture"]
        logits = gen.sequence_logits(
            gen.load_causal_lm(g.policy, self.dtype),
            self.put(gen, g.input_ids, "int64"),
            self.put(gen, g.attention_mask, "int64"),
            self.put(gen, pairs.y, "int64"),
            self.put(gen, pairs.y_mask, "int64"),
        )
        out = gen.sequence_logprobs(
            logits, self.put(gen, pairs.y, "int64"), self.put(gen, pairs.y_mask), g.temperature
        )
        ids = np.concatenate([g.input_ids, pairs.y], 1)
        mask = np.concatenate([g.attention_mask, pairs.y_mask], 1)
        width = pairs.y.shape[1]
        oracle_logits = NumpyLM.load(g.policy).logits(ids, mask)[:, -width - 1 : -1]
        expected = numpy_oracle.sequence_logprobs(
            oracle_logits, pairs.y, pairs.y_mask, g.temperature
        )
        assert np.abs(expected).max() > 1.0  # non-trivial log-probs
        assert_close(
            self.get(gen, out), expected, self.dtype, f"{self.backend}: log π(y|x)", scope="model"
        )

    # ------------------------------------------------- offline pairs: IPO and DPO

    def _pairs(self, kernels: Any, i: cases.OfflinePairInputs) -> list[Any]:
        return [self.put(kernels, a) for a in _pair_numpy(i)]

    def _offline_loss(self, kernels: Any, name: str, weight: float) -> None:
        i = cases.offline_pair_inputs(self.dtype)
        loss, metrics = getattr(kernels, name)(*self._pairs(kernels, i), weight)
        e_loss, e_metrics = getattr(numpy_oracle, name)(*_pair_numpy(i), weight)
        self.check(self.get(kernels, loss), e_loss, f"{name}")
        for key, expected in e_metrics.items():
            assert key in metrics, f"metric {key!r} missing; got {sorted(metrics)}"
            self.check(self.get(kernels, metrics[key]), expected, f"{name} metric {key}")

    def _offline_grad(self, kernels: Any, name: str, weight: float) -> None:
        i = cases.offline_pair_inputs(self.dtype)
        args = self._pairs(kernels, i)
        fn = getattr(kernels, name)

        def at(k: int) -> Any:
            def loss(x: Any) -> Any:
                return fn(*args[:k], x, *args[k + 1 :], weight)[0]

            return self.get(kernels, kernels.grad(loss, args[k]))

        e_chosen, e_rejected = getattr(numpy_oracle, f"{name}_grad")(*_pair_numpy(i), weight)
        self.check(at(0), e_chosen, f"∂ {name} / ∂ log π(y_w)")
        self.check(at(1), e_rejected, f"∂ {name} / ∂ log π(y_l)")
        for k, what in ((2, "log μ(y_w)"), (3, "log μ(y_l)")):  # cached: no gradient
            self.check(at(k), np.zeros(len(i.policy_chosen)), f"∂ {name} / ∂ {what}")

    def test_offline_ipo_loss(self, offline_losses: Any) -> None:
        """loss = mean_b (h_b − 1/(2τ))², h = log π/μ(y_w) − log π/μ(y_l); metrics margin,
        accuracy, chosen_ratio, rejected_ratio."""
        self._offline_loss(
            offline_losses, "offline_ipo_loss", cases.offline_pair_inputs(self.dtype).tau
        )

    def test_offline_ipo_grad(self, offline_losses: Any) -> None:
        """∂loss/∂ log π(y_w) = 2(h_b − 1/(2τ))/B = −∂loss/∂ log π(y_l); none to μ."""
        self._offline_grad(
            offline_losses, "offline_ipo_loss", cases.offline_pair_inputs(self.dtype).tau
        )

    def test_dpo_loss(self, offline_losses: Any) -> None:
        """loss = mean_b −log σ(β·h_b), finite at |β·h| = 150; the same metrics."""
        self._offline_loss(offline_losses, "dpo_loss", cases.offline_pair_inputs(self.dtype).beta)

    def test_dpo_grad(self, offline_losses: Any) -> None:
        """∂loss/∂ log π(y_w) = −β·σ(−β·h_b)/B = −∂loss/∂ log π(y_l); none to μ."""
        self._offline_grad(offline_losses, "dpo_loss", cases.offline_pair_inputs(self.dtype).beta)

    # ------------------------------------------- the game family: SPPO, INPO, EGPO

    def _game(self, kernels: Any, name: str, i: cases.GameFamilyInputs) -> tuple[list, list]:
        """(backend args, oracle args) of kernel ``name``, positionally; the first
        entries are the policy log-probs that carry the gradient."""
        arrays = {
            "sppo_loss": (i.policy_y, i.anchor_y, i.win_rate),
            "inpo_loss": _inpo_numpy(i),
            "egpo_loss": (
                i.policy_y,
                i.policy_y_prime,
                i.reference_y,
                i.reference_y_prime,
                i.preference,
            ),
        }[name]
        scalars = {"sppo_loss": (i.eta,), "inpo_loss": (i.tau, i.eta), "egpo_loss": (i.tau,)}
        put = [self.put(kernels, a) for a in arrays]
        return [*put, *scalars[name]], [*arrays, *scalars[name]]

    def _game_loss(self, kernels: Any, name: str) -> None:
        i = cases.game_family_inputs(self.dtype)
        args, oracle = self._game(kernels, name, i)
        loss, metrics = getattr(kernels, name)(*args)
        e_loss, e_metrics = getattr(numpy_oracle, name)(*oracle)
        self.check(self.get(kernels, loss), e_loss, name)
        for key, expected in e_metrics.items():
            assert key in metrics, f"metric {key!r} missing; got {sorted(metrics)}"
            self.check(self.get(kernels, metrics[key]), expected, f"{name} metric {key}")

    def _game_grad(self, kernels: Any, name: str, trained: tuple[str, ...]) -> None:
        """∇ with respect to every log-prob argument: the oracle's for the ``trained``
        ones (π_θ), zero for π_t and μ."""
        i = cases.game_family_inputs(self.dtype)
        args, oracle = self._game(kernels, name, i)
        fn = getattr(kernels, name)
        expected = getattr(numpy_oracle, f"{name}_grad")(*oracle)
        expected = expected if isinstance(expected, tuple) else (expected,)
        pi, pt, mu = "log π_θ", "log π_t", "log μ"
        names = {
            "sppo_loss": (f"{pi}(y)", f"{pt}(y)"),
            "inpo_loss": tuple(f"{m}({y})" for m in (pi, pt, mu) for y in ("y", "y'")),
            "egpo_loss": (f"{pi}(y)", f"{pi}(y')", f"{mu}(y)", f"{mu}(y')"),
        }[name]
        for k, what in enumerate(names):

            def loss(x: Any, k: int = k) -> Any:
                return fn(*args[:k], x, *args[k + 1 :])[0]

            g = self.get(kernels, kernels.grad(loss, args[k]))
            want = expected[k] if k < len(trained) else np.zeros(len(i.policy_y))
            self.check(g, want, f"∂ {name} / ∂ {what}")

    def test_sppo_loss(self, game_losses: Any) -> None:
        """loss = mean (log π_θ/π_t(y) − η(P̂ − ½))²; metrics log_ratio, win_rate_gap."""
        self._game_loss(game_losses, "sppo_loss")

    def test_sppo_grad(self, game_losses: Any) -> None:
        """∂loss/∂ log π_θ(y) = 2(log π_θ/π_t − η(P̂ − ½))/B; none to log π_t."""
        self._game_grad(game_losses, "sppo_loss", ("policy",))

    def test_inpo_loss(self, game_losses: Any) -> None:
        """loss = mean (h_t − η(P − ½))², h_t with the (ητ, 1 − ητ) mixture of μ and π_t
        log-ratios; metrics preference, margin, kl."""
        self._game_loss(game_losses, "inpo_loss")

    def test_inpo_grad(self, game_losses: Any) -> None:
        """±2(h_t − η(P − ½))/B to log π_θ(y), log π_θ(y'); none to π_t or μ."""
        self._game_grad(game_losses, "inpo_loss", ("policy_y", "policy_y_prime"))

    def test_egpo_loss(self, game_losses: Any) -> None:
        """loss = mean (h − (P − ½)/τ)², h = log π/μ(y) − log π/μ(y'); metrics
        preference, margin, kl."""
        self._game_loss(game_losses, "egpo_loss")

    def test_egpo_grad(self, game_losses: Any) -> None:
        """±2(h − (P − ½)/τ)/B to log π_θ(y), log π_θ(y'); none to μ."""
        self._game_grad(game_losses, "egpo_loss", ("policy_y", "policy_y_prime"))


def _inpo_numpy(i: cases.GameFamilyInputs) -> tuple[np.ndarray, ...]:
    """The positional log-prob and preference arguments of the INPO loss (before τ, η)."""
    return (
        i.policy_y,
        i.policy_y_prime,
        i.anchor_y,
        i.anchor_y_prime,
        i.reference_y,
        i.reference_y_prime,
        i.preference,
    )


def _pair_numpy(i: cases.OfflinePairInputs) -> tuple[np.ndarray, ...]:
    """The positional pair arguments of the offline losses (before τ or β)."""
    return (i.policy_chosen, i.policy_rejected, i.reference_chosen, i.reference_rejected)


def _ipo_numpy(i: cases.IPOInputs) -> tuple[np.ndarray, ...]:
    """The oracle's positional arguments of online IPO (before preference, τ, T)."""
    y, yp = i.y, i.y_prime
    return (
        y.policy_logits,
        y.reference_logits,
        y.tokens,
        y.mask,
        yp.policy_logits,
        yp.reference_logits,
        yp.tokens,
        yp.mask,
    )
