"""Multi-node launch (docs/distributed.md, "Several nodes"): ``nlhf run --nnodes N
--node-rank R --master-addr H --master-port P`` (torch: torch's elastic launcher, static
rendezvous, DeepSpeed) and ``distributed: {engine: jax, coordinator_address,
num_processes, process_id}`` (``jax.distributed.initialize``).

Fast tests: every bad flag or field is one located error (no traceback) and the launch
command a node runs. Slow tests: two "nodes" of one process each on 127.0.0.1 — two
``nlhf run`` processes, node-rank 0 and 1, ports chosen here, timeouts so a hang fails —
give the losses and final weights of the single-process run of the same global batch
(model-scope tolerances), and only node 0 writes files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from nlhf import cli
from nlhf.errors import InputError, SpecError
from nlhf.multinode import check_nodes
from nlhf.runio import read_metrics
from nlhf.spec import load_spec
from nlhf.spec.models import coordinator_problem
from nlhf.testing.tolerances import assert_close, tolerance
from typer.testing import CliRunner

runner = CliRunner()
NLHF = Path(sys.executable).with_name("nlhf")
CORPUS = ["Pick a fruit: apple banana cherry 1 2", "Name a colour: red green blue 1 2"] * 3
PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]
TABULAR = """\
task: nash
preference: {name: tabular, matrix: [[0.5, 0.9], [0.1, 0.5]]}
reference: {probs: [0.5, 0.5]}
algorithm: {name: nash_md, tau: 0.1, steps: 10}
"""


def _raw(root: Path, model: str, distributed: dict[str, Any] | None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "seed": 5,
        "policy": {"model": model},
        "preference": {"name": "llm_judge", "model": model, "batch_size": 4, "max_length": 64},
        "data": {"path": str(root / "prompts.jsonl")},
        "algorithm": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1},
        "training": {
            "steps": 2,
            "batch_size": 4,
            "lr": 30.0,  # updates well above the model-scope tolerance
            "optimizer": {"name": "sgd"},
            "generation": {"max_new_tokens": 4},
        },
        "output": {"dir": str(root / "out")},
    }
    if distributed is not None:
        raw["distributed"] = distributed
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return raw


def _write(root: Path, name: str, raw: dict[str, Any]) -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _deepspeed_spec(root: Path, model: str = "unused") -> Path:
    return _write(root, "ds.yaml", _raw(root, model, {"engine": "deepspeed", "zero_stage": 2}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _app() -> Any:
    return cli.get_app(plugins=False)


# ------------------------------------------------------------------------ flags
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--nnodes", "2", "--node-rank", "2", "--master-addr", "127.0.0.1"],
            "--node-rank 2: out of range for --nnodes 2; give 0 .. 1",
        ),
        (
            ["--nnodes", "2", "--node-rank", "-1", "--master-addr", "127.0.0.1"],
            "--node-rank -1: out of range for --nnodes 2",
        ),
        (["--nnodes", "0"], "--nnodes 0: must be >= 1"),
        (
            ["--nnodes", "2", "--node-rank", "1"],
            "--nnodes 2: needs --master-addr, the address of node 0",
        ),
        (
            ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", "http"],
            "--master-port 'http': not an integer; give a free TCP port on node 0 in 1..65535",
        ),
        (
            ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", "65536"],
            "--master-port 65536: out of range; give a free TCP port on node 0 in 1..65535",
        ),
        (
            ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", "0"],
            "--master-port 0: out of range",
        ),
        (["--nnodes", "2", "--master-addr", " "], "--master-addr ' ': not a host name"),
        (["--master-port", "1234"], "--master-port 1234: needs --master-addr"),
    ],
)
def test_bad_multinode_flags_are_one_clear_error(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    spec = _deepspeed_spec(tmp_path)
    result = runner.invoke(_app(), ["run", str(spec), "-b", "torch", *flags])
    assert result.exit_code == 1, result.output
    assert f"error: {message}" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # refused before the output dir is claimed


def test_check_nodes_accepts_the_documented_forms() -> None:
    nodes = check_nodes(4, 3, "node-a.cluster", "6000")
    assert (nodes.count, nodes.rank, nodes.master_addr, nodes.master_port) == (
        4,
        3,
        "node-a.cluster",
        6000,
    )
    assert nodes.world_size(8) == 32 and not nodes.owns_outputs
    default = check_nodes(2, 0, "10.0.0.1")
    assert default.master_port == 29500 and default.owns_outputs  # torch's default port
    assert not check_nodes().explicit  # one machine: the launcher's own rendezvous
    with pytest.raises(InputError):
        check_nodes(2, 0, "10.0.0.1", 65536)


def test_backend_without_multinode_launch(tmp_path: Path) -> None:
    spec = tmp_path / "tab.yaml"
    spec.write_text(TABULAR)
    args = ["run", str(spec), "--nnodes", "2", "--master-addr", "127.0.0.1"]
    result = runner.invoke(_app(), [*args, "-o", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output
    assert "error: --nnodes 2: backend 'numpy' has no multi-node launch; drop --nnodes" in (
        result.output
    )
    # jax joins hosts from its spec instead: the message says how
    llm = _write(tmp_path, "jax.yaml", _raw(tmp_path, "unused", {"engine": "jax"}))
    result = runner.invoke(_app(), ["run", str(llm), "-b", "jax", *args[2:]])
    assert result.exit_code == 1, result.output
    assert "backend 'jax' has no multi-node launch" in result.output
    assert "distributed.coordinator_address, num_processes, process_id" in result.output


def test_world_size_of_all_nodes_must_divide_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_run_launcher", _no_launch)
    spec = _deepspeed_spec(tmp_path)
    flags = ["--nnodes", "3", "--node-rank", "1", "--master-addr", "127.0.0.1"]
    result = runner.invoke(_app(), ["run", str(spec), "-b", "torch", *flags])
    assert result.exit_code == 1, result.output
    assert "training.batch_size = 4 is not divisible by world size 3" in result.output


def _no_launch(argv: list[str], env: dict[str, str]) -> int:
    raise AssertionError(f"launched {argv}")


def test_each_node_launches_its_share_through_the_static_rendezvous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    seen: list[tuple[list[str], dict[str, str]]] = []

    def fake_launcher(argv: list[str], env: dict[str, str]) -> int:
        seen.append((argv, env))
        return 0

    monkeypatch.setattr(cli, "_run_launcher", fake_launcher)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = _deepspeed_spec(tmp_path)
    for rank in (1, 0):
        out = tmp_path / f"node{rank}"
        args = ["run", str(spec), "-b", "torch", "--nproc", "2", "--nnodes", "2"]
        args += ["--node-rank", str(rank), "--master-addr", "10.1.2.3", "--master-port", "6000"]
        args += ["--set", "seed=9", "-o", str(out)]
        result = runner.invoke(_app(), args)
        assert result.exit_code == 0, result.output
        argv, env = seen[-1]
        assert argv == [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node-rank={rank}",
            "--nproc-per-node=2",
            "--rdzv-backend=static",
            "--master-addr=10.1.2.3",
            "--master-port=6000",
            "-m",
            "nlhf_torch.launch",
            str(spec),
            "--set",
            "seed=9",
            "--output",
            str(out),
        ]
        assert env["DS_ACCELERATOR"] == "cpu"
        assert "node " + str(rank) + " of 2, 2 processes here, 4 in all" in result.output
        if rank == 1:  # the other node neither claims nor creates the output directory
            assert not out.exists()
            assert "node 1 is done; node 0 writes the outputs" in result.output
        else:
            assert f"outputs: {out}" in result.output
    # a failing node says which one
    monkeypatch.setattr(cli, "_run_launcher", lambda argv, env: 3)
    flags = ["--nnodes", "2", "--node-rank", "1", "--master-addr", "10.1.2.3"]
    result = runner.invoke(_app(), ["run", str(spec), "-b", "torch", *flags])
    assert result.exit_code == 3
    assert "error: node 1 of 2: the run failed (exit 3)" in result.output


# ------------------------------------------------------------------ jax spec fields
def _jax_spec(tmp_path: Path, **fields: Any) -> Path:
    dist = {"engine": "jax", "mesh": {"data": 2}, **fields}
    return _write(tmp_path, "jax.yaml", _raw(tmp_path, "unused", dist))


def _spec_issues(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value.issues


def test_jax_hosts_fields_come_together(tmp_path: Path) -> None:
    issues = _spec_issues(_jax_spec(tmp_path, num_processes=2))
    for name in ("coordinator_address", "process_id"):
        assert any(
            i.startswith(f"{tmp_path / 'jax.yaml'}:") and f"distributed.{name}: needed with " in i
            for i in issues
        ), issues
    assert len(issues) == 2


def test_jax_hosts_fields_are_checked_and_located(tmp_path: Path) -> None:
    path = _jax_spec(tmp_path, coordinator_address="node-a:70000", num_processes=2, process_id=2)
    issues = _spec_issues(path)
    text = path.read_text().splitlines()
    line = {
        k: 1 + next(i for i, t in enumerate(text) if f"{k}:" in t)
        for k in ("coordinator_address", "process_id")
    }
    assert f"{path}:{line['coordinator_address']}:" in issues[0]
    assert (
        "distributed.coordinator_address: port '70000' of 'node-a:70000' is not an integer in 1..65535"
        in issues[0]
    )
    assert f"{path}:{line['process_id']}:" in issues[1]
    assert "distributed.process_id: 2 is out of range for num_processes 2; give 0 .. 1" in issues[1]
    spec = load_spec(
        _jax_spec(tmp_path, coordinator_address="[fd00::1]:1234", num_processes=2, process_id=1)
    )
    assert spec.distributed.multihost and spec.distributed.initialization_timeout == 300


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("10.0.0.1:1234", True),
        ("node-a.cluster:65535", True),
        ("[fd00::1]:1", True),
        ("10.0.0.1", False),  # no port
        (":1234", False),  # no host
        ("fd00::1:1234", False),  # IPv6 without brackets is ambiguous
        ("10.0.0.1:0", False),
        ("10.0.0.1:port", False),
        ("node a:1234", False),
    ],
)
def test_coordinator_address_forms(address: str, ok: bool) -> None:
    assert (coordinator_problem(address) is None) is ok


def test_multihost_jax_covers_llm_nash_only(tmp_path: Path) -> None:
    from nlhf_jax.multihost import train

    path = _jax_spec(tmp_path, coordinator_address="127.0.0.1:1", num_processes=2, process_id=1)
    spec = load_spec(path)
    spec.task = "preference_model"
    with pytest.raises(InputError, match="multi-host jax runs cover LLM `task: nash`, not task"):
        train(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_jax_initialize_after_a_computation_is_refused(tmp_path: Path) -> None:
    """In a fresh process: jax computes first, then the multi-host spec cannot join."""
    code = (
        "import jax.numpy as jnp, sys\n"
        "from nlhf.spec import load_spec\n"
        "from nlhf_jax.multihost import initialize\n"
        "jnp.zeros(1).block_until_ready()\n"
        "try:\n"
        "    initialize(load_spec(sys.argv[1]).distributed)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    path = _jax_spec(tmp_path, coordinator_address="127.0.0.1:1", num_processes=2, process_id=1)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert "NLHFError" in proc.stdout, proc.stdout + proc.stderr
    assert "jax has already run a computation in this process" in proc.stdout


# ------------------------------------------------------------------ two "nodes"
def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen[str]], logs: list[Path], timeout: float) -> None:
    """Wait for every node; past ``timeout`` stop them (SIGTERM twice: ``nlhf run`` relays
    the first to its launcher and kills the launcher's group on the second) and fail."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            time.sleep(2)
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    time.sleep(1)
                    p.kill()
            break
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
    assert all(p.returncode == 0 for p in procs), tails


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _tiny_model(root: Path) -> Path:
    from nlhf_torch.tiny import build_tiny_model

    return build_tiny_model(root / "policy", "llama", corpus=CORPUS, vocab_size=300, seed=2)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    env.update(OMP_NUM_THREADS="1", NLHF_FAST_DECODE="0")
    return env


def _weights(run: Path, step: int) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(run / "checkpoints" / f"step-{step}" / "model.safetensors")


def _compare(single: Path, multi: Path, initial: dict[str, np.ndarray]) -> None:
    want = read_metrics(single)
    got = read_metrics(multi)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2]
    for key in ("loss", "grad_norm", "len_y"):
        assert_close([r[key] for r in got], [r[key] for r in want], "float32", key, scope="model")
    a, b = _weights(single, 2), _weights(multi, 2)
    assert sorted(a) == sorted(b)
    moved = 0.0
    for name, value in a.items():
        assert_close(b[name], value, "float32", name, scope="model")
        if name in initial:
            moved = max(moved, float(np.abs(value - initial[name]).max()))
    dloss = max(abs(x["loss"] - y["loss"]) for x, y in zip(got, want, strict=True))
    dweight = max(float(np.abs(b[k] - a[k]).max()) for k in a)
    print(f"{multi.name}: max |Δloss| {dloss}, max |Δweight| {dweight}, largest move {moved}")
    # training moved the weights far beyond the tolerance: the comparison has teeth
    assert moved > 10 * tolerance("float32", "model").atol, moved


@pytest.mark.slow
def test_torch_two_nodes_match_single_process(tmp_path: Path) -> None:
    """Two `nlhf run --nnodes 2` (one DeepSpeed ZeRO-2 process each, static rendezvous on
    127.0.0.1) give the losses and weights of the single-process run; node 1 writes no
    file (its own -o stays absent; its DeepSpeed optimizer shard goes into node 0's
    checkpoint, the shared file system of docs/distributed.md)."""
    from nlhf_torch.trainer import train_nash
    from safetensors.numpy import load_file

    model = _tiny_model(tmp_path)
    initial = load_file(model / "model.safetensors")
    spec = _deepspeed_spec(tmp_path, str(model))
    single_raw = _raw(tmp_path, str(model), None)
    train_nash(load_spec(_write(tmp_path, "single.yaml", single_raw)), tmp_path / "single")

    port = _free_port()
    outs = [tmp_path / "node0", tmp_path / "node1"]
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    procs = []
    for rank in (0, 1):
        cmd = [str(NLHF), "run", str(spec), "-b", "torch", "--nnodes", "2"]
        cmd += ["--node-rank", str(rank), "--master-addr", "127.0.0.1"]
        cmd += ["--master-port", str(port), "-o", str(outs[rank])]
        procs.append(_start(cmd, logs[rank], _env()))
    _finish(procs, logs, timeout=600)

    assert _files(outs[1]) == []
    _compare(tmp_path / "single", outs[0], initial)
    assert all(r["world_size"] == 2 for r in read_metrics(outs[0]))
    summary = json.loads((outs[0] / "summary.json").read_text())
    assert summary["distributed"] == {"engine": "deepspeed", "zero_stage": 2, "world_size": 2}
    shards = outs[0] / "checkpoints" / "step-2" / "deepspeed" / "step-2"
    assert {p.name for p in shards.glob("zero_pp_rank_*_optim_states.pt")} == {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",  # written by node 1's rank
    }


@pytest.mark.slow
def test_jax_two_processes_match_single_process(tmp_path: Path) -> None:
    """Two `nlhf run` jax processes joined by `distributed.coordinator_address` (gloo CPU
    collectives, one device each, mesh {fsdp: 2} over both: the batch and the MLP and
    embedding weights split between the processes, gathered for the checkpoint) give the
    losses and weights of the one-process, one-device run; process 1 writes no file."""
    from safetensors.numpy import load_file

    model = _tiny_model(tmp_path)
    initial = load_file(model / "model.safetensors")
    env = _env()
    single = _write(tmp_path, "single.yaml", _raw(tmp_path, str(model), None))
    cmd = [str(NLHF), "run", str(single), "-b", "jax", "-o", str(tmp_path / "single")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    dist = {
        "engine": "jax",
        "mesh": {"fsdp": 2},
        "rules": [
            ["(q|k|v|gate|up)_proj/kernel", ["fsdp", None]],
            ["(o|down)_proj/kernel", [None, "fsdp"]],
            ["embed_tokens", [None, "fsdp"]],
        ],
        "coordinator_address": f"127.0.0.1:{_free_port()}",
        "num_processes": 2,
        "process_id": 0,
        "initialization_timeout": 120,
    }
    spec = _write(tmp_path, "hosts.yaml", _raw(tmp_path, str(model), dist))
    outs = [tmp_path / "proc0", tmp_path / "proc1"]
    logs = [tmp_path / "proc0.log", tmp_path / "proc1.log"]
    procs = []
    for rank in (0, 1):
        cmd = [str(NLHF), "run", str(spec), "-b", "jax", "-o", str(outs[rank])]
        cmd += ["--set", f"distributed.process_id={rank}"]
        procs.append(_start(cmd, logs[rank], env))
    _finish(procs, logs, timeout=600)

    assert _files(outs[1]) == []
    assert "process 0 writes the outputs" in logs[1].read_text()
    _compare(tmp_path / "single", outs[0], initial)
    summary = json.loads((outs[0] / "summary.json").read_text())
    assert summary["distributed"] == {"engine": "jax", "mesh": {"fsdp": 2}}


@pytest.mark.slow
def test_jax_process_without_coordinator_stops_with_a_clear_error(tmp_path: Path) -> None:
    """Process 1 of 2 with nobody at the coordinator address: one error line, exit 1,
    after ``initialization_timeout`` seconds instead of a hang or jax's abort."""
    fields = {"coordinator_address": f"127.0.0.1:{_free_port()}", "num_processes": 2}
    path = _jax_spec(tmp_path, **fields, process_id=1, initialization_timeout=1)
    cmd = [str(NLHF), "run", str(path), "-b", "jax", "-o", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "error: distributed: coordinator_address 127.0.0.1:" in output
    assert "no coordinator answered" in output and "initialization_timeout = 1 s" in output
    assert "Traceback" not in output
    assert not (tmp_path / "out").exists()
