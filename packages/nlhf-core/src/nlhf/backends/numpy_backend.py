"""The ``numpy`` reference backend: runs tabular specs with :mod:`nlhf.tabular`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nlhf.algorithms.numpy_oracle import NumpyKernels
from nlhf.backends.numpy_plugin import CAPABILITIES
from nlhf.spec.capabilities import require


class NumpyBackend:
    """Backend ``numpy`` (:class:`nlhf.algorithms.protocols.Backend`): tabular Nash-MD, OMD,
    self-play and best response in float64 NumPy, measured against the exact π*_τ."""

    name = "numpy"
    capabilities = CAPABILITIES
    kernels = NumpyKernels()  # the float64 oracle kernels of nlhf.algorithms.numpy_oracle

    def train(self, spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
        """Run a tabular ``task: nash`` spec; write ``spec.resolved.yaml``, ``metrics.jsonl``
        and ``summary.json`` under ``output``; return the summary."""
        from nlhf.tabular.runner import train_spec

        require(spec, self.name, self.capabilities)  # tabular `task: nash` only
        return train_spec(spec, Path(output), resume=resume)
