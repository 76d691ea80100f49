"""``task: evaluate``: the jax backend (through ``nlhf run --backend jax``) and the torch
backend write the same files and keys on the same tiny Llamas."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nlhf.spec import RunSpec

pytest.importorskip("torch")
pytest.importorskip("jax")
pytestmark = [pytest.mark.jax, pytest.mark.torch]

PROMPTS = [f"Question {k}: pick a {('fruit', 'colour', 'word')[k % 3]}" for k in range(16)]
N_SAMPLES, T_MAX, TEMP = 8, 6, 0.9


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
def assets(tiny_ckpts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_xbackend")
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    other = perturb(tiny_ckpts["llama"], root / "other", seed=1)
    return {"base": tiny_ckpts["llama"], "other": other, "data": data}


def make_spec(assets: dict[str, Path], policies: list[str], out: Path, **eval_over: Any) -> RunSpec:
    return RunSpec.model_validate(
        {
            "task": "evaluate",
            "seed": 5,
            "policy": {"model": str(assets["base"])},
            "preference": {"name": "oracle", "function": "population"},
            "data": {"path": str(assets["data"])},
            "training": {
                "batch_size": 16,
                "generation": {"max_new_tokens": T_MAX, "temperature": TEMP},
            },
            "eval": {"policies": policies, "samples_per_prompt": N_SAMPLES, **eval_over},
            "output": {"dir": str(out), "plots": False},
        }
    )


def read_responses(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Cached rows by policy name (from each file's meta line)."""
    found = {}
    for f in sorted((out / "responses").glob("*.jsonl")):
        lines = [json.loads(x) for x in f.read_text().splitlines()]
        found[lines[0]["meta"]["name"]] = lines[1:]
    return found


def test_same_files_and_keys_as_torch(assets, tmp_path) -> None:
    """``nlhf run --backend jax`` and the torch backend write the same files and keys."""
    from nlhf import cli
    from nlhf_torch.evaluate import evaluate_spec as torch_evaluate
    from typer.testing import CliRunner

    policies = ["reference", str(assets["other"])]
    spec = make_spec(assets, policies, tmp_path / "jax", num_prompts=2)
    torch_summary = torch_evaluate(spec, tmp_path / "torch")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(spec.model_dump(mode="json", exclude_none=True)))
    result = CliRunner().invoke(
        cli.get_app(plugins=False), ["run", str(spec_file), "--backend", "jax"]
    )
    assert result.exit_code == 0, result.output
    jax_summary = json.loads((tmp_path / "jax" / "summary.json").read_text())
    assert jax_summary["backend"] == "jax" and torch_summary["backend"] == "torch"
    assert set(jax_summary) == set(torch_summary)
    assert jax_summary["policies"] == torch_summary["policies"] == ["reference", "other"]
    for name in jax_summary["policies"]:
        assert set(jax_summary["per_policy"][name]) == set(torch_summary["per_policy"][name])
    j, t = (json.loads((tmp_path / b / "winrate.json").read_text()) for b in ("jax", "torch"))
    assert set(j) == set(t) and set(j["meta"]) == set(t["meta"])
    assert j["n"] == t["n"] == [[0, 2 * N_SAMPLES], [2 * N_SAMPLES, 0]]
    assert j["meta"]["backend"] == "jax"

    def layout(root: Path) -> list[tuple[str, int]]:
        return sorted(
            (d.name, len(list(d.iterdir()))) if d.is_dir() else (d.name, 0) for d in root.iterdir()
        )

    assert layout(tmp_path / "jax") == layout(tmp_path / "torch")
    jr, tr = read_responses(tmp_path / "jax"), read_responses(tmp_path / "torch")
    for name in ("reference", "other"):
        assert [set(r) for r in jr[name]] == [set(r) for r in tr[name]]
        assert [(r["prompt_index"], r["sample"]) for r in jr[name]] == [
            (r["prompt_index"], r["sample"]) for r in tr[name]
        ]
    # backends draw different streams from one seed: their responses are cached apart
    assert {f.name for f in (tmp_path / "jax" / "responses").iterdir()}.isdisjoint(
        f.name for f in (tmp_path / "torch" / "responses").iterdir()
    )
    header = (tmp_path / "jax" / "winrate.csv").read_text().splitlines()[0]
    assert header == (tmp_path / "torch" / "winrate.csv").read_text().splitlines()[0]
