"""The network preference kinds on the jax backend: its preference builder returns core's
scorers (the same HTTP client on every backend), which score against a real server process
on loopback; the jax capabilities accept both kinds."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import numpy as np
from nlhf.preference.remote import OpenAIJudgeScorer, RemoteScorer
from nlhf.spec.capabilities import check_capabilities
from nlhf.spec.models import RunSpec
from nlhf.testing.servers import ServerProcess, free_port
from nlhf_jax.plugin import CAPABILITIES
from nlhf_jax.preference.scorers import build_scorer

FAULT_SERVER = Path(__file__).parents[2] / "nlhf-core" / "tests" / "fault_server.py"


def _spec(preference: dict[str, object]) -> RunSpec:
    return RunSpec.model_validate(
        {
            "policy": {"model": "p"},
            "data": {"path": "d"},
            "algorithm": {"name": "nash_md_pg"},
            "preference": preference,
        }
    )


def test_jax_scores_remote_and_openai_judge_over_loopback(tmp_path: Path) -> None:
    port = free_port()
    with ServerProcess(
        [sys.executable, str(FAULT_SERVER), str(port)], port, ready_path="/stats"
    ) as server:
        httpx.post(server.url + "/control", json={"mode": "ok", "p": 0.25}, timeout=10)
        remote = build_scorer(_spec({"name": "remote", "url": server.url}).preference)
        assert isinstance(remote, RemoteScorer)
        np.testing.assert_array_equal(remote.prob(["x"], ["a"], ["b"]), [0.25])
        judge = build_scorer(
            _spec(
                {
                    "name": "openai_judge",
                    "base_url": server.url + "/v1",
                    "model": "m",
                    "cache_dir": str(tmp_path),
                }
            ).preference
        )
        assert isinstance(judge, OpenAIJudgeScorer)
        np.testing.assert_array_equal(judge.prob(["x"], ["a"], ["b"]), [0.5])  # bias cancels


def test_jax_capabilities_accept_both_kinds() -> None:
    for preference in (
        {"name": "remote", "url": "http://127.0.0.1:9"},
        {"name": "openai_judge", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
    ):
        problems = check_capabilities(_spec(preference), CAPABILITIES, "jax")
        assert not [p for p in problems if "preference" in str(p)], problems
