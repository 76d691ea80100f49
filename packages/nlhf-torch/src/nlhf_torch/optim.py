"""The torch optimizer and learning-rate schedule of a ``training:`` spec section, shared by
the Nash stepper and the preference-model trainer.

- ``adamw``: decoupled decay (``torch.optim.AdamW``); ``adam`` / ``sgd``: L2 decay added to
  the gradient (torch's ``weight_decay``);
- learning rate lr·f(s) after s optimiser steps, f = :func:`nlhf.algorithms.schedules.lr_multiplier`
  (warmup, then constant / linear / cosine), applied by ``LambdaLR``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from nlhf.algorithms.schedules import lr_multiplier
from nlhf.spec.models import TrainingSpec


def build_optimizer(
    params: Iterable[torch.nn.Parameter], training: TrainingSpec
) -> torch.optim.Optimizer:
    """The optimizer named by ``training.optimizer`` at ``training.lr``."""
    opt, params = training.optimizer, list(params)
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=training.lr, weight_decay=opt.weight_decay)
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(params, lr=training.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, training: TrainingSpec, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with the core factor f(s) over ``total`` optimiser steps."""
    factor = lr_multiplier(training.lr_schedule, training.warmup_steps, total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
