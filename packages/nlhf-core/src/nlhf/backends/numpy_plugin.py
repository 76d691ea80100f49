"""Built-in plugin registering the ``numpy`` backend (entry point ``nlhf: numpy``)."""

from __future__ import annotations

from typing import Any

import nlhf
from nlhf.algorithms.params import TABULAR_ALGORITHMS
from nlhf.spec.capabilities import Capabilities

CAPABILITIES = Capabilities(tabular_tasks=("nash",), tabular_algorithms=TABULAR_ALGORITHMS)
"""The numpy backend runs tabular ``task: nash`` specs only (:mod:`nlhf.spec.capabilities`)."""


def _factory() -> Any:
    from nlhf.backends.numpy_backend import NumpyBackend

    return NumpyBackend()


@nlhf.hookimpl
def nlhf_register_backends(register: Any) -> None:
    register(
        "numpy",
        _factory,
        requires=(),
        description=(
            "tabular Nash-MD, OMD, self-play, best response, EGPO, MPO, ONPO, INPO, SPPO "
            "in NumPy (reference)"
        ),
        capabilities=CAPABILITIES,
    )
