"""Preference models P(y≻y'|x) on the jax backend: the trainable networks (:mod:`.model`),
``task: preference_model`` (:mod:`.train`) and the runtime preferences of ``task: nash``
and ``task: evaluate`` (:mod:`.scorers`). The backend-agnostic parts are in
:mod:`nlhf.preference`; model directories are interchangeable with torch's."""

from __future__ import annotations
