"""Preference models P(y≻y'|x), the framework-free part shared by every backend.

- :mod:`.format`: the on-disk record of a saved model (``nlhf_preference.json``), the judge
  text and its answer tokens.
- :mod:`.run`: the backend-agnostic part of a ``task: preference_model`` run.
- :mod:`.metrics`: held-out metrics of a preference model (accuracy, log-loss, ECE,
  antisymmetry).
- :mod:`.scorers`: what the runtime P(y≻y'|x) objects of ``task: nash`` and evaluation
  share (input checks, the judge's two presentation orders, reward → preference).

Nothing here imports a framework; the backends' ``preference`` packages hold the networks.
"""
