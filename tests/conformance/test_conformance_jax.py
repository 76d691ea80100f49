"""The jax backend against the conformance kit (docs/architecture.md §7), in float64
(scoped x64) and float32."""

from __future__ import annotations

from typing import ClassVar

import pytest
from nlhf.testing import BackendConformance

pytest.importorskip("jax")
pytest.importorskip("flax")
pytestmark = pytest.mark.jax


class TestJaxConformanceFloat64(BackendConformance):
    backend = "jax"
    dtype = "float64"
    capabilities = frozenset({"tabular"})  # train runs tabular specs (nlhf_jax.tabular)
    xfails: ClassVar[dict[str, str]] = {
        "test_model_sequence_logprobs": (
            "float64 models keep transformers' float32 rotary frequencies "
            "(nlhf_jax.models.decoder.rope_inv_freq): ~1e-7 relative, above float64 tolerance"
        ),
    }


class TestJaxConformanceFloat32(BackendConformance):
    backend = "jax"
    dtype = "float32"
    capabilities = frozenset({"tabular"})  # train runs tabular specs (nlhf_jax.tabular)
