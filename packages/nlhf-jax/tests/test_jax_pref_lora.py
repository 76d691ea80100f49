"""``task: preference_model`` with ``policy.lora`` on the jax backend: only the adapters
(and a ``classification`` head's score head) train, the saved directory is the merged
model W + s·B A (checked in NumPy from the saved files) plus the peft adapter, LoRA dropout
is keyed, resume is bit-exact, and mismatched resumes fail clearly. (Loading in torch:
tests/test_cross_backend_jax_torch_preferences.py.)"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nlhf.errors import InputError
from nlhf.runio import read_metrics
from nlhf.spec.models import LoraSpec, RunSpec
from nlhf.testing.tolerances import assert_close
from safetensors.numpy import load_file as read_file

pytest.importorskip("flax")
pytestmark = pytest.mark.jax

import jax  # noqa: E402
from flax import nnx  # noqa: E402
from nlhf.data.pairs import Pair  # noqa: E402
from nlhf_jax import lora  # noqa: E402
from nlhf_jax.models.io import read_safetensors  # noqa: E402
from nlhf_jax.preference.model import (  # noqa: E402
    PreferenceConfig,
    build_preference_model,
    load_decoder,
    load_lora_checkpoint,
)
from nlhf_jax.preference.train import PairBatch, chunk_loss, train_preference_model  # noqa: E402

TEMPLATE = "Q: {prompt} A1: {response_1} A2: {response_2} Better:"
WORDS = ["pear", "plum", "fig", "kiwi", "lime", "date", "grape", "melon"]
PEFT = "base_model.model."


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from nlhf.testing.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("jax_pref_lora")
    rng = random.Random(0)

    def response(keyword: bool) -> str:
        words = [rng.choice(WORDS) for _ in range(3)]
        if keyword:
            words[rng.randrange(3)] = "apple"
        return " ".join(words)

    rows = [{"prompt": f"pick {rng.choice(WORDS)}", "chosen": response(True),
             "rejected": response(False)} for _ in range(24)]  # fmt: skip
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"data": data, "model": build_tiny_model(root / "lm", "llama")}


def make_spec(
    setup: dict[str, Path], head: str, lora_spec: dict | None, **training: Any
) -> RunSpec:
    kind = "pairwise" if head == "lm" else "bradley_terry"
    return RunSpec.model_validate({
        "task": "preference_model", "seed": 1,
        "policy": {"model": str(setup["model"]), "lora": lora_spec},
        "data": {"path": str(setup["data"]), "max_length": 64},
        "preference_training": {"kind": kind, "head": head, "template": TEMPLATE},
        "training": {"steps": 2, "batch_size": 4, "lr": 1e-2, **training},
        "output": {"checkpoint_every": 1},
    })  # fmt: skip


@pytest.mark.parametrize("head", [pytest.param("lm", marks=pytest.mark.slow), "classification"])
def test_lora_run_trains_adapters_and_score_head_only(
    setup: dict[str, Path], tmp_path: Path, head: str
) -> None:
    """Every base weight is saved unchanged or as W + s·B A of the saved adapter (s = α/r,
    every projection adapted, every B trained away from 0); the score head trains."""
    summary = train_preference_model(make_spec(setup, head, {"r": 4, "alpha": 8}), tmp_path / "run")
    base = read_safetensors(setup["model"])
    for d in ("checkpoints/step-1", "model"):
        saved = tmp_path / "run" / d
        merged = read_safetensors(saved)
        adapter = read_adapter(saved / "adapter")
        projections = {k[: -len(".weight")] for k in base if k.endswith("_proj.weight")}
        assert {k.split(".lora_")[0] for k in adapter} == {PEFT + p for p in projections}
        for name, w in base.items():
            if name == "lm_head.weight" and head == "classification":
                assert name not in merged
                continue
            module = PEFT + name[: -len(".weight")]
            if module + ".lora_A.weight" in adapter:
                a, b = adapter[module + ".lora_A.weight"], adapter[module + ".lora_B.weight"]
                assert np.abs(b).max() > 0, name
                expected = w.astype(np.float64) + 2.0 * (b.astype(np.float64) @ a)
                assert_close(merged[name], expected, "float32", name)
            else:
                np.testing.assert_array_equal(merged[name], w, err_msg=name)
    h = base["model.embed_tokens.weight"].shape[1]
    trained = sum(4 * sum(base[p + ".weight"].shape) for p in projections)
    if head == "classification":
        fresh = load_decoder(setup["model"], "classification", seed=1).score.kernel[...]
        assert not np.array_equal(merged["score.weight"], np.asarray(fresh).T)
        trained += h
    assert summary["lora"] == {"r": 4, "alpha": 8.0, "trained_parameters": trained}
    # the optimiser holds Adam's two moments of the trained parameters and nothing else
    opt = read_file(tmp_path / "run/checkpoints/step-2/optimizer.safetensors")
    assert sum(x.size for x in opt.values() if x.ndim) == 2 * trained


def read_adapter(directory: Path) -> dict[str, np.ndarray]:
    config = json.loads((directory / lora.ADAPTER_CONFIG).read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8)
    return read_file(directory / lora.ADAPTER_WEIGHTS)


@pytest.mark.slow
def test_lora_dropout_masks_follow_the_key(setup: dict[str, Path]) -> None:
    """With p = 0.5 the training loss depends on the key (and only on it); without a key
    (evaluation) the adapters see their whole input."""
    cfg = PreferenceConfig(kind="pairwise", head="lm", template=TEMPLATE, max_length=64)
    model = build_preference_model(
        setup["model"], cfg, lora_spec=LoraSpec(r=4, alpha=8, dropout=0.5), seed=0
    )
    params, frozen = model.split_trainable()
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params = jax.tree.unflatten(
        tree, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    )  # B ≠ 0, so the adapters (and their dropout) matter
    state = nnx.merge_state(params, frozen)
    pairs = [Pair("pick fig", "apple pear", "plum lime"), Pair("pick kiwi", "date", "apple")]
    arrays = PairBatch(model, pairs, len(pairs)).arrays()
    loss = jax.jit(lambda s, k, *a: chunk_loss(model, s, *a, key=k))
    k1, k2 = jax.random.key(1), jax.random.key(2)
    plain, first, again, other = (float(loss(state, k, *arrays)) for k in (None, k1, k1, k2))
    assert first == again
    assert len({plain, first, other}) == 3


@pytest.mark.slow
def test_lora_resume_is_bit_exact(setup: dict[str, Path], tmp_path: Path) -> None:
    """Stopped after 2 steps and resumed to 4 (dropout on, two accumulation chunks): the
    same losses and the same saved files, bit for bit, as an uninterrupted run."""
    lora_spec = {"r": 4, "alpha": 8, "dropout": 0.1}
    over = {"grad_accum": 2, "max_grad_norm": 0.5}
    spec = make_spec(setup, "classification", lora_spec, steps=4, **over)
    train_preference_model(spec, tmp_path / "full")
    train_preference_model(make_spec(setup, "classification", lora_spec, steps=2, **over),
                           tmp_path / "resumed")  # fmt: skip
    summary = train_preference_model(spec, tmp_path / "resumed", resume=True)
    assert summary["resumed_from"] == 2
    losses = [[r["loss"] for r in read_metrics(tmp_path / d) if "loss" in r]
              for d in ("full", "resumed")]  # fmt: skip
    assert len(losses[0]) == 4 and losses[1] == losses[0]
    for d in ("model", "checkpoints/step-4"):
        a, b = (read_safetensors(tmp_path / r / d) for r in ("full", "resumed"))
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        a, b = (read_adapter(tmp_path / r / d / "adapter") for r in ("full", "resumed"))
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_mismatched_lora_resumes_and_targets_fail_clearly(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    lora_spec = {"r": 4, "alpha": 8}
    train_preference_model(make_spec(setup, "lm", lora_spec, steps=1), tmp_path / "run")
    train_preference_model(make_spec(setup, "lm", None, steps=1), tmp_path / "plain")
    # a resume whose policy.lora differs from the run's is refused before any loading
    changed = r"--resume: the spec differs .*\n  policy\.lora[.:]"
    for lora_now, run in ((None, "run"), ({"r": 2, "alpha": 8}, "run"), (lora_spec, "plain")):
        with pytest.raises(InputError, match=changed):
            train_preference_model(make_spec(setup, "lm", lora_now), tmp_path / run, resume=True)
    # the checkpoint loader's own checks, for a caller that bypasses the spec check
    step = tmp_path / "run" / "checkpoints" / "step-1"
    with pytest.raises(InputError, match="adapter has r=4"):
        load_lora_checkpoint(step, setup["model"], LoraSpec(r=2, alpha=8))
    with pytest.raises(InputError, match=r"not written by a policy\.lora run"):
        plain = tmp_path / "plain" / "checkpoints" / "step-1"
        load_lora_checkpoint(plain, setup["model"], LoraSpec(**lora_spec))
    with pytest.raises(InputError, match="matches no linear layer"):
        train_preference_model(
            make_spec(setup, "lm", {"target_modules": ["nope"]}), tmp_path / "bad"
        )
