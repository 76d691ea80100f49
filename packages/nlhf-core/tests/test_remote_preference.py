"""``preference: remote`` and ``openai_judge`` against a real server process on loopback
(tests/fault_server.py, FastAPI + uvicorn) that answers, fails with 5xx/429, sends
malformed bodies, answers slowly or dies. No request leaves the machine."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from nlhf.errors import InputError
from nlhf.preference.remote import (
    OpenAIJudgeScorer,
    RemotePreferenceError,
    RemoteScorer,
    build_remote_scorer,
    verdict_probability,
)
from nlhf.preference.scorers import build_scorer
from nlhf.spec.models import OpenAIJudgePreference, RemotePreference, RunSpec
from nlhf.testing.servers import ServerProcess, free_port
from pydantic import ValidationError

FAULT_SERVER = Path(__file__).with_name("fault_server.py")
X, A, B = ["x1", "x2", "x3"], ["a1", "a2", "a3"], ["b1", "b2", "b3"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    port = free_port()
    log = tmp_path_factory.mktemp("fault") / "server.log"
    with ServerProcess(
        [sys.executable, str(FAULT_SERVER), str(port)], port, ready_path="/stats", log=log
    ) as proc:
        yield proc


def control(server: Any, **state: Any) -> None:
    base = {"mode": "ok", "count": 0, "delay": 0.0, "status": 503, "p": 0.25, "max_request": 256}
    httpx.post(server.url + "/control", json={**base, **state}, timeout=10).raise_for_status()


def seen(server: Any, path: str) -> int:
    return int(httpx.get(server.url + "/stats", timeout=10).json().get(path, 0))


def remote(server: Any, **over: Any) -> RemoteScorer:
    spec = RemotePreference(url=server.url, backoff=0.01, **over)
    return RemoteScorer(spec)


def judge(server: Any, tmp_path: Path, **over: Any) -> OpenAIJudgeScorer:
    fields = {
        "base_url": server.url + "/v1",
        "model": "m",
        "backoff": 0.01,
        "cache_dir": str(tmp_path),
    }
    return OpenAIJudgeScorer(OpenAIJudgePreference(**{**fields, **over}))


# ------------------------------------------------------------------ remote
def test_remote_scores_in_batches(server: Any) -> None:
    control(server, p=0.25)
    scorer = remote(server, batch_size=2)
    np.testing.assert_array_equal(scorer.prob(X, A, B), [0.25, 0.25, 0.25])
    assert seen(server, "preference") == 2  # 3 comparisons, 2 per request
    assert scorer.has_reward() is False


def test_requests_respect_the_servers_limit(server: Any) -> None:
    control(server, max_request=2)
    scorer = remote(server, batch_size=64)
    np.testing.assert_array_equal(scorer.prob(X, A, B), [0.25] * 3)
    assert seen(server, "preference") == 2  # 3 comparisons, at most 2 per request
    assert seen(server, "model") == 1  # asked once


def test_transient_5xx_is_retried(server: Any) -> None:
    control(server, mode="status", status=503, count=2, delay=0.0)
    scorer = remote(server, retries=3)
    np.testing.assert_array_equal(scorer.prob(X, A, B), [0.25] * 3)
    assert seen(server, "preference") == 3


def test_persistent_5xx_stops_with_a_clear_error(server: Any) -> None:
    control(server, mode="status", status=500, count=100)
    scorer = remote(server, retries=2)
    with pytest.raises(RemotePreferenceError) as err:
        scorer.prob(X, A, B)
    message = str(err.value)
    assert "preference.url" in message and server.url in message
    assert "3 attempts" in message and "HTTP 500" in message
    assert seen(server, "preference") == 3


def test_client_errors_are_not_retried(server: Any) -> None:
    control(server, mode="status", status=401, count=100)
    with pytest.raises(RemotePreferenceError, match="HTTP 401"):
        remote(server, retries=5).prob(X, A, B)
    assert seen(server, "preference") == 1


@pytest.mark.parametrize("mode", ["malformed", "garbage"])
def test_malformed_bodies_are_retried_then_reported(server: Any, mode: str) -> None:
    control(server, mode=mode)
    with pytest.raises(RemotePreferenceError, match="malformed answer"):
        remote(server, retries=1).prob(X, A, B)
    assert seen(server, "preference") == 2


def test_slow_answers_time_out_and_are_retried(server: Any) -> None:
    control(server, mode="slow", delay=2.0, count=1)
    scorer = remote(server, timeout=0.5, retries=2)
    np.testing.assert_array_equal(scorer.prob(X, A, B), [0.25] * 3)
    assert seen(server, "preference") == 2
    control(server, mode="slow", delay=2.0, count=100)
    with pytest.raises(RemotePreferenceError, match="timed out"):
        remote(server, timeout=0.3, retries=1).prob(X, A, B)


def test_a_dead_server_is_retried_then_reported(tmp_path: Path) -> None:
    port = free_port()
    proc = ServerProcess(
        [sys.executable, str(FAULT_SERVER), str(port)], port, ready_path="/stats"
    ).start()
    try:
        scorer = remote(proc, retries=2)
        np.testing.assert_array_equal(scorer.prob(X, A, B), [0.25] * 3)
        proc.kill()
        with pytest.raises(RemotePreferenceError, match="ConnectError") as err:
            scorer.prob(X, A, B)
        assert "3 attempts" in str(err.value)
        proc.start()  # back on the same port: the same scorer works again
        np.testing.assert_array_equal(scorer.prob(X, A, B), [0.25] * 3)
    finally:
        proc.stop()


def test_retry_after_is_honoured(server: Any) -> None:
    control(server, mode="status", status=429, count=1, delay=0.2)
    waits: list[float] = []
    spec = RemotePreference(url=server.url, backoff=5.0, retries=2)
    scorer = RemoteScorer(spec, sleep=waits.append)
    scorer.prob(X, A, B)
    assert waits == [0.2]


def test_a_missing_token_variable_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NLHF_TEST_TOKEN", raising=False)
    spec = RemotePreference(url="http://127.0.0.1:9", token_env="NLHF_TEST_TOKEN")
    with pytest.raises(InputError, match="NLHF_TEST_TOKEN is not set"):
        RemoteScorer(spec)


# ------------------------------------------------------------------ openai judge
def test_judge_averages_both_orders_from_logprobs(server: Any, tmp_path: Path) -> None:
    """The fault server's judge says p(1) = 0.25 whatever the order: a pure position
    bias, which the average of both orders cancels: P = ½(0.25 + 1 − 0.25) = ½."""
    control(server, p=0.25)
    scorer = judge(server, tmp_path)
    np.testing.assert_array_equal(scorer.prob(X, A, B), [0.5] * 3)
    assert seen(server, "chat") == 6  # both orders of 3 comparisons


def test_judge_cache_pays_once(server: Any, tmp_path: Path) -> None:
    control(server, p=0.25)
    judge(server, tmp_path).prob(X, A, B)
    assert seen(server, "chat") == 6
    again = judge(server, tmp_path)  # a new process would open the same file
    np.testing.assert_array_equal(again.prob(X, A, B), [0.5] * 3)
    assert again.http.requests == 0
    assert seen(server, "chat") == 6
    other = judge(server, tmp_path, template="Which? {prompt} {response_1} {response_2}")
    other.prob(X[:1], A[:1], B[:1])
    assert seen(server, "chat") == 8  # another template is another key


def test_judge_text_verdicts_without_logprobs(server: Any, tmp_path: Path) -> None:
    """Text "2" in both orders: p(1|y,y') = 0 and p(1|y',y) = 0, so P = ½(0 + 1 − 0)."""
    control(server, mode="text")
    np.testing.assert_array_equal(judge(server, tmp_path, cache=False).prob(X, A, B), [0.5] * 3)


def test_judge_429_backoff_then_answer(server: Any, tmp_path: Path) -> None:
    control(server, mode="status", status=429, count=2, delay=0.05)
    waits: list[float] = []
    spec = OpenAIJudgePreference(
        base_url=server.url + "/v1", model="m", cache=False, concurrency=1, backoff=3.0
    )
    scorer = OpenAIJudgeScorer(spec, sleep=waits.append)
    np.testing.assert_array_equal(scorer.prob(X[:1], A[:1], B[:1]), [0.5])
    assert waits == [0.05, 0.05]


def test_judge_sends_the_key_from_the_environment_only(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NLHF_TEST_KEY", "sk-test-123")
    scorer = judge(server, tmp_path, api_key_env="NLHF_TEST_KEY")
    assert scorer.http.client.headers["authorization"] == "Bearer sk-test-123"
    dumped = scorer.spec.model_dump_json()
    assert "sk-test-123" not in dumped and "NLHF_TEST_KEY" in dumped


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (
            {
                "message": {"content": "1"},
                "logprobs": {
                    "content": [
                        {
                            "top_logprobs": [
                                {"token": "1", "logprob": math.log(0.6)},
                                {"token": "2", "logprob": math.log(0.2)},
                            ]
                        }
                    ]
                },
            },
            0.75,
        ),  # renormalised over the two answers: 0.6 / (0.6 + 0.2)
        (
            {
                "message": {"content": "1"},
                "logprobs": {
                    "content": [
                        {
                            "top_logprobs": [
                                {"token": " 1", "logprob": math.log(0.3)},
                                {"token": "1", "logprob": math.log(0.3)},
                                {"token": "2", "logprob": math.log(0.2)},
                            ]
                        }
                    ]
                },
            },
            0.6,
        ),  # an exact match "1" wins over " 1"
        (
            {
                "message": {"content": "1"},
                "logprobs": {
                    "content": [
                        {
                            "top_logprobs": [
                                {"token": " 1", "logprob": math.log(0.3)},
                                {"token": "1 ", "logprob": math.log(0.3)},
                                {"token": " 2", "logprob": math.log(0.6)},
                            ]
                        }
                    ]
                },
            },
            0.5,
        ),  # no exact match: the stripped ones merge, 0.6 / (0.6 + 0.6)
        ({"message": {"content": " 2."}, "logprobs": None}, 0.0),
        (
            {
                "message": {"content": "1"},
                "logprobs": {"content": [{"top_logprobs": [{"token": "1", "logprob": -0.1}]}]},
            },
            1.0,
        ),  # one answer missing: the text
        ({"message": {"content": "neither"}}, 0.5),
    ],
)
def test_verdict_probability(choice: dict[str, Any], expected: float) -> None:
    assert verdict_probability(choice, ("1", "2")) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------ spec and dispatch
def test_spec_rejects_bad_urls_and_answers() -> None:
    with pytest.raises(ValidationError, match="http:// or https://"):
        RemotePreference(url="127.0.0.1:8000")
    with pytest.raises(ValidationError, match="different, non-blank"):
        OpenAIJudgePreference(base_url="http://h/v1", model="m", answers=("1", " 1"))
    with pytest.raises(ValidationError, match="placeholder"):
        OpenAIJudgePreference(base_url="http://h/v1", model="m", template="{prompt}")


def test_every_backend_builds_the_network_kinds() -> None:
    spec = RunSpec.model_validate(
        {
            "policy": {"model": "p"},
            "data": {"path": "d"},
            "algorithm": {"name": "nash_md_pg"},
            "preference": {"name": "remote", "url": "http://127.0.0.1:9/"},
        }
    )
    assert spec.preference.url == "http://127.0.0.1:9"
    scorer = build_scorer(spec.preference, {}, backend="any")
    assert isinstance(scorer, RemoteScorer)
    assert isinstance(build_remote_scorer(spec.preference), RemoteScorer)


def test_an_unset_key_variable_is_a_located_spec_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nlhf.errors import SpecError
    from nlhf.spec.load import load_spec
    from nlhf.spec.preflight import check_preflight

    monkeypatch.delenv("NLHF_TEST_UNSET_KEY", raising=False)
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"policy: {{model: {tmp_path}}}\n"
        f"data: {{path: {tmp_path / 'p.jsonl'}}}\n"
        "algorithm: {name: nash_md_pg}\n"
        "preference:\n"
        "  name: openai_judge\n"
        "  base_url: http://127.0.0.1:9/v1\n"
        "  model: m\n"
        "  api_key_env: NLHF_TEST_UNSET_KEY\n"
        f"output: {{dir: {tmp_path / 'out'}}}\n"
    )
    with pytest.raises(SpecError) as err:
        check_preflight(load_spec(path), path)
    assert any(
        f"{path}:8:" in issue
        and "preference.api_key_env" in issue
        and "NLHF_TEST_UNSET_KEY" in issue
        for issue in err.value.issues
    ), err.value.issues
    monkeypatch.setenv("NLHF_TEST_UNSET_KEY", "k")
    check_preflight(load_spec(path), path)
