"""Prompt-width buckets in the jax trainer: prompts of several widths compile the decode
loop and the update once per bucket, and the losses equal the unbucketed run's (left
padding is masked; positions come from the attention mask)."""

from __future__ import annotations

import json

import pytest
from nlhf.spec.models import RunSpec
from nlhf.testing.tolerances import assert_close

pytestmark = [pytest.mark.jax, pytest.mark.slow]

PROMPTS = ["A", "Pick", "Fruit?", "Fruits!"]


def _spec(ckpt, ref, prompts, out):
    return RunSpec.model_validate({
        "task": "nash", "seed": 3, "policy": {"model": str(ckpt)},
        "reference": {"model": str(ref)},
        "preference": {"name": "oracle", "function": "population"},
        "data": {"path": str(prompts), "format": "prompt", "shuffle": False},
        "algorithm": {"name": "nash_md_pg", "tau": 1.0},
        "training": {"steps": 3, "batch_size": 2, "lr": 0.1,
                     "optimizer": {"name": "sgd"},
                     "generation": {"max_new_tokens": 6}},
        "output": {"dir": str(out)},
    })  # fmt: skip


def test_bucket_width():
    from nlhf_jax.trainer import bucket_width, left_pad

    assert [bucket_width(w, 8, 20) for w in (1, 8, 9, 17, 20, 23)] == [8, 8, 16, 20, 20, 23]
    ids, mask = left_pad([[5, 6], [7]], 0, multiple=8)
    assert ids.shape == (2, 8) and mask.sum() == 3 and ids[1, -1] == 7


def test_one_compile_per_bucket_same_losses(tiny_ckpts, tmp_path):
    from nlhf.training import nash_loop
    from nlhf_jax import generation

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    ckpt = tiny_ckpts["llama"]
    losses = {}
    for bucket in (8, 1):
        out = tmp_path / f"b{bucket}"
        trainer = nash_loop(_spec(ckpt, tiny_ckpts["llama_tied"], prompts, out), out, backend="jax")
        widths = {len(ids) for ids in trainer.prompt_ids}
        assert len(widths) >= 3 and max(widths) <= 8  # several widths, one bucket
        trainer.stepper.prompt_bucket = bucket
        before = generation._decode._cache_size()
        # the training steps only (the oracle's end-of-run summary samples other shapes)
        records = [trainer.step(s) for s in range(1, trainer.total + 1)]
        compiles = (
            trainer.stepper._fused_fn._cache_size(),
            generation._decode._cache_size() - before,
        )
        if bucket == 8:
            assert compiles == (1, 1)
        else:
            assert compiles[0] >= 2  # one per batch width without buckets
        losses[bucket] = [(r["loss"], r["grad_norm"]) for r in records]
    # a different reference (KL > 0 from step 1) and SGD: with P ≈ ½ and π = μ the step-1
    # gradient is round-off, which Adam would blow up to lr-sized steps.
    assert min(g for _, g in losses[1]) > 1e-2
    assert_close(losses[8], losses[1], what="(loss, grad_norm) per step", scope="model")
