"""Shape-keyed CUDA-graph capture and replay for the static-cache decode step.

A CUDA graph records one sequence of kernels on fixed device addresses and replays it
with one launch (PyTorch, "CUDA Graphs": https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs).
A decode step over a static KV cache has fixed shapes except for the number of rows and
the cache capacity, and its position is a tensor input, so one graph per
:class:`GraphKey` serves every position of every generation with that key:

- **what is captured**: one graph per key ``(rows, capacity, dtype, tag)``; rows are
  rounded up to a bucket (:func:`bucket_rows`: powers of two up to 8, then multiples of
  8) and capacities to a multiple of ``capacity_step``, so generation batches of nearby
  sizes share a graph (the extra rows are padding the caller ignores);
- **when a new capture is needed**: the first time a key is seen, after ``warmup`` eager
  calls of the step on that key (cuBLAS/allocator warm-up must happen outside the
  capture); a key evicted by the LRU bound (``max_graphs``) is captured again on its next use;
- **memory**: every capture is given the same memory-pool handle (``pool_factory()``
  once, e.g. ``torch.cuda.graph_pool_handle``), so graphs of different keys reuse one
  pool instead of each reserving its own; inputs are copied into the graph's static
  buffers before each replay and the outputs are the graph's static tensors (valid
  until the next replay of that key).

The capture itself is injected (``capture(fn, static_inputs, pool) -> replay``), so this
bookkeeping is tested on CPU; :func:`cuda_capture` is the CUDA implementation.

The fused decode (:meth:`nlhf_torch.fastdecode.FastGroup.step` with ``graphs``, from
:func:`nlhf_torch.generation.generate_pairs` on CUDA unless ``NLHF_CUDA_GRAPHS=0``) keys
its graphs exactly, ``GraphKey(rows, capacity, dtype, "group i")`` without buckets, and
clears them when the generation call ends, because each call rebuilds the weight copies and
may reallocate the KV cache the graphs read; :meth:`DecodeGraphs.key`'s buckets serve
callers whose graphs outlive a call. Not yet run on a real GPU in this repo.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Step = Callable[..., Any]
"""A decode step ``fn(*tensors) -> outputs`` whose shapes depend only on its key."""
Capture = Callable[[Step, Sequence[torch.Tensor], Any], Callable[[], Any]]
"""``capture(fn, static_inputs, pool)``: record ``fn(*static_inputs)``, return a replay
function returning the (static) outputs."""


def enabled() -> bool:
    """False when the environment variable ``NLHF_CUDA_GRAPHS`` is ``0``/``false``/``off``
    (the fused decode then steps eagerly on CUDA too); on by default."""
    return os.environ.get("NLHF_CUDA_GRAPHS", "1").strip().lower() not in ("0", "false", "off")


def bucket_rows(rows: int) -> int:
    """Rows rounded up to 1, 2, 4, 8, then a multiple of 8."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if rows <= 8:
        return 1 << (rows - 1).bit_length()
    return -(-rows // 8) * 8


@dataclass(frozen=True)
class GraphKey:
    """What a captured decode graph is specialised to."""

    rows: int
    capacity: int
    dtype: torch.dtype
    tag: str = ""
    """Anything else the step depends on (model group, sampler settings)."""


@dataclass
class GraphStats:
    captures: int = 0
    replays: int = 0
    eager_calls: int = 0
    evictions: int = 0
    keys: list[GraphKey] = field(default_factory=list)


class DecodeGraphs:
    """Capture the decode step once per :class:`GraphKey`, replay it afterwards."""

    def __init__(
        self,
        capture: Capture,
        *,
        pool_factory: Callable[[], Any] = lambda: None,
        warmup: int = 1,
        max_graphs: int = 8,
        capacity_step: int = 256,
    ) -> None:
        if warmup < 0 or max_graphs < 1 or capacity_step < 1:
            raise ValueError("warmup >= 0, max_graphs >= 1 and capacity_step >= 1 are needed")
        self._capture = capture
        self._pool_factory = pool_factory
        self._pool: Any = None
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.capacity_step = capacity_step
        self._graphs: OrderedDict[GraphKey, tuple[list[torch.Tensor], Callable[[], Any]]] = (
            OrderedDict()
        )
        self._seen: dict[GraphKey, int] = {}
        self.stats = GraphStats()

    def key(self, rows: int, capacity: int, dtype: torch.dtype, tag: str = "") -> GraphKey:
        """The bucketed key of a step with ``rows`` rows over a cache of ``capacity``."""
        cap = -(-capacity // self.capacity_step) * self.capacity_step
        return GraphKey(bucket_rows(rows), cap, dtype, tag)

    @property
    def pool(self) -> Any:
        """The memory pool shared by every capture (made on the first capture)."""
        if self._pool is None:
            self._pool = self._pool_factory()
        return self._pool

    def __contains__(self, key: GraphKey) -> bool:
        return key in self._graphs

    def run(self, key: GraphKey, fn: Step, inputs: Sequence[torch.Tensor]) -> Any:
        """``fn(*inputs)``: eagerly for the key's first ``warmup`` calls, then captured once
        and replayed (inputs copied into the static buffers; shapes must match the first
        call's for this key)."""
        entry = self._graphs.get(key)
        if entry is None:
            n = self._seen.get(key, 0)
            if n < self.warmup:
                self._seen[key] = n + 1
                self.stats.eager_calls += 1
                return fn(*inputs)
            static = [t.clone() for t in inputs]
            replay = self._capture(fn, static, self.pool)
            self.stats.captures += 1
            self.stats.keys.append(key)
            entry = (static, replay)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                old, _ = self._graphs.popitem(last=False)
                self._seen.pop(old, None)
                self.stats.evictions += 1
        else:
            self._graphs.move_to_end(key)
        static, replay = entry
        if len(static) != len(inputs):
            raise ValueError(f"{key}: captured with {len(static)} inputs, got {len(inputs)}")
        for buf, x in zip(static, inputs, strict=True):
            if buf.shape != x.shape or buf.dtype != x.dtype:
                raise ValueError(
                    f"{key}: input of shape {tuple(x.shape)} {x.dtype} does not match the "
                    f"captured {tuple(buf.shape)} {buf.dtype}; pad to the key's shapes"
                )
            buf.copy_(x)
        self.stats.replays += 1
        return replay()

    def clear(self) -> None:
        """Drop every graph (e.g. when the static cache is re-allocated)."""
        self._graphs.clear()
        self._seen.clear()


def cuda_capture(fn: Step, static_inputs: Sequence[torch.Tensor], pool: Any) -> Callable[[], Any]:
    """Record ``fn(*static_inputs)`` into a ``torch.cuda.CUDAGraph`` in ``pool`` (after one
    eager run on a side stream, as PyTorch's CUDA-graph notes require)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn(*static_inputs)

    def replay() -> Any:
        graph.replay()
        return out

    return replay


def cuda_decode_graphs(**options: Any) -> DecodeGraphs:
    """:class:`DecodeGraphs` with :func:`cuda_capture` and one shared CUDA memory pool."""
    return DecodeGraphs(cuda_capture, pool_factory=torch.cuda.graph_pool_handle, **options)
