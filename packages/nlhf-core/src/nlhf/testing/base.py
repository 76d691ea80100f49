"""``BackendConformance``: the conformance kit's base test class (DESIGN §7).

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
from nlhf.algorithms.protocols import Kernels
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
