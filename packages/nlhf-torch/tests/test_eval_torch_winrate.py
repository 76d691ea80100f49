"""Sampled win-rate evaluation of LLM policies (docs/evaluation.md): tiny Llamas, a test oracle.

Oracles: the cells are recomputed here from the cached response files with the oracle
function itself (so the pairing and the "column beats row" orientation are checked), a
policy evaluated against its own copy must give exactly ½ (shared seeds) and KL 0.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

os.environ.setdefault("MPLBACKEND", "Agg")

import nlhf
import numpy as np
import pytest
from nlhf.errors import InputError
from nlhf.plugins import build_plugins
from nlhf.spec import RunSpec
from nlhf.testing.tolerances import assert_close
from nlhf_torch.evaluate import Sampler, evaluate_spec, resolve_policy
from nlhf_torch.tiny import build_tiny_model

CORPUS = ["Pick a fruit: apple banana cherry", "Name a colour: red green blue"] * 3
PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:"]


def length_pref(a: str, b: str) -> float:
    """P(a ≻ b) = σ((len a − len b)/3): antisymmetric, soft."""
    return 1 / (1 + math.exp(-(len(a) - len(b)) / 3))


class _Plugin:
    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register(
            "evlen",
            lambda **kw: (
                lambda xs, ys, yps: [length_pref(a, b) for a, b in zip(ys, yps, strict=True)]
            ),
        )


@pytest.fixture(scope="module")
def plugins() -> Any:
    return build_plugins(extra=[_Plugin()])


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaltorch")
    base = build_tiny_model(root / "base", "llama", corpus=CORPUS, vocab_size=300, seed=1)
    other = build_tiny_model(root / "other", "llama", tokenizer_dir=base, seed=2)
    third = build_tiny_model(root / "third", "llama", tokenizer_dir=base, seed=3)
    run = root / "run"  # a run directory: latest checkpoint wins
    shutil.copytree(other, run / "checkpoints" / "step-2")
    shutil.copytree(third, run / "checkpoints" / "step-10")
    copy = root / "copy"
    shutil.copytree(base, copy)
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"base": base, "other": other, "run": run, "copy": copy, "data": data, "root": root}


def make_spec(assets: dict[str, Path], policies: list[str], out: Path, **eval_over: Any) -> RunSpec:
    return RunSpec.model_validate(
        {
            "task": "evaluate",
            "seed": 5,
            "policy": {"model": str(assets["base"])},
            "preference": {"name": "oracle", "function": "evlen"},
            "data": {"path": str(assets["data"])},
            "training": {"batch_size": 4, "generation": {"max_new_tokens": 6}},
            "eval": {"policies": policies, "samples_per_prompt": 3, **eval_over},
            "output": {"dir": str(out), "plots": False},
        }
    )


def _responses(out: Path, summary: dict[str, Any], name: str) -> list[dict[str, Any]]:
    checkpoint = summary["per_policy"][name]["checkpoint"]
    for f in sorted((out / "responses").glob("*.jsonl")):
        lines = [json.loads(x) for x in f.read_text().splitlines()]
        if lines[0]["meta"]["policy"] == checkpoint:
            return lines[1:]
    raise AssertionError(f"no responses for {name}")


def test_matrix_cells_kl_lengths_and_cache(assets, tmp_path: Path, plugins, monkeypatch) -> None:
    out = tmp_path / "ev"
    policies = ["reference", f"twin={assets['copy']}", str(assets["other"]), str(assets["run"])]
    summary = evaluate_spec(make_spec(assets, policies, out), plugins=plugins)
    names = summary["policies"]
    assert names == ["reference", "twin", "other", "run"]
    data = json.loads((out / "winrate.json").read_text())
    M = np.array(data["matrix"])
    assert_close(M + M.T, np.ones_like(M), "float64", "M + Mᵀ")
    assert np.all(np.diag(M) == 0.5)
    assert np.array(data["n"])[0, 1] == len(PROMPTS) * 3
    # identical weights: KL exactly 0; P(twin ≻ reference) = ½ up to sampling error
    assert summary["per_policy"]["twin"]["kl_to_reference"] == 0.0
    assert data["ci_low"][0][1] <= 0.5 <= data["ci_high"][0][1]
    assert summary["per_policy"]["run"]["step"] == 10  # the latest checkpoint
    # recompute every cell from the cached responses with the oracle itself
    rows = {n: _responses(out, summary, n) for n in names}
    # independent random streams per policy: the twin does not replay the reference's
    # samples (shared uniforms would couple y_i and y_j and bias every cell)
    same = [
        a["response"] == b["response"] for a, b in zip(rows["reference"], rows["twin"], strict=True)
    ]
    assert not all(same)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i == j:
                continue
            expect = np.mean(
                [
                    length_pref(rb["response"], ra["response"])
                    for ra, rb in zip(rows[a], rows[b], strict=True)
                ]
            )
            assert_close(M[i, j], expect, "float64")
    for n in names:
        lens = [r["length"] for r in rows[n]]
        assert summary["per_policy"][n]["mean_length"] == pytest.approx(np.mean(lens))
        assert all(1 <= x <= 6 for x in lens)
    assert summary["per_policy"]["other"]["kl_to_reference"] > 0.01
    low, high = np.array(data["ci_low"]), np.array(data["ci_high"])
    off = ~np.eye(4, dtype=bool)
    assert np.all(low[off] <= M[off] + 1e-12) and np.all(M[off] <= high[off] + 1e-12)
    assert data["ci_method"][0][2] == "bootstrap"

    # adding one policy samples one policy and compares k − 1 = 4 new pairs
    calls: list[str] = []
    original = Sampler.sample

    def counting(self: Sampler, entry: Any, seed: int) -> Any:
        calls.append(entry.name)
        return original(self, entry, seed)

    monkeypatch.setattr(Sampler, "sample", counting)
    third = assets["root"] / "third"
    summary2 = evaluate_spec(make_spec(assets, [*policies, str(third)], out), plugins=plugins)
    assert calls == ["third"]
    assert summary2["responses_cached"] == 4 and summary2["cells_compared"] == 4
    M2 = np.array(json.loads((out / "winrate.json").read_text())["matrix"])
    np.testing.assert_array_equal(M2[:4, :4], M)  # cached cells are reused as they are


def test_torch_backend_dispatches_evaluate(assets, tmp_path: Path) -> None:
    from nlhf_torch.backend import TorchBackend

    spec = make_spec(
        assets, [str(assets["base"]), str(assets["other"])], tmp_path / "b", num_prompts=2
    )
    spec.preference = RunSpec.model_validate(
        {
            "task": "evaluate",
            "preference": {"name": "oracle", "function": "population"},
            "eval": {"policies": ["x"]},
        }
    ).preference
    spec.output.plots = True
    summary = TorchBackend().train(spec, tmp_path / "b")
    assert summary["task"] == "evaluate" and len(summary["policies"]) == 2
    assert (tmp_path / "b" / "winrate.csv").read_text().count("\n") == 5
    assert (tmp_path / "b" / "plots" / "winrate.png").stat().st_size > 5000
    assert json.loads((tmp_path / "b" / "winrate.json").read_text())["n"][0][1] == 2 * 3


def test_bad_policies(assets, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such directory"):
        resolve_policy(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"neither config\.json"):
        resolve_policy(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="reference"):
        resolve_policy("reference")
    spec = make_spec(assets, [str(assets["base"])], tmp_path / "x")
    spec.preference = None
    with pytest.raises(InputError, match="preference"):
        evaluate_spec(spec)
