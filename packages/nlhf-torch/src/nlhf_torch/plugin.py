"""Entry point of the torch backend (group ``nlhf``). Imports nothing heavy."""

from __future__ import annotations

from typing import Any

import nlhf


def _backend() -> Any:
    from nlhf_torch.backend import TorchBackend

    return TorchBackend()


@nlhf.hookimpl
def nlhf_register_backends(register: Any) -> None:
    register(
        "torch",
        _backend,
        requires=("torch", "transformers"),
        description="PyTorch + transformers; DeepSpeed ZeRO for multi-process runs",
    )


def _population_oracle(**options: Any) -> Any:
    from nlhf_torch.quickstart import population_oracle

    return population_oracle(**options)


@nlhf.hookimpl
def nlhf_register_oracles(register: Any) -> None:
    register(
        "population",
        _population_oracle,
        description="annotator types with cyclic tastes over fixed answers (the quickstart)",
    )
