"""The torch backend against the conformance kit (docs/architecture.md §7): float64 to
1e-10, float32 to 1e-5."""

from __future__ import annotations

from typing import ClassVar

import pytest
from nlhf.testing import BackendConformance

pytest.importorskip("torch")


class TestTorchConformanceFloat64(BackendConformance):
    backend = "torch"
    dtype = "float64"
    capabilities = frozenset({"tabular"})  # train runs tabular specs (nlhf_torch.tabular)
    xfails: ClassVar[dict[str, str]] = {
        "test_model_sequence_logprobs": (
            "transformers' Llama/Qwen2 compute RMSNorm and the rotary frequencies in float32 "
            "even in a float64 model: ~4e-8 relative, above float64 tolerance"
        ),
    }


class TestTorchConformanceFloat32(BackendConformance):
    backend = "torch"
    dtype = "float32"
    capabilities = frozenset({"tabular"})  # train runs tabular specs (nlhf_torch.tabular)
