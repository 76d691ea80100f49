"""Backend-agnostic algorithm specs: parameter models (:mod:`.params`), schedules,
kernel Protocols (:mod:`.protocols`) and the float64 NumPy oracle (:mod:`.numpy_oracle`)."""

from nlhf.algorithms.params import (
    LLM_ALGORITHMS,
    OMD,
    RLHFPG,
    TABULAR_ALGORITHMS,
    AlgorithmSpec,
    BestResponse,
    KLEstimator,
    NashEMAPG,
    NashMD,
    NashMDPG,
    OnlineIPO,
    SelfPlay,
)
from nlhf.algorithms.schedules import Schedule, schedule_value

__all__ = [
    "LLM_ALGORITHMS",
    "OMD",
    "RLHFPG",
    "TABULAR_ALGORITHMS",
    "AlgorithmSpec",
    "BestResponse",
    "KLEstimator",
    "NashEMAPG",
    "NashMD",
    "NashMDPG",
    "OnlineIPO",
    "Schedule",
    "SelfPlay",
    "schedule_value",
]
