"""The jax backend against the conformance kit (DESIGN §7), in float64 (scoped x64) and
float32."""

from __future__ import annotations

import pytest
from nlhf.testing import BackendConformance

pytest.importorskip("jax")
pytest.importorskip("flax")
pytestmark = pytest.mark.jax


class TestJaxConformanceFloat64(BackendConformance):
    backend = "jax"
    dtype = "float64"
    capabilities = frozenset({"tabular"})  # train runs tabular specs (nlhf_jax.tabular)


class TestJaxConformanceFloat32(BackendConformance):
    backend = "jax"
    dtype = "float32"
    capabilities = frozenset({"tabular"})  # train runs tabular specs (nlhf_jax.tabular)
