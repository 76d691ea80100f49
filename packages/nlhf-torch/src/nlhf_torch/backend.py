"""The torch backend object (:class:`nlhf.algorithms.protocols.Backend`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nlhf.errors import NLHFError


class TorchBackend:
    name = "torch"

    def __init__(self) -> None:
        from nlhf_torch.kernels import TorchKernels

        self.kernels = TorchKernels()

    def train(self, spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
        if spec.task == "nash":
            if spec.is_tabular:
                raise NLHFError("tabular preferences run on the numpy backend: use --backend numpy")
            from nlhf_torch.trainer import train_nash

            return train_nash(spec, Path(output), resume=resume)
        if spec.task == "preference_model":
            from nlhf_torch.preference.train import train_preference_model

            return train_preference_model(spec, Path(output), resume=resume)
        if spec.task == "evaluate":
            from nlhf_torch.evaluate import evaluate_spec

            return evaluate_spec(spec, Path(output))
        raise NLHFError(f"task {spec.task!r} is not supported by the torch backend yet")
