"""The Nash training loop of language models, written once in core.

- :mod:`nlhf.training.algorithms`: the algorithm table (opponent, β, y', loss, centring);
- :mod:`nlhf.training.protocols`: :class:`NashStepper`, what a backend implements;
- :mod:`nlhf.training.loop`: :class:`NashLoop` / :func:`run_nash`, the loop itself;
- :mod:`nlhf.training.state`: ``trainer_state.json``, the checkpoint schema core owns;
- :mod:`nlhf.training.progress`: the progress bar of every long run.

See ``docs/architecture.md`` for how the pieces fit.
"""

from nlhf.training.algorithms import RULES, AlgorithmRule, has_reward, rule_for
from nlhf.training.loop import RECORD_KEYS, NashLoop, NonFiniteError, nash_loop, run_nash
from nlhf.training.protocols import NashStepper, PolicyProbe, Samples, Update
from nlhf.training.state import TrainerState

__all__ = [
    "RECORD_KEYS",
    "RULES",
    "AlgorithmRule",
    "NashLoop",
    "NashStepper",
    "NonFiniteError",
    "PolicyProbe",
    "Samples",
    "TrainerState",
    "Update",
    "has_reward",
    "nash_loop",
    "rule_for",
    "run_nash",
]
