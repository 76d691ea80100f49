"""nlhf-jax: the JAX / Flax NNX backend of nlhf (sharded with jax.sharding)."""

__version__ = "0.1.0"
