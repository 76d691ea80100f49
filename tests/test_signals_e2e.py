"""Interrupted runs, end to end through ``nlhf run`` in a child process, on torch and jax:
SIGTERM finishes the step, checkpoints, says where and exits 143; SIGKILL between steps
and SIGKILL in the middle of a checkpoint write leave only complete checkpoints; and in
every case ``--resume`` ends exactly where the uninterrupted run ends (metrics other than
timings, and the final weights, bit for bit)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from nlhf.runio import list_checkpoints, read_metrics

pytestmark = pytest.mark.slow

TIMING = {"tokens_per_s", "step_seconds", "generation_seconds"}
STEPS = 6
BACKENDS = ["torch", "jax"]


@pytest.fixture(scope="module")
def spec_file(tiny_ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("signals")
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["a b", "c d e", "f"]))
    spec = {
        "task": "nash",
        "seed": 1,
        "policy": {"model": str(tiny_ckpts["llama"]), "chat_template": False},
        "preference": {"name": "bradley_terry_reward", "path": str(tiny_ckpts["llama_rm"])},
        "data": {"path": str(data)},
        "algorithm": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1},
        "training": {
            "steps": STEPS,
            "batch_size": 2,
            "lr": 0.05,
            "optimizer": {"name": "sgd"},
            "generation": {"max_new_tokens": 4},
        },
        "output": {"dir": str(root / "unused"), "checkpoint_every": 1},
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cmd(spec: Path, backend: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nlhf.cli",
        "run",
        str(spec),
        "--backend",
        backend,
        "--output",
        str(out),
        *extra,
    ]


def _env(spec: Path) -> dict[str, str]:
    """The children's environment. Jax children share one persistent compilation cache next
    to ``spec``: the interrupted and resumed runs load the programs the uninterrupted run
    compiled instead of compiling them again (XLA keys an entry by the program, so a run
    that traces a different program compiles it anew); torch ignores it."""
    return {
        **os.environ,
        "NLHF_FAST_DECODE": os.environ.get("NLHF_FAST_DECODE", "1"),
        "JAX_COMPILATION_CACHE_DIR": str(spec.parent / "jax-compilation-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def _weights(out: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(out / "checkpoints" / f"step-{STEPS}" / "model.safetensors")


def _strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.fixture(scope="module")
def straight(spec_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    runs = {}
    for backend in BACKENDS:
        out = tmp_path_factory.mktemp(f"straight-{backend}") / "run"
        subprocess.run(_cmd(spec_file, backend, out), check=True, env=_env(spec_file), timeout=600)
        runs[backend] = out
    return runs


def _start_and_wait(cmd: list[str], out: Path, steps: int) -> subprocess.Popen[str]:
    """Start ``cmd`` (``nlhf run SPEC …``) and wait until ``steps`` records are in its
    metrics.jsonl."""
    env = _env(Path(cmd[4]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if (out / "metrics.jsonl").is_file() and len(read_metrics(out)) >= steps:
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the run made no progress in 300 s")


def _resume_and_compare(spec: Path, backend: str, out: Path, straight: Path) -> None:
    subprocess.run(_cmd(spec, backend, out, "--resume"), check=True, env=_env(spec), timeout=600)
    assert _strip(read_metrics(out)) == _strip(read_metrics(straight))
    want = _weights(straight)
    got = _weights(out)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_checkpoints_exits_143_and_resumes_exactly(
    backend: str, spec_file: Path, straight: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _start_and_wait(_cmd(spec_file, backend, out), out, 2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM" in stderr and "checkpoint" in stderr and "Traceback" not in stderr
    steps = [s for s, _ in list_checkpoints(out)]
    assert steps and steps[-1] < STEPS
    assert max(r["step"] for r in read_metrics(out)) == steps[-1]
    _resume_and_compare(spec_file, backend, out, straight[backend])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_between_steps_resumes_exactly(
    backend: str, spec_file: Path, straight: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _start_and_wait(_cmd(spec_file, backend, out), out, 3)
    proc.kill()
    proc.communicate(timeout=60)
    assert list_checkpoints(out)
    _resume_and_compare(spec_file, backend, out, straight[backend])


KILL_IN_CHECKPOINT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import nlhf.runio as runio

    original = runio.write_manifest

    def killed(directory):
        if Path(directory).name.startswith(".step-3."):  # step 3's files are written
            os.kill(os.getpid(), signal.SIGKILL)
        return original(directory)

    runio.write_manifest = killed
    from nlhf.cli import main
    sys.argv = ["nlhf", *sys.argv[1:]]
    main()
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_during_a_checkpoint_write_resumes_exactly(
    backend: str, spec_file: Path, straight: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = _cmd(spec_file, backend, out)[3:]  # after "python -m nlhf.cli"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_IN_CHECKPOINT, *argv],
        env=_env(spec_file),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [s for s, _ in list_checkpoints(out)] == [1, 2]  # no half-written step-3
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers  # the killed temp dir is there until the next start cleans it
    _resume_and_compare(spec_file, backend, out, straight[backend])
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- DeepSpeed ZeRO-2, 2 ranks
DS = ("--nproc", "2", "--set", "distributed={engine: deepspeed, zero_stage: 2}")

SITECUSTOMIZE = textwrap.dedent(
    """
    import os, signal
    from pathlib import Path

    if os.environ.get("NLHF_TEST_KILL_AT") and os.environ.get("RANK") == "0":
        import nlhf.runio as runio

        original = runio.write_manifest

        def killed(directory):
            if Path(directory).name.startswith(os.environ["NLHF_TEST_KILL_AT"]):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(directory)

        runio.write_manifest = killed
    """
)


def _kill_tree(pid: int) -> None:
    import psutil

    parent = psutil.Process(pid)
    for proc in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


@pytest.fixture(scope="module")
def straight_deepspeed(spec_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("straight-ds") / "run"
    subprocess.run(_cmd(spec_file, "torch", out, *DS), check=True, env=_env(spec_file), timeout=900)
    return out


def _resume_deepspeed(spec: Path, out: Path, straight: Path) -> None:
    cmd = _cmd(spec, "torch", out, *DS, "--resume")
    subprocess.run(cmd, check=True, env=_env(spec), timeout=900)
    assert _strip(read_metrics(out)) == _strip(read_metrics(straight))
    for name, value in _weights(straight).items():
        np.testing.assert_array_equal(_weights(out)[name], value, err_msg=name)


def test_deepspeed_sigterm_stops_every_rank_at_one_checkpoint_and_resumes_exactly(
    spec_file: Path, straight_deepspeed: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _start_and_wait(_cmd(spec_file, "torch", out, *DS), out, 2)
    proc.send_signal(signal.SIGTERM)  # to `nlhf run`, which relays one SIGTERM to the ranks
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.count("SIGTERM received") == 2  # each rank, once
    assert "stopped after step" in stderr
    _resume_deepspeed(spec_file, out, straight_deepspeed)


def test_deepspeed_sigkill_between_steps_resumes_exactly(
    spec_file: Path, straight_deepspeed: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _start_and_wait(_cmd(spec_file, "torch", out, *DS), out, 3)
    _kill_tree(proc.pid)
    proc.communicate(timeout=60)
    assert list_checkpoints(out)
    _resume_deepspeed(spec_file, out, straight_deepspeed)


def test_deepspeed_sigkill_during_a_checkpoint_write_resumes_exactly(
    spec_file: Path, straight_deepspeed: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**_env(spec_file), "NLHF_TEST_KILL_AT": ".step-3.", "PYTHONPATH": str(site)}
    out = tmp_path / "run"
    proc = subprocess.run(
        _cmd(spec_file, "torch", out, *DS), env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode != 0
    assert [s for s, _ in list_checkpoints(out)] == [1, 2]  # no half-written step-3
    _resume_deepspeed(spec_file, out, straight_deepspeed)
