"""End to end over loopback: a Nash-MD-PG run whose preference is served by ``nlhf serve``
(``preference: remote``) equals the same run with the model in process
(``preference: pairwise_model``); the server killed mid-run stops the run with a clear
error after its retries and a checkpoint of the last finished step (the run has no
periodic ones), and ``--resume`` continues once the server is back, ending where the
uninterrupted run ends."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from nlhf.preference.remote import RemotePreferenceError
from nlhf.runio import list_checkpoints, read_metrics
from nlhf.spec import RunSpec
from nlhf.testing.servers import ServerProcess, free_port
from nlhf.testing.tolerances import assert_close
from nlhf_torch.trainer import train_nash
from safetensors.torch import load_file

NLHF = str(Path(sys.executable).with_name("nlhf"))
PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]
COMPARED = ("loss", "preference", "kl", "len_y", "len_y_prime", "grad_norm")

pytestmark = pytest.mark.slow  # real server processes and torch training


def spec_for(
    policy: Path,
    data: Path,
    out: Path,
    preference: dict[str, Any],
    checkpoint_every: int | None = 1,
) -> RunSpec:
    return RunSpec.model_validate(
        {
            "seed": 5,
            "policy": {"model": str(policy)},
            "preference": preference,
            "data": {"path": str(data)},
            "algorithm": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1},
            "training": {
                "steps": 4,
                "batch_size": 2,
                "lr": 1e-2,
                "generation": {"max_new_tokens": 4},
            },
            "output": {"dir": str(out), "checkpoint_every": checkpoint_every},
        }
    )


@pytest.fixture(scope="module")
def setup(tiny_ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("serve_nash")
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    judge = tiny_ckpts["qwen2"]
    local = root / "local"
    train_nash(
        spec_for(tiny_ckpts["llama"], data, local, {"name": "pairwise_model", "path": str(judge)}),
        local,
    )
    return {
        "root": root,
        "data": data,
        "judge": judge,
        "policy": tiny_ckpts["llama"],
        "local": local,
    }


def _compare(run: Path, local: Path) -> None:
    served, expected = read_metrics(run), read_metrics(local)
    assert [r["step"] for r in served] == [r["step"] for r in expected] == [1, 2, 3, 4]
    for key in COMPARED:
        assert_close(
            [r[key] for r in served], [r[key] for r in expected], "float32", key, scope="model"
        )
    (_, last), (_, last_local) = list_checkpoints(run)[-1], list_checkpoints(local)[-1]
    weights, weights_local = (
        load_file(last / "model.safetensors"),
        load_file(last_local / "model.safetensors"),
    )
    for name, value in weights_local.items():
        assert_close(weights[name].numpy(), value.numpy(), "float32", name, scope="model")


def test_served_preference_equals_in_process(setup: dict[str, Any]) -> None:
    port = free_port()
    root = setup["root"]
    with ServerProcess(
        [NLHF, "serve", str(setup["judge"]), "--port", str(port)], port, log=root / "a.log"
    ) as server:
        out = root / "served"
        spec = spec_for(setup["policy"], setup["data"], out, {"name": "remote", "url": server.url})
        train_nash(spec, out)
    _compare(out, setup["local"])


def test_killed_server_stops_the_run_and_resume_continues(setup: dict[str, Any]) -> None:
    port = free_port()
    root = setup["root"]
    out = root / "killed"
    server = ServerProcess(
        [NLHF, "serve", str(setup["judge"]), "--port", str(port)], port, log=root / "b.log"
    ).start()
    preference = {"name": "remote", "url": server.url, "retries": 2, "backoff": 0.05}
    spec = spec_for(setup["policy"], setup["data"], out, preference, checkpoint_every=None)

    def logged_steps() -> int:
        metrics = out / "metrics.jsonl"
        return len(metrics.read_text().splitlines()) if metrics.is_file() else 0

    def kill_after_step_two() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and logged_steps() < 2:
            time.sleep(0.05)
        server.kill()

    watcher = threading.Thread(target=kill_after_step_two, daemon=True)
    watcher.start()
    try:
        with pytest.raises(RemotePreferenceError) as err:
            train_nash(spec, out)
        watcher.join(timeout=60)
        assert "3 attempts" in str(err.value) and server.url in str(err.value)
        saved = [step for step, _ in list_checkpoints(out)]  # the outage's checkpoint only
        assert len(saved) == 1 and 2 <= saved[0] < 4, saved
        assert f"holds step {saved[0]}" in str(err.value) and "--resume" in str(err.value)
        server.start()  # back on the same port
        train_nash(spec, out, resume=True)
    finally:
        server.stop()
    _compare(out, setup["local"])
