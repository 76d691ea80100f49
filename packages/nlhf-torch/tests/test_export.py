"""Publishable checkpoints on torch: every checkpoint of a Nash run carries a model card and
its tokenizer with the chat template; ``nlhf export`` writes a merged transformers model
whose logits equal the run's policy (full fine-tuning and LoRA); its refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nlhf
import pytest
import torch
from nlhf.cli import main
from nlhf.errors import InputError, RunDirError
from nlhf.export import export_model, find_source
from nlhf.plugins import build_plugins
from nlhf.spec import RunSpec
from nlhf.testing.tolerances import assert_close
from nlhf.testing.trainer import LengthOracle
from nlhf.training import nash_loop
from nlhf_torch.tiny import build_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.slow  # tiny Nash runs (LoRA and full), 2 steps each: ~20 s

CORPUS = ["Pick a fruit: apple banana cherry", "Name a colour: red green blue"] * 3
PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


class _Plugin:
    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("length", lambda **kw: LengthOracle())


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    model = build_tiny_model(root / "policy", "llama", corpus=CORPUS, vocab_size=300, seed=1)
    (model / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"model": model, "data": data, "root": root}


def _train(assets: dict[str, Path], name: str, lr: float, **policy: Any) -> tuple[Path, Any]:
    out = assets["root"] / name
    spec = RunSpec.model_validate(
        {
            "seed": 3,
            "policy": {"model": str(assets["model"]), "chat_template": True, **policy},
            "preference": {"name": "oracle", "function": "length"},
            "data": {"path": str(assets["data"])},
            "algorithm": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.15},
            "training": {"steps": 2, "batch_size": 4, "lr": lr, "optimizer": {"name": "adamw"}},
            "output": {"dir": str(out), "checkpoint_every": 1},
        }
    )
    spec.training.generation.max_new_tokens = 4
    loop = nash_loop(spec, out, backend="torch", plugins=build_plugins(extra=[_Plugin()]))
    loop.run()
    return out, loop


@pytest.fixture(scope="module")
def full_run(assets: dict[str, Path]) -> tuple[Path, Any]:
    return _train(assets, "full", 0.05)


@pytest.fixture(scope="module")
def lora_run(assets: dict[str, Path]) -> tuple[Path, Any]:
    lora = {"r": 4, "alpha": 32.0, "target_modules": ["q_proj", "v_proj"]}
    return _train(assets, "lora", 0.05, lora=lora)  # Adam: B leaves 0 by ~lr per step


def _cli(*args: str) -> int:
    """``nlhf ARGS``; its exit status."""
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _card(directory: Path) -> Any:
    from huggingface_hub import ModelCard

    return ModelCard.load(directory / "README.md")


def _ids(tokenizer: Any) -> torch.Tensor:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Pick a fruit:"}], tokenize=False, add_generation_prompt=True
    )
    return torch.tensor([tokenizer(text)["input_ids"]])


@pytest.mark.parametrize("run", ["full_run", "lora_run"])
def test_every_checkpoint_has_card_and_tokenizer(run: str, request: pytest.FixtureRequest) -> None:
    out, _ = request.getfixturevalue(run)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for step in (1, 2):
        directory = out / "checkpoints" / f"step-{step}"
        card = _card(directory)
        assert card.data.library_name == ("peft" if run == "lora_run" else "transformers")
        assert "nash-md-pg" in card.data.tags
        assert f"after {step} of 2 optimiser steps" in card.text
        assert "| `algorithm.tau` | 0.15 |" in card.text
        assert "| `training.lr` | 0.05 |" in card.text
        loss = metrics[step - 1]["loss"]
        assert f"| `loss` | {loss:.6g} |" in card.text
        manifest = json.loads((directory / ".complete.json").read_text())["files"]
        assert "README.md" in manifest  # written before the rename, covered by the manifest
        tokenizer = AutoTokenizer.from_pretrained(directory)
        assert tokenizer.chat_template == CHAT_TEMPLATE


@pytest.mark.parametrize("run", ["full_run", "lora_run"])
def test_export_logits_equal_the_run_policy(
    run: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    out, loop = request.getfixturevalue(run)
    dest = tmp_path / "exported"
    assert _cli("export", str(out), str(dest)) == 0
    assert (dest / "config.json").is_file() and (dest / "model.safetensors").is_file()
    assert not (dest / "adapter_config.json").exists()
    card = _card(dest)
    assert card.data.library_name == "transformers"
    assert "| `algorithm.tau` | 0.15 |" in card.text and "step 2" in card.text
    tokenizer = AutoTokenizer.from_pretrained(dest)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(dest, trust_remote_code=False)
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = _ids(tokenizer)
    policy = loop.stepper.policy
    policy.eval()
    with torch.no_grad():
        expected = policy(input_ids=ids).logits
        actual = model(input_ids=ids).logits
        initial = AutoModelForCausalLM.from_pretrained(loop.spec.policy.model)(input_ids=ids)
    assert_close(actual.numpy(), expected.numpy(), "float32", f"{run} logits", scope="model")
    assert (initial.logits - expected).abs().max() > 1e-3  # training moved the policy


def test_export_of_one_checkpoint(full_run: tuple[Path, Any], tmp_path: Path) -> None:
    out, _ = full_run
    found = export_model(out / "checkpoints" / "step-1", tmp_path / "e1")
    assert found.step == 1 and found.run_dir == out
    assert "after 1 of 2 optimiser steps" in _card(tmp_path / "e1").text
    from safetensors.torch import load_file

    for name, tensor in load_file(tmp_path / "e1" / "model.safetensors").items():
        saved = load_file(out / "checkpoints" / "step-1" / "model.safetensors")[name]
        torch.testing.assert_close(tensor, saved, rtol=0, atol=0)  # full weights: bit-exact


def test_export_refusals(full_run: tuple[Path, Any], tmp_path: Path) -> None:
    out, _ = full_run
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="is not empty"):
        export_model(out, dest)
    with pytest.raises(RunDirError, match="not written by `nlhf export`"):
        export_model(out, dest, overwrite=True)
    assert (dest / "notes.txt").read_text() == "mine"  # untouched
    first = tmp_path / "first"
    export_model(out, first)
    with pytest.raises(RunDirError, match="--overwrite"):
        export_model(out, first)
    export_model(out / "checkpoints" / "step-1", first, overwrite=True)  # an earlier export
    assert "after 1 of 2" in _card(first).text
    with pytest.raises(InputError, match="overlaps the source"):
        export_model(out, out / "checkpoints" / "step-2" / "sub")
    with pytest.raises(InputError, match=r"SOURCE: .* holds neither trainer_state.json"):
        find_source(tmp_path / "dest")
    with pytest.raises(InputError, match="does not exist"):
        find_source(tmp_path / "missing")


def test_export_cli_errors_are_located(
    full_run: tuple[Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = full_run
    assert _cli("export", str(tmp_path), str(tmp_path / "x")) == 1
    err = capsys.readouterr().err
    assert f"error: SOURCE: {tmp_path} holds neither" in err and "Traceback" not in err
    assert _cli("export", str(out), str(tmp_path / "y"), "--backend", "numpy") == 1
    assert "backend 'numpy' cannot export models" in capsys.readouterr().err
    broken = tmp_path / "broken"
    (broken / "checkpoints").mkdir(parents=True)
    (broken / "spec.resolved.yaml").write_text("task: nash\n")
    assert _cli("export", str(broken), str(tmp_path / "z")) == 1
    assert "without a complete checkpoint" in capsys.readouterr().err
