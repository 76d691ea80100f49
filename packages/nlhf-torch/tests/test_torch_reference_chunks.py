"""μ's log-probabilities under ``training.logprob_chunk`` (torch): the reference's (and a
LoRA policy's adapter-off μ's) log-probs of sampled and offline responses come from its
final hidden states chunk by chunk, and the decode's reference logits are log-softmaxed
chunk by chunk. Values against the full-logits path and a NumPy oracle; an allocation
record (``TorchDispatchMode``) shows that no tensor of B×T×V logits is made in the update
step, while the full path makes one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import nlhf
import numpy as np
import pytest
import torch
from nlhf.plugins import build_plugins
from nlhf.spec import RunSpec
from nlhf.testing.numpy_lm import NumpyLM
from nlhf.testing.offline import build_offline_fixture, numpy_pair_logprobs
from nlhf.testing.tolerances import assert_close
from nlhf.testing.trainer import LengthOracle
from nlhf.training.offline import PairTokens, offline_loop
from nlhf_torch import kernels
from nlhf_torch.trainer import TorchStepper
from torch.utils._python_dispatch import TorchDispatchMode

PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]


class _Plugin:
    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("length", lambda **kw: LengthOracle())


@pytest.fixture(scope="module")
def plugins() -> Any:
    return build_plugins(extra=[_Plugin()])


class _Allocations(TorchDispatchMode):
    """The shapes of the new tensors ops return (not views, in-place or ``out=`` results)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[torch.Size] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        for o, ret in zip(outs, func._schema.returns, strict=False):
            if ret.alias_info is None and isinstance(o, torch.Tensor):
                self.shapes.append(o.shape)
        return out

    def vocab_arrays(self, vocab: int, at_least: int) -> list[torch.Size]:
        """Allocations over the vocabulary (last axis V) of at least ``at_least`` elements."""
        return [s for s in self.shapes if s and s[-1] == vocab and math.prod(s) >= at_least]


# ------------------------------------------------------------------ the kernel
def _oracle(logits: np.ndarray, tokens: np.ndarray, temp: float) -> np.ndarray:
    z = logits / temp
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.take_along_axis(logp, tokens[..., None], -1)[..., 0]


@pytest.mark.parametrize("chunk", [1, 3, 7, 20])
def test_chunked_logits_logprobs_equal_the_full_log_softmax(chunk: int) -> None:
    """float64: log_softmax(ℓ/T)[y] chunk by chunk equals NumPy's and the full path's;
    no allocation spans all T positions of the vocabulary."""
    g = torch.Generator().manual_seed(0)
    b, t, v, temp = 3, 7, 50, 0.7
    logits = torch.randn(b, t, v, generator=g, dtype=torch.float64) * 3
    tokens = torch.randint(0, v, (b, t), generator=g)
    record = _Allocations()
    with record:
        lp = kernels.chunked_logits_logprobs(logits, tokens, temp, chunk)
    assert lp.shape == (b, t) and lp.dtype == torch.float64
    assert_close(lp, _oracle(logits.numpy(), tokens.numpy(), temp), "float64", "vs NumPy")
    assert_close(lp, kernels.token_logprobs(logits, tokens, temp), "float64", "vs full")
    assert bool(record.vocab_arrays(v, b * t * v)) == (chunk >= t)


def test_chunked_logits_logprobs_refuses_a_bad_chunk() -> None:
    with pytest.raises(ValueError, match="chunk must be a positive"):
        kernels.chunked_logits_logprobs(torch.zeros(1, 2, 3), torch.zeros(1, 2).long(), 1.0, 0)


# ------------------------------------------------------------------ the nash stepper
ALGORITHMS = {
    "sampled": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1, "kl_estimator": "sampled"},
    "exact": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1, "kl_estimator": "exact"},
    "online_ipo": {"name": "online_ipo", "tau": 0.1},
    "inpo": {"name": "inpo", "tau": 0.1, "eta": 1.0},
    "egpo": {"name": "egpo", "tau": 0.1},
    "sppo": {"name": "sppo", "eta": 1.0, "num_samples": 3},
}


def _spec(
    assets: dict[str, str], out: Path, algorithm: str, chunk: int | str, **policy: Any
) -> RunSpec:
    return RunSpec.model_validate(
        {
            "seed": 3,
            "policy": {"model": assets["model"], **policy},
            "reference": {"model": assets["tied"]} if not policy else {},
            "preference": {"name": "oracle", "function": "length"},
            "data": {"path": assets["data"], "shuffle": False},
            "algorithm": ALGORITHMS[algorithm],
            "training": {
                "steps": 2,
                "batch_size": 4,
                "lr": 1e-2,
                "logprob_chunk": chunk,
                "generation": {"max_new_tokens": 8, "temperature": 0.8},
            },
            "output": {"dir": str(out)},
        }
    )


def _stepper(spec: RunSpec, plugins: Any) -> tuple[TorchStepper, Any]:
    stepper = TorchStepper(spec, None, plugins)
    prompts = [stepper.tokenizer(p)["input_ids"] for p in PROMPTS]
    return stepper, stepper.sample(1, 0, prompts, 0.25)


@pytest.mark.parametrize("lora", [False, True])
def test_reference_logprobs_equal_the_full_logits(
    torch_tiny: dict[str, str], tmp_path: Path, plugins: Any, lora: bool
) -> None:
    """The chunked μ log-probs of y' (its own forward: a tied Qwen2 reference, or the LoRA
    policy's adapter-off μ) and of y (the decode's logits) equal the full-logits ones."""
    policy = {"lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}} if lora else {}
    stepper, samples = _stepper(_spec(torch_tiny, tmp_path, "online_ipo", 2, **policy), plugins)
    if lora:  # B ≠ 0, so the adapted policy is not μ and a leaked adapter would show
        for name, p in stepper.policy.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(5))
    ids, attn, pairs = samples.payload
    yp, ypm = pairs.y_prime, pairs.y_prime_mask
    assert stepper._logprob_chunk(yp) == 2 and yp.shape[1] > 4
    got = stepper._frozen_logprobs(stepper.reference, ids, attn, yp, ypm)
    with torch.no_grad():
        want = stepper._logprobs(stepper.reference, ids, attn, yp, ypm)
        adapted = stepper._logprobs(stepper.policy, ids, attn, yp, ypm)
    assert not got.requires_grad
    assert_close(got, want, what="log μ(y'|x), chunked vs full")
    assert not np.allclose(want.numpy(), adapted.numpy())  # μ is not the policy
    temp = stepper.spec.training.generation.temperature
    decoded = stepper._decoded_logprobs(pairs.reference_logits, pairs.y, pairs.y_mask)
    full = kernels.token_logprobs(pairs.reference_logits, pairs.y, temp)
    assert_close(decoded, full, what="log μ(y_n|·) from the decode's logits")


def _update_record(
    assets: dict[str, str], out: Path, plugins: Any, algorithm: str, chunk: int | str
) -> tuple[dict[str, float], float, list[torch.Size]]:
    """Metrics and loss of one micro-batch, and the vocabulary-wide allocations of at least
    B·T·V elements its loss and backward made."""
    stepper, samples = _stepper(_spec(assets, out, algorithm, chunk), plugins)
    payload = samples.payload
    comp = payload[3] if algorithm == "sppo" else payload[2].y
    vocab = int(stepper.policy.get_output_embeddings().weight.shape[0])
    rows, positions = comp.shape
    assert positions > 4  # chunks of 2 are well below T
    record = _Allocations()
    with record:
        stepper.accumulate(samples, np.linspace(0.1, 0.9, len(samples.rows)), 0.1)
    update = stepper._update(None)
    return update.metrics[0], update.losses[0], record.vocab_arrays(vocab, rows * positions * vocab)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_update_allocates_no_full_logits(
    torch_tiny: dict[str, str], tmp_path: Path, plugins: Any, algorithm: str
) -> None:
    """Every loss family's update (forward and backward) with ``logprob_chunk: 2`` makes no
    tensor over the vocabulary as large as B×T×V — μ's forward of y' included — where the
    full path makes some; metrics (μ's log-probs enter the KL and margins) and the loss
    equal the full path's."""
    full_metrics, full_loss, full_arrays = _update_record(
        torch_tiny, tmp_path / "a", plugins, algorithm, "off"
    )
    metrics, loss, arrays = _update_record(torch_tiny, tmp_path / "b", plugins, algorithm, 2)
    assert full_arrays, "the full path allocates B×T×V logits"
    assert not arrays, f"chunked: vocabulary-wide allocations {arrays}"
    assert metrics.keys() == full_metrics.keys()
    for key, value in full_metrics.items():
        assert_close(metrics[key], value, what=key, scope="model")
    assert_close(loss, full_loss, what="loss", scope="model")


def test_explicit_chunk_refuses_a_reference_of_unknown_head(
    torch_tiny: dict[str, str], tmp_path: Path, plugins: Any
) -> None:
    from nlhf.errors import InputError
    from nlhf_torch.tiny import build_tiny_model

    gpt2 = build_tiny_model(tmp_path / "gpt2", "gpt2", tokenizer_dir=torch_tiny["model"])
    spec = _spec(torch_tiny, tmp_path / "run", "sampled", 4)
    spec = spec.model_copy(
        update={"reference": spec.reference.model_copy(update={"model": str(gpt2)})}
    )
    with pytest.raises(InputError, match=r"training.logprob_chunk: reference.model: model_type"):
        TorchStepper(spec, None, plugins)


# ------------------------------------------------------------------ task: offline
@pytest.fixture(scope="module")
def offline_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_offline_fixture(tmp_path_factory.mktemp("offline_chunks"))


def _offline(fx: dict[str, Path], out: Path, chunk: int | str) -> Any:
    spec = RunSpec.model_validate(
        {
            "task": "offline",
            "seed": 0,
            "policy": {"model": str(fx["policy"]), "dtype": "float64"},
            "reference": {"model": str(fx["reference"])},
            "data": {"path": str(fx["pairs"]), "format": "preference"},
            "algorithm": {"name": "dpo", "tau": 0.5},
            "training": {
                "steps": 1,
                "batch_size": 4,
                "lr": 0.01,
                "logprob_chunk": chunk,
                "generation": {"temperature": 0.7},
            },
            "output": {"dir": str(out)},
        }
    )
    return offline_loop(spec, out, backend="torch")


@pytest.mark.slow
def test_offline_logprobs_in_chunks(offline_fixture: dict[str, Path], tmp_path: Path) -> None:
    """float64 models: chunked pair log-probs of policy and reference equal the full path
    (kernel tolerance) and the NumPy oracle; neither they nor the update allocate B×T×V."""
    full, chunked = (
        _offline(offline_fixture, tmp_path / "a", "off"),
        _offline(offline_fixture, tmp_path / "b", 1),
    )
    batch: PairTokens = chunked.train_tokens.take(chunked.batch_rows(1))
    stepper = chunked.stepper
    vocab = int(stepper.policy.get_output_embeddings().weight.shape[0])
    rows = 2 * len(batch)
    positions = max(len(r) for r in batch.chosen + batch.rejected)
    assert positions > 1
    for which in ("policy", "reference"):
        record = _Allocations()
        with record:
            got = stepper.pair_logprobs(batch, model=which)
        assert not record.vocab_arrays(vocab, rows * positions * vocab)
        record = _Allocations()
        with record:
            want = full.stepper.pair_logprobs(batch, model=which)
        assert record.vocab_arrays(vocab, rows * positions * vocab)  # the full path's logits
        lm = NumpyLM.load(offline_fixture[which])
        for side, responses, g, w in zip(
            ("chosen", "rejected"), (batch.chosen, batch.rejected), got, want, strict=True
        ):
            assert_close(g, w, "float64", f"{which} {side}: chunked vs full")
            oracle = numpy_pair_logprobs(lm, batch.prompt, responses, 0.7)
            assert_close(g, oracle, "float32", f"{which} {side} vs NumPy", scope="model")
    reference = full.stepper.pair_logprobs(batch, model="reference")
    record = _Allocations()
    with record:
        stepper.accumulate(batch, reference, 0.5, 1.0)
    assert not record.vocab_arrays(vocab, rows * positions * vocab)
    full.stepper.accumulate(batch, reference, 0.5, 1.0)
    got_grads, want_grads = stepper.gradients(), full.stepper.gradients()
    for name, g in want_grads.items():
        assert_close(got_grads[name], g, "float64", name)


def test_chunked_reference_resume_is_bit_exact(
    torch_tiny: dict[str, str], tmp_path: Path, plugins: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online IPO with ``logprob_chunk: 2`` (μ's y' forward and the decode logits of y in
    chunks): 3 steps straight equal 2 steps, an interruption and a resume, bit for bit."""
    from nlhf.training import NashLoop
    from nlhf_torch.trainer import train_nash
    from safetensors.torch import load_file

    def spec(out: Path) -> RunSpec:
        s = _spec(torch_tiny, out, "online_ipo", 2)
        training = s.training.model_copy(update={"steps": 3, "grad_accum": 2})
        output = s.output.model_copy(update={"checkpoint_every": 2})
        return s.model_copy(update={"training": training, "output": output})

    full, split = tmp_path / "full", tmp_path / "split"
    train_nash(spec(full), full, plugins=plugins)
    original = NashLoop.step

    class Stop(Exception):
        pass

    def interrupted(self: NashLoop, step: int) -> dict[str, Any]:
        if step == 3:
            raise Stop
        return original(self, step)

    monkeypatch.setattr(NashLoop, "step", interrupted)
    with pytest.raises(Stop):
        train_nash(spec(split), split, plugins=plugins)
    monkeypatch.setattr(NashLoop, "step", original)
    train_nash(spec(split), split, resume=True, plugins=plugins)
    a = load_file(str(full / "checkpoints/step-3/model.safetensors"))
    b = load_file(str(split / "checkpoints/step-3/model.safetensors"))
    init = load_file(str(Path(torch_tiny["model"]) / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - init[k]).abs().max()) for k in a if k in init) > 1e-5
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)


@pytest.mark.parametrize(("algorithm", "decoded"), [("sppo", False), ("exact", True)])
def test_reference_decodes_only_where_a_loss_reads_it(
    torch_tiny: dict[str, str],
    tmp_path: Path,
    plugins: Any,
    monkeypatch: pytest.MonkeyPatch,
    algorithm: str,
    decoded: bool,
) -> None:
    """SPPO's loss reads π_t, not μ, so its sampler call leaves μ out of the decode (no
    reference logits, fewer forward calls); Nash-MD-PG's exact KL still gets them."""
    import nlhf_torch.trainer as trainer_module

    calls: list[tuple[bool, Any]] = []
    real = trainer_module.generate_pairs

    def spy(*args: Any, **kwargs: Any) -> Any:
        pairs = real(*args, **kwargs)
        calls.append((kwargs["return_reference_logits"], pairs))
        return pairs

    monkeypatch.setattr(trainer_module, "generate_pairs", spy)
    _stepper(_spec(torch_tiny, tmp_path, algorithm, "off"), plugins)
    [(asked, pairs)] = calls
    assert asked is decoded
    assert (pairs.reference_logits is not None) is decoded
    steps, models = pairs.stats["steps"], 1 + int(decoded)  # prefill + one call per step
    assert pairs.stats["forward_calls"] == models * steps
