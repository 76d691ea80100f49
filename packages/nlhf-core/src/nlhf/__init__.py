"""nlhf: Nash Learning from Human Feedback (Munos et al., arXiv:2312.00886).

Core package: the run spec (``nlhf.spec``), backend-agnostic algorithm specs
(``nlhf.algorithms``), the tabular NumPy reference (``nlhf.tabular``), the
plugin system (``nlhf.hookspecs``, ``nlhf.plugins``, ``nlhf.registry``) and the
CLI (``nlhf.cli``). Core never imports torch or jax.
"""

__version__ = "0.1.0"

from nlhf.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]
