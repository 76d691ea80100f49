"""Several jax processes, one per host: ``distributed: {engine: jax, coordinator_address:
HOST:PORT, num_processes: N, process_id: R}`` (docs/distributed.md, "Several nodes").

:func:`initialize` joins this process to the others with ``jax.distributed.initialize``
(the jax multi-process guide, docs.jax.dev "Multi-process environments") before any jax
computation, so ``jax.devices()`` — and the mesh built from it
(:func:`nlhf_jax.sharding.make_mesh`) — spans every process's devices. On CPU the
cross-process collectives are gloo's (``jax_cpu_collectives_implementation``, jax's
default); on GPU NCCL, on TPU the ICI. Every process runs the same program on the global
batch (jax's multi-controller SPMD model): the same seed draws the same samples, the
preference scores the same pairs, and the gradient of the mesh-sharded batch is the
single-process one. Process 0 alone writes files (:func:`is_writer`,
:class:`MultiHostStepper`); :func:`to_host` fetches arrays whose shards live on other
processes. Covered: ``task: nash`` (:func:`train`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from nlhf.errors import InputError, NLHFError
from nlhf.spec.models import DistributedSpec, JaxMeshSpec, RunSpec
from nlhf.training import run_nash

from nlhf_jax.trainer import JaxStepper

__all__ = ["MultiHostStepper", "initialize", "is_writer", "process_index", "to_host", "train"]


def initialize(dist: DistributedSpec) -> bool:
    """``jax.distributed.initialize`` with the spec's coordinator, process count and id;
    a no-op (False) for a one-process spec. Idempotent for the same settings; an
    :class:`NLHFError` when jax already computed something (too late to join) or the
    processes do not all join within ``initialization_timeout`` seconds."""
    if not isinstance(dist, JaxMeshSpec) or not dist.multihost:
        return False
    import jax

    where = (
        f"distributed: coordinator_address {dist.coordinator_address}, "
        f"process_id {dist.process_id} of num_processes {dist.num_processes}"
    )
    if jax.distributed.is_initialized():
        now = (jax.process_index(), jax.process_count())
        if now != (dist.process_id, dist.num_processes):
            raise NLHFError(
                f"{where}: this Python process already joined a jax run as process {now[0]} "
                f"of {now[1]}; start a new process for a different run"
            )
        return True
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise NLHFError(
            f"{where}: jax has already run a computation in this process, so it can no "
            "longer join other processes (jax.distributed.initialize must come first); run "
            "the spec with `nlhf run` in a fresh process"
        )
    print(
        f"nlhf: jax process {dist.process_id} of {dist.num_processes} joining "
        f"{dist.coordinator_address} (waiting up to {dist.initialization_timeout} s for the "
        "others; one that is missing past it makes jax end every process)",
        file=sys.stderr,
        flush=True,
    )
    if dist.process_id:
        _wait_for_coordinator(dist, where)
    try:
        jax.distributed.initialize(
            coordinator_address=dist.coordinator_address,
            num_processes=dist.num_processes,
            process_id=dist.process_id,
            initialization_timeout=dist.initialization_timeout,
        )
        count = jax.process_count()  # connects every process's devices: may time out too
    except Exception as exc:  # jax raises XlaRuntimeError / RuntimeError / ValueError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NLHFError(
            f"{where}: the processes did not join within distributed.initialization_timeout "
            f"= {dist.initialization_timeout} s ({first}); start one `nlhf run` per "
            "process_id 0 .. num_processes - 1, all with the same coordinator_address "
            "(process 0's host and a free port, reachable from every host)"
        ) from None
    if count != dist.num_processes:
        raise NLHFError(f"{where}: jax sees {count} processes")
    return True


def _wait_for_coordinator(dist: JaxMeshSpec, where: str) -> None:
    """Wait until process 0's coordinator accepts TCP connections (jax's own client aborts
    the whole process, uncatchably, when it cannot register in time)."""
    import socket
    import time

    host, _, port = str(dist.coordinator_address).rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + dist.initialization_timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise NLHFError(
                    f"{where}: no coordinator answered at {dist.coordinator_address} within "
                    f"distributed.initialization_timeout = {dist.initialization_timeout} s "
                    f"({exc.strerror or exc}); start process 0 (`--set "
                    "distributed.process_id=0`) on that host, with a free port reachable "
                    "from every host"
                ) from None
        time.sleep(0.2)


def process_index() -> int:
    """This process's index (0 in a one-process run)."""
    import jax

    return jax.process_index()


def is_writer() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return process_index() == 0


def to_host(tree: Any) -> Any:
    """``jax.device_get(tree)``, except that arrays with shards on other processes are
    first gathered (``jax.experimental.multihost_utils.process_allgather``, a collective:
    every process must call it with the same tree)."""
    import jax
    from jax.experimental import multihost_utils

    def fetch(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if leaf.is_fully_replicated:
                return jax.device_get(leaf.addressable_shards[0].data)
            return multihost_utils.process_allgather(leaf, tiled=True)
        return jax.device_get(leaf)

    return jax.tree.map(fetch, tree)


class MultiHostStepper(JaxStepper):
    """The jax Nash stepper of one process of a multi-host run: its ``rank`` is the jax
    process index, so the core loop writes metrics, spec and summary on process 0 only,
    and :meth:`save` gathers the state on every process (a collective) and writes the
    checkpoint on process 0 only."""

    def __init__(self, spec: RunSpec, checkpoint: Path | None, plugins: Any = None) -> None:
        super().__init__(spec, checkpoint, plugins)
        import jax

        self.rank = process_index()
        # processes running this loop; world_size stays 1: every process holds the whole
        # batch's values, and the loop divides its summed metrics by world_size
        self.processes = jax.process_count()

    def all_reduce(self, values: Sequence[float], op: Literal["sum", "max"] = "sum") -> list[float]:
        """``sum``: the values themselves (each process computed the whole batch);
        ``max``: the largest over the processes (the slowest process's timings), a
        collective (``multihost_utils.process_allgather``)."""
        if op == "sum":
            return [float(v) for v in values]
        import numpy as np
        from jax.experimental import multihost_utils

        rows = multihost_utils.process_allgather(np.asarray(values, dtype=np.float32))
        return [float(v) for v in np.asarray(rows).max(axis=0)]

    def save(self, final: Path, write_core: Callable[[Path], None]) -> None:
        live = (self.state, self.frozen, self.opt_state, self.ema_state)
        self.state, self.frozen, self.opt_state, self.ema_state = to_host(live)
        try:
            if is_writer():
                super().save(final, write_core)
        finally:
            self.state, self.frozen, self.opt_state, self.ema_state = live


def make_stepper(spec: RunSpec, checkpoint: Path | None, plugins: Any = None) -> JaxStepper:
    return MultiHostStepper(spec, checkpoint, plugins)


def train(spec: RunSpec, output: Path, *, resume: bool = False) -> dict[str, Any]:
    """Run this process's part of a multi-host ``task: nash`` spec (:func:`initialize`
    first); the summary on process 0, ``{}`` on the others."""
    if spec.task != "nash" or spec.is_tabular:
        raise InputError(
            f"distributed.coordinator_address: multi-host jax runs cover LLM `task: nash`, "
            f"not {'a tabular game' if spec.is_tabular else f'task {spec.task!r}'}; drop "
            "coordinator_address, num_processes and process_id (one process, one host's "
            "devices)"
        )
    initialize(spec.distributed)
    return run_nash(spec, Path(output), backend="jax", make_stepper=make_stepper, resume=resume)
