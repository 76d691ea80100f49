"""``task: evaluate`` on the jax backend (docs/evaluation.md): tiny Llamas, a test oracle.

Oracles, all independent of the code under test: every cell is recomputed from the
cached responses with the oracle function itself; every cached log-prob is recomputed by
the float64 NumPy forward of ``nlhf.testing.numpy_lm`` on the cached token ids, so the KL
is checked against Σ_n log π(y_n|·) − log μ(y_n|·) by another implementation; a policy
with the reference's weights has KL exactly 0 and wins ½ within the CI; file mtimes show
what was recomputed. (Same files and keys as the torch backend:
tests/test_cross_backend_jax_torch_evaluate.py.)
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import nlhf
import numpy as np
import pytest
from nlhf.errors import InputError, SpecError
from nlhf.evaluation.llm import RESPONSE_KEYS
from nlhf.plugins import build_plugins
from nlhf.spec import RunSpec
from nlhf.testing.tolerances import assert_close

pytestmark = [pytest.mark.jax]

PROMPTS = [f"Question {k}: pick a {('fruit', 'colour', 'word')[k % 3]}" for k in range(16)]
N_SAMPLES, T_MAX, TEMP = 8, 6, 0.9  # 128 samples per policy: 16 prompts (CI clusters)


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


def perturb(src: Path, dst: Path, seed: int, std: float = 0.3) -> Path:
    """A copy of ``src`` (config, tokenizer) with N(0, std²) noise added to every weight."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    rng = np.random.default_rng(seed)
    tensors = load_file(src / "model.safetensors")
    noisy = {
        k: (v + std * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in tensors.items()
    }
    save_file(noisy, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def plugins() -> Any:
    return build_plugins(extra=[_Plugin()])


@pytest.fixture(scope="module")
def assets(tiny_ckpts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaljax")
    base = tiny_ckpts["llama"]
    copy = root / "copy"
    shutil.copytree(base, copy)
    other = perturb(base, root / "other", seed=1)
    run = root / "run"  # a run directory: the latest checkpoint wins
    perturb(base, run / "checkpoints" / "step-2", seed=2)
    perturb(base, run / "checkpoints" / "step-10", seed=3)
    fourth = perturb(base, root / "fourth", seed=4)
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"base": base, "copy": copy, "other": other, "run": run, "fourth": fourth,
            "data": data}  # fmt: skip


def make_spec(assets: dict[str, Path], policies: list[str], out: Path, **eval_over: Any) -> RunSpec:
    return RunSpec.model_validate({
        "task": "evaluate", "seed": 5, "policy": {"model": str(assets["base"])},
        "preference": {"name": "oracle", "function": "evlen"},
        "data": {"path": str(assets["data"])},
        "training": {"batch_size": 16,
                     "generation": {"max_new_tokens": T_MAX, "temperature": TEMP}},
        "eval": {"policies": policies, "samples_per_prompt": N_SAMPLES, **eval_over},
        "output": {"dir": str(out), "plots": False},
    })  # fmt: skip


def read_responses(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Cached rows by policy name (from each file's meta line)."""
    found = {}
    for f in sorted((out / "responses").glob("*.jsonl")):
        lines = [json.loads(x) for x in f.read_text().splitlines()]
        found[lines[0]["meta"]["name"]] = lines[1:]
    return found


@pytest.fixture(scope="module")
def evaluated(assets, plugins, tmp_path_factory) -> tuple[Path, dict[str, Any], list[str]]:
    from nlhf_jax.evaluate import evaluate_spec

    out = tmp_path_factory.mktemp("evaljax_out") / "ev"
    policies = ["reference", f"twin={assets['copy']}", str(assets["other"]), str(assets["run"])]
    summary = evaluate_spec(make_spec(assets, policies, out), plugins=plugins)
    return out, summary, policies


@pytest.mark.slow  # the module's evaluation run (the `evaluated` fixture)
def test_matrix_cells_ci_and_lengths(evaluated, assets) -> None:
    from transformers import AutoTokenizer

    out, summary, _ = evaluated
    names = summary["policies"]
    assert names == ["reference", "twin", "other", "run"]
    assert summary["backend"] == "jax" and summary["responses_sampled"] == 4
    assert summary["cells_compared"] == 6
    data = json.loads((out / "winrate.json").read_text())
    M = np.array(data["matrix"])
    assert_close(M + M.T, np.ones_like(M), "float64", "M + Mᵀ")
    assert np.all(np.diag(M) == 0.5)
    assert np.array(data["n"])[0, 1] == len(PROMPTS) * N_SAMPLES
    assert summary["per_policy"]["run"]["step"] == 10
    assert summary["per_policy"]["run"]["checkpoint"].endswith("step-10")
    # same weights as the reference: ½ within the CI
    assert data["ci_low"][0][1] <= 0.5 <= data["ci_high"][0][1]
    rows = read_responses(out)
    assert set(rows) == set(names)
    # own random streams: the twin does not replay the reference's samples
    assert any(
        a["tokens"] != b["tokens"] for a, b in zip(rows["reference"], rows["twin"], strict=True)
    )
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j:
                expect = np.mean([length_pref(rb["response"], ra["response"])
                                  for ra, rb in zip(rows[a], rows[b], strict=True)])  # fmt: skip
                assert_close(M[i, j], expect, "float64")
    tok = AutoTokenizer.from_pretrained(assets["base"])
    for name in names:
        assert [(r["prompt_index"], r["sample"]) for r in rows[name]] == [
            (x, s) for x in range(len(PROMPTS)) for s in range(N_SAMPLES)
        ]
        for r in rows[name]:
            assert set(r) == set(RESPONSE_KEYS)
            assert r["length"] == len(r["tokens"]) and 1 <= r["length"] <= T_MAX
            assert tok.eos_token_id not in r["tokens"][:-1]
            if r["length"] < T_MAX:
                assert r["tokens"][-1] == tok.eos_token_id
            assert r["response"] == tok.decode(r["tokens"], skip_special_tokens=True)
        mean_len = np.mean([r["length"] for r in rows[name]])
        assert summary["per_policy"][name]["mean_length"] == pytest.approx(mean_len)
    off = ~np.eye(4, dtype=bool)
    low, high = np.array(data["ci_low"]), np.array(data["ci_high"])
    assert np.all(low[off] <= M[off] + 1e-12) and np.all(M[off] <= high[off] + 1e-12)
    assert data["ci_method"][0][2] == "bootstrap"


def _numpy_logprobs(model_dir: Path, prompt_ids: list[list[int]], rows: list[dict]) -> np.ndarray:
    """Σ_n log_softmax(ℓ_n / T)[y_n] by the float64 NumPy forward of
    :mod:`nlhf.testing.numpy_lm` (one right-padded batch: causal attention leaves the real
    positions unchanged)."""
    from nlhf.algorithms.numpy_oracle import log_softmax
    from nlhf.testing.numpy_lm import NumpyLM

    seqs = [prompt_ids[r["prompt_index"]] + r["tokens"] for r in rows]
    width = max(map(len, seqs))
    ids = np.array([q + [0] * (width - len(q)) for q in seqs])
    mask = np.array([[1] * len(q) + [0] * (width - len(q)) for q in seqs])
    logits = NumpyLM.load(model_dir).logits(ids, mask)
    out = []
    for b, r in enumerate(rows):
        p, y = len(prompt_ids[r["prompt_index"]]), r["tokens"]
        logp = log_softmax(logits[b, p - 1 : p - 1 + len(y)] / TEMP)
        out.append(logp[np.arange(len(y)), y].sum())
    return np.array(out)


@pytest.mark.slow
def test_kl_against_the_numpy_forward(evaluated, assets) -> None:
    from transformers import AutoTokenizer

    out, summary, _ = evaluated
    rows = read_responses(out)
    for name in ("reference", "twin"):  # the reference's weights: log π = log μ exactly
        assert all(r["logp_policy"] == r["logp_reference"] for r in rows[name])
        assert summary["per_policy"][name]["kl_to_reference"] == 0.0
    tok = AutoTokenizer.from_pretrained(assets["base"])
    prompt_ids = [tok(p)["input_ids"] for p in PROMPTS]
    ckpt = Path(summary["per_policy"]["other"]["checkpoint"])
    lp = _numpy_logprobs(ckpt, prompt_ids, rows["other"])
    lq = _numpy_logprobs(assets["base"], prompt_ids, rows["other"])
    assert_close([r["logp_policy"] for r in rows["other"]], lp, "float32", "log π", scope="model")
    assert_close(
        [r["logp_reference"] for r in rows["other"]], lq, "float32", "log μ", scope="model"
    )
    stats = summary["per_policy"]["other"]
    assert_close(stats["kl_to_reference"], np.mean(lp - lq), "float32", "KL", scope="model")
    assert stats["kl_to_reference"] > 0.05  # a different policy
    stderr = np.std(lp - lq, ddof=1) / math.sqrt(len(lp))
    assert_close(stats["kl_stderr"], stderr, "float32", "KL stderr", scope="model")
    assert stats["samples"] == len(PROMPTS) * N_SAMPLES


@pytest.mark.slow
def test_adding_a_policy_samples_only_it(evaluated, assets, plugins, tmp_path, monkeypatch) -> None:
    from nlhf_jax.evaluate import JaxSampler, evaluate_spec

    src, _, policies = evaluated
    out = tmp_path / "ev"
    shutil.copytree(src, out)  # copy2: mtimes preserved
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*") if p.parent.name != "plots"}
    M = np.array(json.loads((out / "winrate.json").read_text())["matrix"])
    calls: list[str] = []
    original = JaxSampler.sample

    def counting(self: JaxSampler, entry: Any, seed: int) -> Any:
        calls.append(entry.name)
        return original(self, entry, seed)

    monkeypatch.setattr(JaxSampler, "sample", counting)
    spec = make_spec(assets, [*policies, str(assets["fourth"])], out)
    summary = evaluate_spec(spec, plugins=plugins)
    assert calls == ["fourth"]
    assert summary["responses_cached"] == 4 and summary["responses_sampled"] == 1
    assert summary["cells_compared"] == 4
    for p, mtime in before.items():
        assert p.stat().st_mtime_ns == mtime, p
    new = {p for p in out.glob("*/*") if p.parent.name != "plots"} - set(before)
    assert sorted(p.parent.name for p in new) == ["comparisons"] * 4 + ["responses"]
    M2 = np.array(json.loads((out / "winrate.json").read_text())["matrix"])
    assert np.array_equal(M2[:4, :4], M)

    # everything cached: no model is loaded, nothing is compared
    def no_sampler(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cached evaluation built a sampler")

    monkeypatch.setattr(JaxSampler, "__init__", no_sampler)
    again = evaluate_spec(spec, plugins=plugins)
    assert again["responses_cached"] == 5 and again["cells_compared"] == 0
    assert again["matrix"] == summary["matrix"]


def test_bad_input(assets, tmp_path, plugins) -> None:
    from nlhf_jax.evaluate import evaluate_spec

    with pytest.raises(InputError, match="no such directory"):
        evaluate_spec(make_spec(assets, [str(tmp_path / "nope")], tmp_path / "a"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"neither config\.json"):
        evaluate_spec(make_spec(assets, [str(tmp_path / "empty")], tmp_path / "a"))
    spec = make_spec(assets, [str(assets["base"])], tmp_path / "b")
    spec.preference = None
    with pytest.raises(InputError, match="preference"):
        evaluate_spec(spec)
    spec = make_spec(assets, [str(assets["base"])], tmp_path / "c")
    spec.training.generation.top_k = 5
    with pytest.raises(SpecError, match=r"training\.generation\.top_k: 5 is not supported by"):
        evaluate_spec(spec, plugins=plugins)
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(assets["base"], gpt2)
    cfg = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    spec = make_spec(assets, [f"g={gpt2}", "reference"], tmp_path / "d")
    with pytest.raises(InputError, match=r"eval.policies: g .*model_type: 'gpt2'"):
        evaluate_spec(spec, plugins=plugins)
    assert not (tmp_path / "d" / "responses").exists()
