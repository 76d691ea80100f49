"""The static-shape decode step of the fused decoder (``FastGroup.step_static``) and its
CUDA-graph wiring in :func:`generate_pairs`, on CPU.

Oracles: the dynamic step (``FastGroup.step``, which slices the cache at the Python
position and is itself tested against transformers in test_torch_fastdecode_models.py) for
logits and sampled tokens, and the default (eager) path of :func:`generate_pairs` for whole
generations. The capture is the FakeCapture of test_torch_cudagraph.py: its replay re-runs
the step on the graph's static input buffers, as a CUDA graph replays its kernels on the
same addresses, so every output of a replay is computed from the copied-in inputs only.
The tiny Llama/Qwen2/Qwen3/Mistral/Gemma 2/Gemma 3/Phi-3 configs (2 layers, sliding
window 4 < 7 prompt + 6 new tokens, left-padded prompts) and the LoRA policy are those of
test_torch_fastdecode_models.py.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from nlhf.testing.tolerances import assert_close
from nlhf_torch import cudagraph, fastdecode
from nlhf_torch.cudagraph import DecodeGraphs, GraphKey
from nlhf_torch.generation import generate_pairs
from nlhf_torch.kernels import sample


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_nlhf_{name}", Path(__file__).with_name(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


models = _load("test_torch_fastdecode_models.py")  # the tiny architectures and LoRA policy
FakeCapture = _load("test_torch_cudagraph.py").FakeCapture
B, MAX_NEW, EOS, PAD = models.B, models.MAX_NEW, models.EOS, models.PAD

ARCHS = ["llama", "qwen2", *models.ARCHS]  # + qwen2/3 sliding, qwen3, mistral, gemma2/3, phi3


def _pair(arch: str, dtype: torch.dtype = torch.float64):
    if arch == "lora":
        return models._lora_policy("qwen3", dtype)
    return models._model(arch, 0, dtype), models._model(arch, 1, dtype)


def _centre(logp: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    """The uniform at the centre of ``tok``'s CDF interval under ``logp`` (float64)."""
    p = logp.double().exp()
    before = (p.cumsum(-1) - p).gather(-1, tok[..., None])
    return (before + p.gather(-1, tok[..., None]) / 2).squeeze(-1)


def _static_vs_dynamic(arch: str, dtype: torch.dtype) -> None:
    """Two groups of the same policy and reference over the same prompts: one steps
    dynamically, one through ``step_static``; logits compared at every step, and the
    static logits must sample the dynamic group's tokens (uniforms at the centre of each
    token's interval, so only a real change of the distribution can flip one). Both are
    fed the dynamic group's tokens."""
    policy, reference = _pair(arch, dtype)
    assert fastdecode.unsupported_reason(policy) is None
    ids, mask = models._prompts(padded=True)
    rows = torch.arange(2 * B)
    dyn = fastdecode.FastGroup([policy, reference], rows, MAX_NEW)
    sta = fastdecode.FastGroup([policy, reference], rows, MAX_NEW)
    with torch.no_grad():
        dyn.prefill(ids, mask)
        sta.prefill(ids, mask)
        sta._prepare_static()
        assert sta.static is not None
        u = torch.rand(2, 2 * B, MAX_NEW, generator=torch.Generator().manual_seed(11))
        dtype_name = str(dtype).removeprefix("torch.")
        logits = dyn.logits
        for n in range(MAX_NEW - 1):
            logp = torch.log_softmax(logits.float(), -1)
            tok = sample(logp, u[:, :, n].double())  # (M, R): each model's own sample
            got = sta.step_static(tok[0], sta.static[1][n : n + 1])
            dyn.step(tok[0], n)
            assert got.shape == dyn.logits.shape == (2, 2 * B, models.V)
            what = f"{arch} {dtype_name} logits at decode step {n}"
            assert_close(got.double(), dyn.logits.double(), dtype_name, what, scope="model")
            want = sample(torch.log_softmax(dyn.logits.float(), -1), u[:, :, n + 1].double())
            centred = _centre(torch.log_softmax(dyn.logits.float(), -1), want)
            np.testing.assert_array_equal(
                sample(torch.log_softmax(got.float(), -1), centred).numpy(), want.numpy()
            )
            logits = dyn.logits


@pytest.mark.parametrize("arch", [*ARCHS, "lora"])
def test_static_step_equals_dynamic_step(arch):
    _static_vs_dynamic(arch, torch.float64)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "lora"])
def test_static_step_equals_dynamic_step_bfloat16(arch):
    _static_vs_dynamic(arch, torch.bfloat16)


def test_static_step_on_weights_in_place(monkeypatch):
    """Above FUSE_MAX_PARAMS (weights read in place, one matmul per member)."""
    monkeypatch.setattr(fastdecode, "FUSE_MAX_PARAMS", 0)
    _static_vs_dynamic("mistral", torch.float64)


def test_static_step_shapes_do_not_depend_on_the_step():
    """What a CUDA graph needs: the same output shape at every step, and the step index and
    tokens as the only inputs (the position never leaves the device)."""
    policy, reference = _pair("qwen3-sliding")
    ids, mask = models._prompts()
    g = fastdecode.FastGroup([policy, reference], torch.arange(2 * B), MAX_NEW)
    with torch.no_grad():
        g.prefill(ids, mask)
        g._prepare_static()
        slots, steps = g.static
        np.testing.assert_array_equal(slots.numpy(), np.arange(ids.shape[1] + MAX_NEW))
        tok = torch.full((2 * B,), 5)
        shapes = {tuple(g.step_static(tok, steps[n : n + 1]).shape) for n in range(MAX_NEW - 1)}
    assert shapes == {(2, 2 * B, models.V)}
    assert g.cur == g.plen  # step_static keeps no Python position


def _generate(policy, reference, ids, mask, u, **kw):
    return generate_pairs(
        policy,
        reference,
        ids,
        mask,
        beta=models.BETA,
        temperature=models.TEMP,
        max_new_tokens=MAX_NEW,
        eos_token_id=EOS,
        pad_token_id=PAD,
        uniforms=u,
        **kw,
    )


def _same(a, b) -> None:
    for name in ("y", "y_mask", "y_prime", "y_prime_mask"):
        np.testing.assert_array_equal(getattr(a, name).numpy(), getattr(b, name).numpy(), name)


@pytest.mark.parametrize(
    ("arch", "ref_logits", "groups"),
    [("llama", True, 1), ("llama", False, 2), ("gemma3", False, 2), ("lora", True, 1)],
    ids=["llama-one-group", "llama-two-groups", "gemma3-two-groups", "lora-one-group"],
)
def test_generate_pairs_through_graphs_equals_the_default_path(arch, ref_logits, groups):
    """A whole generation through DecodeGraphs with the fake capture gives the default
    (eager, CPU) path's tokens; one capture per group (policy 2B rows + reference: one
    group with the reference logits along y, two without), (steps − warmup − 1) replays
    each, and the graphs are gone after the call."""
    policy, reference = _pair(arch)
    ids, mask = models._prompts(padded=True)
    kw = dict(return_reference_logits=ref_logits)
    u0 = torch.rand(2 * B, MAX_NEW, generator=torch.Generator().manual_seed(5)).double()
    first = _generate(policy, reference, ids, mask, u0, **kw)
    u = models._centred(policy, reference, ids, mask, first)
    eager = _generate(policy, reference, ids, mask, u, **kw)
    capture = FakeCapture()
    graphs = DecodeGraphs(capture, warmup=1)
    out = _generate(policy, reference, ids, mask, u, cuda_graphs=graphs, **kw)
    assert eager.decode_path == "fused" and out.decode_path == "fused+cudagraph"
    _same(out, eager)
    _same(out, first)
    if ref_logits:
        live = eager.y_mask.bool()
        assert_close(
            out.reference_logits[live], eager.reference_logits[live], "float64", "ref logits"
        )
    steps = out.stats["steps"]
    assert steps >= 3  # decode steps: 0 (warm-up), 1 (capture + replay), 2.. (replays)
    assert out.stats["graph_captures"] == groups == len(capture.calls)
    assert out.stats["graph_warmup_steps"] == groups
    assert out.stats["graph_replays"] == groups * (steps - 1 - 1)
    assert eager.stats["graph_captures"] == eager.stats["graph_replays"] == 0
    p = ids.shape[1] + MAX_NEW
    rows = [2 * B] if groups == 1 else [2 * B, B]
    want_keys = [GraphKey(r, p, torch.float64, f"group {i}") for i, r in enumerate(rows)]
    assert graphs.stats.keys == want_keys
    assert all(k not in graphs for k in want_keys)  # cleared when the call ended


def test_graphs_are_per_call_and_survive_a_reallocated_pool():
    """With a KVCachePool (a training run): every call captures anew (the graphs of the
    previous call read its weight copies and cache), including after the pool grew for a
    longer prompt; stale pool contents (NaN here) never reach a replay, because the decode
    slots are cleared before the first static step."""
    policy, reference = _pair("mistral")
    ids, mask = models._prompts(padded=True)
    pool = fastdecode.KVCachePool()
    graphs = DecodeGraphs(FakeCapture(), warmup=1)
    u = torch.rand(2 * B, MAX_NEW, generator=torch.Generator().manual_seed(6)).double()
    longer_ids = torch.cat([torch.full((B, 3), PAD), ids], 1)
    longer_mask = torch.cat([torch.zeros(B, 3, dtype=mask.dtype), mask], 1)
    for call, (i, m) in enumerate([(ids, mask), (ids, mask), (longer_ids, longer_mask)]):
        eager = _generate(policy, reference, i, m, u, cuda_graphs=False)
        for bufs in pool._buffers.values():  # what an earlier call may leave behind
            for buf in bufs:
                buf.fill_(math.nan)
        before = dict(pool._buffers)
        out = _generate(policy, reference, i, m, u, cuda_graphs=graphs, cache_pool=pool)
        _same(out, eager)
        assert out.stats["graph_captures"] == 2, call  # policy and reference groups
        if call == 1:  # same shapes: the pool kept its storage
            assert all(pool._buffers[k] is before[k] for k in before)
        if call == 2:  # a longer prompt: the pool reallocated, the graphs were captured anew
            assert any(pool._buffers[k] is not before[k] for k in before)
    assert graphs.stats.captures == 6 and not graphs._graphs


def test_switches_and_errors(monkeypatch):
    policy, reference = _pair("llama")
    ids, mask = models._prompts()
    u = torch.rand(2 * B, MAX_NEW, generator=torch.Generator().manual_seed(7)).double()
    out = _generate(policy, reference, ids, mask, u)  # CPU default: eager, as before
    assert out.decode_path == "fused" and out.stats["graph_warmup_steps"] == 0
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        _generate(policy, reference, ids, mask, u, cuda_graphs=True)
    slow = _generate(policy, reference, ids, mask, u, fast_decode=False, cuda_graphs=graphs_())
    assert slow.decode_path.startswith("hf") and slow.stats["graph_captures"] == 0
    for value, on in (("0", False), ("off", False), ("false", False), ("1", True)):
        monkeypatch.setenv("NLHF_CUDA_GRAPHS", value)
        assert cudagraph.enabled() is on
    monkeypatch.delenv("NLHF_CUDA_GRAPHS")
    assert cudagraph.enabled()
    g = fastdecode.FastGroup([policy], torch.arange(B), MAX_NEW)
    with torch.no_grad():
        g.prefill(ids, mask)
        g.step(torch.zeros(B, dtype=torch.long), 0)
        with pytest.raises(RuntimeError, match="from the first decode step"):
            g.step(torch.zeros(B, dtype=torch.long), 1, graphs_())


def test_cuda_default_choice(monkeypatch):
    """Which DecodeGraphs a CUDA device gets by default (no CUDA is touched to decide)."""
    from nlhf_torch.generation import _decode_graphs

    cuda = torch.device("cuda")
    got = _decode_graphs(None, cuda)
    assert isinstance(got, DecodeGraphs) and got._capture is cudagraph.cuda_capture
    assert _decode_graphs(False, cuda) is None
    assert _decode_graphs(None, torch.device("cpu")) is None
    mine = graphs_()
    assert _decode_graphs(mine, torch.device("cpu")) is mine
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type: device_type == "cuda")
    assert _decode_graphs(None, cuda) is None  # autocast's weight cache is not capturable
    monkeypatch.undo()
    monkeypatch.setenv("NLHF_CUDA_GRAPHS", "0")
    assert _decode_graphs(None, cuda) is None
    assert isinstance(_decode_graphs(True, cuda), DecodeGraphs)


def graphs_() -> DecodeGraphs:
    return DecodeGraphs(FakeCapture(), warmup=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ["llama", "gemma3", "lora"])
def test_cuda_graph_generation_equals_eager_on_cuda(arch):
    """On a GPU: the default path captures real CUDA graphs and samples the eager
    path's tokens (centred uniforms), reference logits within the float32 model scope."""
    from types import SimpleNamespace

    from nlhf_torch.models import AdapterDisabled

    cpu_pair = _pair(arch, torch.float32)  # for the centred uniforms (an uncached forward)
    policy, reference = _pair(arch, torch.float32)
    policy = policy.to("cuda")
    reference = AdapterDisabled(policy) if arch == "lora" else reference.to("cuda")
    ids, mask = (t.to("cuda") for t in models._prompts(padded=True))
    kw = dict(return_reference_logits=True)
    u0 = torch.rand(2 * B, MAX_NEW, generator=torch.Generator().manual_seed(5)).double()
    first = _generate(policy, reference, ids, mask, u0, cuda_graphs=False, **kw)
    names = ("y", "y_mask", "y_prime", "y_prime_mask")
    on_cpu = SimpleNamespace(**{n: getattr(first, n).cpu() for n in names})
    u = models._centred(*cpu_pair, ids.cpu(), mask.cpu(), on_cpu)
    eager = _generate(policy, reference, ids, mask, u, cuda_graphs=False, **kw)
    out = _generate(policy, reference, ids, mask, u, **kw)
    assert out.decode_path == "fused+cudagraph" and out.stats["graph_captures"] == 1
    for name in names:
        assert torch.equal(getattr(out, name), getattr(eager, name)), name
    live = eager.y_mask.bool()
    assert_close(
        out.reference_logits[live].cpu(),
        eager.reference_logits[live].cpu(),
        "float32",
        "reference logits, graphs vs eager",
        scope="model",
    )
