"""nlhf-jax: the JAX / Flax NNX backend of nlhf (sharded with jax.sharding)."""

from importlib import metadata as _metadata

try:  # the installed distribution's version, set from the repository's VERSION file
    __version__ = _metadata.version("nlhf-jax")
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"
