"""The ``numpy`` reference backend: runs tabular specs with :mod:`nlhf.tabular`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nlhf.algorithms.numpy_oracle import NumpyKernels
from nlhf.errors import NLHFError


class NumpyBackend:
    """Backend ``numpy`` (:class:`nlhf.algorithms.protocols.Backend`): tabular Nash-MD, OMD,
    self-play and best response in float64 NumPy, measured against the exact π*_τ."""

    name = "numpy"
    kernels = NumpyKernels()  # the float64 oracle kernels of nlhf.algorithms.numpy_oracle

    def train(self, spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
        """Run a tabular ``task: nash`` spec; write ``spec.resolved.yaml``, ``metrics.jsonl``
        and ``summary.json`` under ``output``; return the summary."""
        from nlhf.tabular.runner import train_spec

        if not getattr(spec, "is_tabular", False):
            name = getattr(getattr(spec, "preference", None), "name", None)
            raise NLHFError(
                f"the numpy backend runs tabular specs only (preference.name: tabular); this "
                f"spec's preference is {name!r}: LLM specs run on --backend torch or jax"
            )
        if spec.task != "nash":
            raise NLHFError(
                f"task: the numpy backend runs `task: nash`; got {spec.task!r} "
                "(use `nlhf solve` for exact equilibria)"
            )
        return train_spec(spec, Path(output), resume=resume)
