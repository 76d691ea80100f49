"""Preference models P(y≻y'|x) on the jax backend: scoring (:mod:`.model`, shared by the
``pairwise_model`` / ``bradley_terry_reward`` / ``llm_judge`` preferences of ``task: nash``)
and training (:mod:`.train`, ``task: preference_model``). Mirrors
:mod:`nlhf_torch.preference`; directories are interchangeable between the backends."""

from __future__ import annotations
