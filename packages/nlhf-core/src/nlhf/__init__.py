"""nlhf: Nash Learning from Human Feedback (Munos et al., arXiv:2312.00886).

Core package: the run spec (``nlhf.spec``), backend-agnostic algorithm specs
(``nlhf.algorithms``), the tabular NumPy reference (``nlhf.tabular``), the
plugin system (``nlhf.hookspecs``, ``nlhf.plugins``, ``nlhf.registry``) and the
CLI (``nlhf.cli``). Core never imports torch or jax.
"""

from importlib import metadata as _metadata

try:  # the installed distribution's version, set from the repository's VERSION file
    __version__ = _metadata.version("nlhf-core")
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

from nlhf.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]
