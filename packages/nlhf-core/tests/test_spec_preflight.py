"""Pre-flight checks (:mod:`nlhf.spec.preflight`): output directories that cannot be
written (a file, under a file, read-only, a full disk) and sizes that cannot fit in memory
are refused, located, before any model loads; the memory estimate against a hand count."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import nlhf
import numpy as np
import pytest
from nlhf import cli
from nlhf import plugins as plugins_mod
from nlhf.spec import load_spec_text
from nlhf.spec import preflight as pf
from typer.testing import CliRunner

runner = CliRunner()
TABULAR = """\
spec_version: 1
task: nash
preference: {name: tabular, matrix: [[0.5, 0.9], [0.1, 0.5]]}
algorithm: {name: nash_md, tau: 0.1, steps: 10}
output: {dir: OUT}
"""
CONFIG = (
    '{"vocab_size": 32000, "num_hidden_layers": 2, "hidden_size": 64,'
    ' "num_attention_heads": 4, "num_key_value_heads": 2}'
)


class Recorder:
    """A numpy backend that records whether it was ever created (it must not be)."""

    created: ClassVar[list[str]] = []

    __name__ = "preflight_recorder"

    @nlhf.hookimpl
    def nlhf_register_backends(self, register: Any) -> None:
        register("numpy", lambda: Recorder.created.append("numpy") or self)

    def train(self, spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
        raise AssertionError("train must not run")


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLHF_PLUGINS", "")
    built = plugins_mod.build_plugins(extra=[Recorder()])
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: built)
    Recorder.created = []


# ------------------------------------------------------------------------- output dir
def test_output_dir_ok_when_missing_under_a_writable_dir(tmp_path: Path) -> None:
    assert pf.check_output_dir(tmp_path / "a" / "b") is None
    assert pf.check_output_dir(tmp_path) is None


def test_output_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert pf.check_output_dir(tmp_path / "f") == (
        f"{tmp_path / 'f'} is a file, not a directory; remove it or choose another output.dir"
    )


def test_output_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    message = pf.check_output_dir(tmp_path / "f" / "x" / "y")
    assert message == (
        f"{tmp_path / 'f' / 'x' / 'y'} lies under {tmp_path / 'f'}, which is not a directory; "
        "choose another output.dir"
    )


def test_output_dir_full_disk_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda p: usage._replace(free=12 * 1024))
    message = pf.check_output_dir(tmp_path / "run")
    assert message is not None
    assert message.startswith(f"no space left on the filesystem of {tmp_path}: 12.0 KiB free")


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Any]:
    """Mount a 1 MiB tmpfs (root with CAP_SYS_ADMIN only: a real full / read-only disk)."""
    mounts: list[Path] = []

    def mount(options: str) -> Path:
        target = tmp_path / f"mnt{len(mounts)}"
        target.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
        mounts.append(target)
        return target

    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    yield mount
    for target in mounts:
        subprocess.run(["umount", str(target)], check=False)


def test_output_dir_on_a_full_filesystem(small_mount: Any) -> None:
    target = small_mount("size=1m")
    message = pf.check_output_dir(target / "run")
    assert message is not None and message.startswith(
        f"no space left on the filesystem of {target}"
    )


def test_output_dir_on_a_read_only_filesystem(small_mount: Any) -> None:
    target = small_mount("size=1m,ro")
    assert pf.check_output_dir(target / "run") == (
        f"{target / 'run'} lies under {target}, which is not writable (a read-only "
        "filesystem or no permission); choose another output.dir"
    )


def test_run_refuses_a_bad_output_before_the_backend_exists(recorder: None, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    spec = tmp_path / "s.yaml"
    spec.write_text(TABULAR.replace("OUT", str(tmp_path / "f" / "run")))
    result = runner.invoke(cli.get_app(), ["run", str(spec)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"{spec}:5:15: output.dir: {tmp_path / 'f' / 'run'} lies under")
    assert Recorder.created == []
    # --output replaces output.dir: the problem is located on the option
    spec.write_text(TABULAR.replace("OUT", str(tmp_path / "fine")))
    result = runner.invoke(cli.get_app(), ["run", str(spec), "--output", str(tmp_path / "f")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"--output {tmp_path / 'f'}: {tmp_path / 'f'} is a file")
    assert Recorder.created == []


# ----------------------------------------------------------------------------- memory
def _llm(
    tmp_path: Path, training: str, weights: int = 0, config: str = CONFIG, policy: str = ""
) -> Any:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(config)
    if weights:
        (model / "model.bin").write_bytes(b"\0" * weights)
    text = (
        "spec_version: 1\ntask: nash\n"
        f"policy: {{model: {model}{policy}}}\n"
        "preference: {name: oracle, function: f}\n"
        "data: {path: p.jsonl, max_prompt_length: 256}\n"
        "algorithm: {name: nash_md_pg}\n"
        f"training: {training}\n"
    )
    return load_spec_text(text, "s.yaml")


def test_memory_estimate_matches_a_hand_count(tmp_path: Path) -> None:
    """B = 8/2 = 4 rows, T = 256 + 64 = 320, V = 32000 (< 32768: auto keeps full logits),
    L = 2, h = 64, H_kv = 2·(64/4) = 32, I = 0 (absent), N = 1000 bytes / 4 (float32) =
    250 parameters, s = 4."""
    spec = _llm(tmp_path, "{batch_size: 8, grad_accum: 2, generation: {max_new_tokens: 64}}", 1000)
    [estimate] = pf.estimate_memory(spec)
    assert estimate.terms == {
        "token ids (2·B·T·8)": 20_480,  # 2·4·320·8
        "logits (B·T·V·4, V=32000)": 163_840_000,  # 4·320·32000·4
        "KV cache (2·L·B·T·H_kv·s)": 655_360,  # 2·2·4·320·32·4
        "parameters (N·s)": 1000,  # 250·4
        "gradients (N·s)": 1000,
        "Adam moments (2·N·s)": 2000,
        "activations (L·B·T·(3h + I)·a)": 1_966_080,  # 2·4·320·192·4
    }
    assert estimate.inputs == "B=4, T=256+64"


BIG = (
    '{"vocab_size": 131072, "num_hidden_layers": 4, "hidden_size": 64, "intermediate_size":'
    ' 256, "num_attention_heads": 4, "num_key_value_heads": 4, "dtype": "bfloat16"}'
)


def _terms(spec: Any) -> dict[str, int]:
    [estimate] = pf.estimate_memory(spec)
    return {k: v for k, v in estimate.terms.items() if not k.startswith(("token", "KV"))}


def test_memory_estimate_of_the_memory_options(tmp_path: Path) -> None:
    """B = 4, T = 256 + 32 = 288, V = 131072, L = 4, h = 64, I = 256; N = 4096 bytes / 2
    (bfloat16 files) = 2048 parameters, trained in float32 (s = 4)."""
    base = "batch_size: 4, generation: {max_new_tokens: 32}"
    plain = _terms(_llm(tmp_path, f"{{{base}, logprob_chunk: 'off'}}", 4096, BIG))
    assert plain == {
        "logits (B·T·V·4, V=131072)": 603_979_776,  # 4·288·131072·4
        "parameters (N·s)": 8192,  # 2048·4
        "gradients (N·s)": 8192,
        "Adam moments (2·N·s)": 16_384,
        "activations (L·B·T·(3h + I)·a)": 8_257_536,  # 4·4·288·(192 + 256)·4
    }
    # auto: c = 2²² // (B·V) = 4194304 // 524288 = 8 completion positions per chunk
    auto = _terms(_llm(tmp_path, f"{{{base}}}", 4096, BIG))
    assert auto.pop("logits (B·c·V·4, c=8, V=131072)") == 16_777_216  # 4·8·131072·4
    chunked = _terms(_llm(tmp_path, f"{{{base}, logprob_chunk: 5}}", 4096, BIG))
    assert chunked.pop("logits (B·c·V·4, c=5, V=131072)") == 10_485_760  # 4·5·131072·4
    # checkpointing: block inputs L·h plus one recomputed block 3h + I
    ckpt = _terms(_llm(tmp_path, f"{{{base}, gradient_checkpointing: true}}", 4096, BIG))
    assert (
        ckpt["activations, checkpointed (B·T·(L·h + 3h + I)·a)"] == 3_244_032
    )  # 4·288·(256 + 192 + 256)·4
    # bf16-mixed: float32 parameters, gradients and moments; bfloat16 activations
    mixed = _terms(_llm(tmp_path, f"{{{base}, precision: bf16-mixed}}", 4096, BIG))
    assert mixed["parameters (N·s)"] == 8192 and mixed["Adam moments (2·N·s)"] == 16_384
    assert mixed["activations (L·B·T·(3h + I)·a)"] == 4_128_768  # 4·4·288·448·2
    both = "gradient_checkpointing: true, precision: bf16-mixed"
    mixed_ckpt = _terms(_llm(tmp_path, f"{{{base}, {both}}}", 4096, BIG))
    assert (
        mixed_ckpt["activations, checkpointed (B·T·(L·h + 3h + I)·a)"] == 1_622_016
    )  # 4·288·704·2


def test_memory_estimate_of_what_does_not_train(tmp_path: Path) -> None:
    """LoRA: the base's parameters only; sgd: no moments; bfloat16 policy: s = a = 2."""
    base = "batch_size: 4, generation: {max_new_tokens: 32}, logprob_chunk: 'off'"
    lora = _terms(_llm(tmp_path, f"{{{base}}}", 4096, BIG, policy=", lora: {r: 4}"))
    assert "gradients (N·s)" not in lora and "Adam moments (2·N·s)" not in lora
    assert lora["parameters (N·s)"] == 8192
    sgd = _terms(_llm(tmp_path, f"{{{base}, optimizer: {{name: sgd}}}}", 4096, BIG))
    assert sgd["gradients (N·s)"] == 8192 and "Adam moments (2·N·s)" not in sgd
    half = _terms(_llm(tmp_path, f"{{{base}}}", 4096, BIG, policy=", dtype: bfloat16"))
    assert half["parameters (N·s)"] == 4096  # 2048·2
    assert half["activations (L·B·T·(3h + I)·a)"] == 4_128_768  # 4·4·288·448·2


def test_parameters_are_read_from_safetensors_headers(tmp_path: Path) -> None:
    """N from the header alone (shapes (3, 4) and (5,): 17), whatever the file's dtype."""
    from safetensors.numpy import save_file

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(CONFIG)
    save_file(
        {"a": np.zeros((3, 4), np.float16), "b": np.zeros(5, np.float32)},
        str(model / "model.safetensors"),
    )
    assert pf.safetensors_parameters(model / "model.safetensors") == 17
    assert pf.model_shape(str(model)).parameters == 17
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    assert pf.safetensors_parameters(tmp_path / "junk.safetensors") is None


def test_memory_refused_above_available_on_the_offending_field(tmp_path: Path) -> None:
    spec = _llm(tmp_path, "{batch_size: 2000000}")
    [(field, message)] = pf.memory_problems(spec, available=16 * 2**30)
    assert field == ("training", "batch_size")
    assert message.startswith("needs at least ")
    assert "but 16.0 GiB is available; lower training.batch_size" in message
    spec = _llm(tmp_path, "{generation: {max_new_tokens: 100000000}}")
    [(field, _)] = pf.memory_problems(spec, available=16 * 2**30)
    assert field == ("training", "generation", "max_new_tokens")
    assert pf.memory_problems(_llm(tmp_path, "{batch_size: 8}"), available=16 * 2**30) == []


def test_memory_of_a_tabular_game() -> None:
    spec = load_spec_text(
        "task: nash\npreference: {name: tabular, game: random, size: 100000}\n"
        "algorithm: {name: nash_md}\n"
    )
    [estimate] = pf.estimate_memory(spec)
    assert estimate.total == 4 * 100000**2 * 8 and estimate.field == ("preference", "size")
    [(field, message)] = pf.memory_problems(spec, available=2**30)
    assert field == ("preference", "size") and "n=100000" in message


def test_available_memory_is_at_most_the_total() -> None:
    available = pf.available_memory()
    if sys.platform.startswith("linux"):
        total = next(
            int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
        assert available is not None and 0 < available <= total


def test_validate_reports_memory_located(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "task: nash\npreference: {name: tabular, game: random, size: 10000000}\n"
        f"algorithm: {{name: nash_md}}\noutput: {{dir: {tmp_path / 'o'}}}\n"
    )
    result = runner.invoke(cli.get_app(plugins=False), ["validate", str(spec)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"{spec}:2:49: preference.size: needs at least 2.8 PiB")
    result = runner.invoke(cli.get_app(plugins=False), ["solve", str(spec)])
    assert result.exit_code == 2 and "preference.size: needs at least" in result.stderr


class Preparer:
    """A torch-named backend that must never train, and a prepare hook that builds the
    policy's config.json (like the quickstart plugin builds its model on first use)."""

    __name__ = "preflight_preparer"
    trained: ClassVar[list[str]] = []

    @nlhf.hookimpl
    def nlhf_register_backends(self, register: Any) -> None:
        register("torch", lambda: self)

    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("f", lambda: None)

    @nlhf.hookimpl
    def nlhf_prepare_spec(self, spec: Any) -> None:
        model = Path(spec.policy.model)
        model.mkdir(parents=True, exist_ok=True)
        (model / "config.json").write_text(CONFIG)

    def train(self, spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
        Preparer.trained.append("train")
        return {}


def test_run_checks_memory_again_once_prepare_built_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NLHF_PLUGINS", "")
    built = plugins_mod.build_plugins(extra=[Preparer()])
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: built)
    Preparer.trained = []
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "spec_version: 1\ntask: nash\n"
        f"policy: {{model: {tmp_path / 'built-later'}}}\n"
        "preference: {name: oracle, function: f}\n"
        "data: {path: p.jsonl}\n"
        "algorithm: {name: nash_md_pg}\n"
        "training: {batch_size: 2000000}\n"
        f"output: {{dir: {tmp_path / 'out'}}}\n"
    )
    # without the model's vocabulary the token ids alone fit: validate cannot refuse it
    assert pf.memory_problems(load_spec_text(spec.read_text(), str(spec)), 10 * 2**30) == []
    result = runner.invoke(cli.get_app(), ["run", str(spec)])
    assert result.exit_code == 2, result.output
    assert f"{spec}:7:24: training.batch_size: needs at least " in result.stderr
    assert "V=32000" in result.stderr
    assert Preparer.trained == []
