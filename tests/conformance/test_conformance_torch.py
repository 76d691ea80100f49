"""The torch backend against the conformance kit (DESIGN §7): float64 to 1e-10, float32 to 1e-5."""

from __future__ import annotations

import pytest
from nlhf.testing import BackendConformance

pytest.importorskip("torch")


class TestTorchConformanceFloat64(BackendConformance):
    backend = "torch"
    dtype = "float64"
    capabilities = frozenset({"tabular"})  # train runs tabular specs (nlhf_torch.tabular)


class TestTorchConformanceFloat32(BackendConformance):
    backend = "torch"
    dtype = "float32"
    capabilities = frozenset({"tabular"})  # train runs tabular specs (nlhf_torch.tabular)
