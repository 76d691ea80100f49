"""CUDA-graph bookkeeping of the decode step (nlhf_torch.cudagraph), on CPU with an
injected capture: which shapes are captured, when a new capture is needed, pool reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nlhf_torch.cudagraph import DecodeGraphs, GraphKey, bucket_rows


class FakeCapture:
    """Records each capture; its replay re-runs ``fn`` on the static buffers (as a CUDA
    graph replays the recorded kernels on the same addresses)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[torch.Tensor], object]] = []

    def __call__(self, fn, static, pool):
        self.calls.append((static, pool))
        return lambda: fn(*static)


def step(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return x * 2 + pos


def test_bucket_rows() -> None:
    got = [bucket_rows(n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17, 30)]
    np.testing.assert_array_equal(got, [1, 2, 4, 4, 8, 8, 16, 16, 24, 32])
    with pytest.raises(ValueError, match="rows must be >= 1"):
        bucket_rows(0)


def test_one_capture_per_key_replayed_for_every_position() -> None:
    cap = FakeCapture()
    graphs = DecodeGraphs(cap, warmup=2)
    key = graphs.key(rows=6, capacity=300, dtype=torch.float32)
    assert key == GraphKey(8, 512, torch.float32)
    x = torch.arange(8.0)
    outs = [graphs.run(key, step, [x + t, torch.tensor(float(t))]) for t in range(6)]
    assert graphs.stats.eager_calls == 2  # warm-up outside the capture
    assert graphs.stats.captures == 1 and len(cap.calls) == 1
    assert graphs.stats.replays == 4
    for t, out in enumerate(outs):  # replays see each step's inputs (copied in)
        np.testing.assert_array_equal(out.numpy(), ((x + t) * 2 + t).numpy())
    # the static buffers are not the caller's tensors
    y = torch.zeros(8)
    graphs.run(key, step, [y, torch.tensor(0.0)])
    assert cap.calls[0][0][0] is not y


def test_new_bucket_captures_again_and_shares_the_pool() -> None:
    cap = FakeCapture()
    made: list[object] = []

    def pool() -> object:
        made.append(object())
        return made[-1]

    graphs = DecodeGraphs(cap, pool_factory=pool, warmup=0)
    a = graphs.key(5, 256, torch.float32)
    b = graphs.key(7, 200, torch.float32)  # same bucket (8 rows, 256 capacity)
    c = graphs.key(9, 256, torch.float32)  # 16 rows: a new capture
    assert a == b != c
    graphs.run(a, step, [torch.ones(8), torch.tensor(1.0)])
    graphs.run(b, step, [torch.ones(8), torch.tensor(2.0)])
    graphs.run(c, step, [torch.ones(16), torch.tensor(1.0)])
    assert graphs.stats.captures == 2
    assert len(made) == 1 and cap.calls[0][1] is cap.calls[1][1] is made[0]
    d = graphs.key(8, 256, torch.bfloat16)  # another dtype is another graph
    graphs.run(d, step, [torch.ones(8, dtype=torch.bfloat16), torch.tensor(1.0)])
    assert graphs.stats.captures == 3


def test_lru_eviction_and_recapture() -> None:
    cap = FakeCapture()
    graphs = DecodeGraphs(cap, warmup=1, max_graphs=2)
    keys = [graphs.key(r, 256, torch.float32) for r in (1, 2, 4)]
    inputs = {k: [torch.ones(k.rows), torch.tensor(0.0)] for k in keys}
    for k in keys[:2]:
        graphs.run(k, step, inputs[k])  # warm-up
        graphs.run(k, step, inputs[k])  # capture
    graphs.run(keys[0], step, inputs[keys[0]])  # keys[0] most recently used
    graphs.run(keys[2], step, inputs[keys[2]])
    graphs.run(keys[2], step, inputs[keys[2]])  # capture: evicts keys[1]
    assert graphs.stats.evictions == 1
    assert keys[0] in graphs and keys[2] in graphs and keys[1] not in graphs
    before = graphs.stats.captures
    graphs.run(keys[1], step, inputs[keys[1]])  # warm-up again, then capture
    assert graphs.stats.captures == before
    graphs.run(keys[1], step, inputs[keys[1]])
    assert graphs.stats.captures == before + 1


def test_shape_mismatch_is_a_clear_error() -> None:
    graphs = DecodeGraphs(FakeCapture(), warmup=0)
    key = graphs.key(4, 256, torch.float32)
    graphs.run(key, step, [torch.ones(4), torch.tensor(0.0)])
    with pytest.raises(ValueError, match=r"shape \(3,\).*captured \(4,\).*pad to the key"):
        graphs.run(key, step, [torch.ones(3), torch.tensor(0.0)])
    with pytest.raises(ValueError, match="warmup >= 0"):
        DecodeGraphs(FakeCapture(), warmup=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_matches_eager() -> None:
    from nlhf_torch.cudagraph import cuda_decode_graphs

    graphs = cuda_decode_graphs(warmup=1)
    w = torch.randn(64, 64, device="cuda")

    def mm(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w)

    key = graphs.key(8, 256, torch.float32)
    for _ in range(3):
        x = torch.randn(8, 64, device="cuda")
        out = graphs.run(key, mm, [x])
        np.testing.assert_array_equal(out.cpu().numpy(), mm(x).cpu().numpy())
    assert graphs.stats.captures == 1 and graphs.stats.replays == 2
