"""Device meshes and parameter/batch shardings from a ``distributed: {engine: jax}`` spec.

``mesh: {data: 2, fsdp: 2, tensor: 1}`` names the axes of a ``jax.sharding.Mesh`` (their
product must equal the number of devices used). ``rules`` map a regex over a parameter's
path — the NNX state path joined by ``/``, e.g. ``model/layers/0/self_attn/q_proj/kernel``
(kernels are (in, out)) — to a ``PartitionSpec``: ``["fsdp", "tensor"]`` shards dim 0 over
``fsdp`` and dim 1 over ``tensor``; ``null`` leaves a dim whole. The first matching rule
wins; unmatched parameters are replicated. Batches are sharded on their first dimension
over the mesh's ``data`` and ``fsdp`` axes (FSDP is data parallel with sharded weights).
XLA inserts the collectives (GSPMD), so the sharded computation equals the unsharded one.

On CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (set before jax is
imported) gives four devices, so this runs for real in tests (docs/jax.md, Sharding).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from nlhf.errors import InputError

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh: dict[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A Mesh with axes ``mesh`` (name → size) over the first prod(sizes) devices."""
    devices = list(jax.devices() if devices is None else devices)
    need = math.prod(mesh.values())
    if need > len(devices):
        raise InputError(
            f"distributed.mesh: {mesh} needs {need} devices; {len(devices)} are available"
        )
    grid = np.asarray(devices[:need], dtype=object).reshape(tuple(mesh.values()))
    return Mesh(grid, tuple(mesh.keys()))


def _path(path: tuple[Any, ...]) -> str:
    return "/".join(str(p) for p in path)


def param_specs(state: nnx.State, mesh: Mesh, rules: Sequence[tuple[str, Sequence[Any]]]):
    """{path: PartitionSpec} for every parameter of ``state`` (see the module doc)."""
    compiled = [(re.compile(pattern), list(axes)) for pattern, axes in rules]
    out = {}
    for path, var in nnx.to_flat_state(state):
        name = _path(path)
        spec = PartitionSpec()
        for regex, axes in compiled:
            if not regex.search(name):
                continue
            shape = tuple(var.shape)
            if len(axes) > len(shape):
                raise InputError(
                    f"distributed.rules: {regex.pattern!r} gives {len(axes)} axes to "
                    f"{name} of shape {shape}"
                )
            for dim, axis in zip(shape, axes, strict=False):
                if axis is None:
                    continue
                if axis not in mesh.shape:
                    raise InputError(
                        f"distributed.rules: axis {axis!r} is not a mesh axis "
                        f"({', '.join(mesh.axis_names)})"
                    )
                if dim % mesh.shape[axis]:
                    raise InputError(
                        f"distributed.rules: {name} dim {dim} is not divisible by "
                        f"mesh axis {axis!r} of size {mesh.shape[axis]}"
                    )
            spec = PartitionSpec(*axes)
            break
        out[path] = spec
    return out


def shard_state(state: nnx.State, mesh: Mesh, rules: Sequence[tuple[str, Sequence[Any]]]):
    """``state`` with every parameter placed by its rule (``jax.device_put``)."""
    specs = param_specs(state, mesh, rules)
    flat = []
    for path, var in nnx.to_flat_state(state):
        value = var.get_value() if hasattr(var, "get_value") else var.value
        placed = jax.device_put(value, NamedSharding(mesh, specs[path]))
        flat.append((path, var.replace(placed)))
    return nnx.from_flat_state(flat)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Shard dim 0 over the mesh's batch axes (``data``, ``fsdp``), replicate the rest."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.shape and mesh.shape[a] > 1)
    first = axes if len(axes) > 1 else (axes[0] if axes else None)
    return NamedSharding(mesh, PartitionSpec(first, *([None] * (ndim - 1))))


def shard_batch(mesh: Mesh, *arrays: Any) -> tuple[jax.Array, ...]:
    """Place arrays with their first dimension sharded over the batch axes."""
    return tuple(jax.device_put(a, batch_sharding(mesh, np.ndim(a))) for a in arrays)


def batch_ways(mesh: Mesh) -> int:
    """How many shards :func:`batch_sharding` cuts a batch's first dimension into (the
    product of the sizes of the mesh's batch axes)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)


def place_like(tree: Any, like: Any) -> Any:
    """``tree`` with each leaf placed (``jax.device_put``) with the mesh sharding of the
    matching leaf of ``like`` (same structure), e.g. an optimiser state read back from a
    checkpoint next to the freshly initialised, sharded one. Leaves whose ``like`` is not
    on a mesh (scalars such as step counts) are left uncommitted, so jit may move them."""

    def place(x: Any, ref: Any) -> Any:
        sharding = getattr(ref, "sharding", None)
        return jax.device_put(x, sharding) if isinstance(sharding, NamedSharding) else x

    return jax.tree.map(place, tree, like)
