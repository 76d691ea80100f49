"""``nlhf serve`` as a real process on 127.0.0.1 (a random free port) serving the tiny
checkpoints: answers equal the in-process models (the same forward at model scope),
batching across concurrent clients, limits, the token, and both network preference kinds
(``remote``, ``openai_judge``) against it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from nlhf.preference.remote import (
    OpenAIJudgeScorer,
    RemotePreferenceError,
    RemoteScorer,
)
from nlhf.preference.scorers import reward_texts
from nlhf.spec.models import LLMJudgePreference, OpenAIJudgePreference, RemotePreference
from nlhf.testing.servers import ServerProcess, free_port
from nlhf.testing.tolerances import assert_close
from nlhf_torch.preference.scorers import load_judge
from nlhf_torch.preference.serve import MicroBatcher, QueueFull, load_pairwise_model

NLHF = str(Path(sys.executable).with_name("nlhf"))
PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]
YS = [" apple", " red", " cat", " hi there"]
YPS = [" cherry", " blue green", " dog", " bye"]


def serve(model: Path, tmp: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    port = free_port()
    argv = [NLHF, "serve", str(model), "--port", str(port), *args]
    return ServerProcess(argv, port, env=env, log=tmp / f"serve-{port}.log").start()


@pytest.fixture(scope="module")
def judge_server(tiny_ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("serve")
    proc = serve(
        tiny_ckpts["llama"],
        tmp,
        "--max-wait-ms",
        "300",
        "--max-request",
        "8",
        "--max-body-bytes",
        "20000",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def reward_server(tiny_ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    proc = serve(tiny_ckpts["llama_rm"], tmp_path_factory.mktemp("serve_rm"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def token_server(tiny_ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The reward model served with ``NLHF_SERVE_TOKEN=s3cret`` (the token tests share it)."""
    tmp = tmp_path_factory.mktemp("serve_token")
    proc = serve(tiny_ckpts["llama_rm"], tmp, env={"NLHF_SERVE_TOKEN": "s3cret"})
    yield proc
    proc.stop()


def post(server: Any, path: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def comparisons(n: int = 4) -> list[dict[str, str]]:
    return [
        {"prompt": x, "response_a": a, "response_b": b}
        for x, a, b in list(zip(PROMPTS, YS, YPS, strict=True))[:n]
    ]


# ------------------------------------------------------------------ answers
@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_preference_endpoint_equals_the_in_process_model(
    judge_server: Any, tiny_ckpts: dict[str, Path]
) -> None:
    got = post(judge_server, "/v1/preference", {"comparisons": comparisons()}).json()["probs"]
    expected = load_pairwise_model(tiny_ckpts["llama"]).prob(PROMPTS, YS, YPS)
    assert_close(got, expected, "float32", "served P(a ≻ b)", scope="model")
    swapped = [
        {**c, "response_a": c["response_b"], "response_b": c["response_a"]} for c in comparisons()
    ]
    back = post(judge_server, "/v1/preference", {"comparisons": swapped}).json()["probs"]
    assert_close(np.add(got, back), np.ones(4), "float32", "P(a≻b) + P(b≻a)", scope="model")


@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_remote_preference_equals_the_in_process_model(
    judge_server: Any, tiny_ckpts: dict[str, Path]
) -> None:
    scorer = RemoteScorer(RemotePreference(url=judge_server.url, batch_size=3))
    expected = load_pairwise_model(tiny_ckpts["llama"]).prob(PROMPTS, YS, YPS)
    assert_close(scorer.prob(PROMPTS, YS, YPS), expected, "float32", "remote P", scope="model")
    assert scorer.has_reward() is False


@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_reward_endpoint_and_remote_reward(reward_server: Any, tiny_ckpts: dict[str, Path]) -> None:
    model = load_pairwise_model(tiny_ckpts["llama_rm"])
    expected = model.scores(reward_texts(PROMPTS, YS)).double().numpy()
    items = [{"prompt": x, "response": y} for x, y in zip(PROMPTS, YS, strict=True)]
    got = post(reward_server, "/v1/reward", {"items": items}).json()["rewards"]
    assert_close(got, expected, "float32", "served r(x, y)", scope="model")
    scorer = RemoteScorer(RemotePreference(url=reward_server.url))
    assert scorer.has_reward() is True
    assert_close(scorer.reward(PROMPTS, YS), expected, "float32", "remote r", scope="model")
    r_prime = model.scores(reward_texts(PROMPTS, YPS)).double().numpy()
    bt = 1 / (1 + np.exp(-(expected - r_prime)))  # σ(r − r′), Bradley–Terry
    assert_close(scorer.prob(PROMPTS, YS, YPS), bt, "float32", "remote BT P", scope="model")


@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_reward_of_a_pairwise_model_is_404(judge_server: Any) -> None:
    response = post(judge_server, "/v1/reward", {"items": [{"prompt": "x", "response": "y"}]})
    assert response.status_code == 404 and "pairwise" in response.json()["detail"]


@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_health_and_model_info(judge_server: Any, tiny_ckpts: dict[str, Path]) -> None:
    assert httpx.get(judge_server.url + "/health", timeout=10).json() == {"status": "ok"}
    info = httpx.get(judge_server.url + "/v1/model", timeout=10).json()
    assert info["kind"] == "pairwise" and info["head"] == "lm"
    assert info["path"] == str(tiny_ckpts["llama"])
    assert info["limits"]["max_request"] == 8
    assert "/v1/chat/completions" in info["endpoints"]


@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_concurrent_clients_share_batches(judge_server: Any) -> None:
    """Eight clients each send one comparison at once; the 300 ms window gathers them
    into fewer forwards than requests."""
    before = httpx.get(judge_server.url + "/v1/model", timeout=10).json()["batching"]["preference"]
    results: list[float] = []
    barrier = threading.Barrier(8)

    def client(i: int) -> None:
        barrier.wait(timeout=30)
        body = {"comparisons": [comparisons()[i % 4]]}
        results.append(post(judge_server, "/v1/preference", body).json()["probs"][0])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    after = httpx.get(judge_server.url + "/v1/model", timeout=10).json()["batching"]["preference"]
    assert len(results) == 8
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] < 8
    assert after["largest_batch"] >= 2


# ------------------------------------------------------------------ limits and access
@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_request_limits(judge_server: Any) -> None:
    many = {"comparisons": comparisons() * 3}  # 12 > --max-request 8
    response = post(judge_server, "/v1/preference", many)
    assert response.status_code == 413 and "at most 8" in response.json()["detail"]
    big = {"comparisons": [{"prompt": "x" * 30000, "response_a": "a", "response_b": "b"}]}
    assert post(judge_server, "/v1/preference", big).status_code == 413  # --max-body-bytes
    assert post(judge_server, "/v1/preference", {"comparisons": []}).status_code == 422
    bad = {"comparisons": [{"prompt": "x", "response_a": "a"}]}
    assert post(judge_server, "/v1/preference", bad).status_code == 422
    scorer = RemoteScorer(RemotePreference(url=judge_server.url, batch_size=64))
    assert scorer.request_size() == 8  # capped by the server's --max-request
    assert scorer.prob(PROMPTS * 3, YS * 3, YPS * 3).shape == (12,)
    assert scorer.http.requests == 1 + 2  # /v1/model, then 12 comparisons in 8 + 4


def test_the_queue_is_bounded() -> None:
    """A batcher whose forward is blocked holds at most max_queue comparisons."""
    release = threading.Event()

    def slow(items: list[Any]) -> list[float]:
        release.wait(timeout=30)
        return [0.5] * len(items)

    async def scenario() -> tuple[list[float], bool]:
        batcher = MicroBatcher(slow, max_batch=4, max_wait=0.0, max_queue=4, lock=threading.Lock())
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([1, 2, 3]))
        await asyncio.sleep(0.05)
        try:
            await batcher.submit([4, 5])
            refused = False
        except QueueFull:
            refused = True
        release.set()
        result = await first
        await batcher.stop()
        return result, refused

    result, refused = asyncio.run(scenario())
    assert refused and result == [0.5, 0.5, 0.5]


@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_token_is_required_when_set(token_server: Any) -> None:
    proc = token_server
    assert httpx.get(proc.url + "/health", timeout=10).status_code == 200
    assert httpx.get(proc.url + "/v1/model", timeout=10).status_code == 401
    headers = {"Authorization": "Bearer s3cret"}
    assert httpx.get(proc.url + "/v1/model", headers=headers, timeout=10).status_code == 200
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.get(proc.url + "/v1/model", headers=wrong, timeout=10).status_code == 401
    assert "s3cret" not in proc.output()


@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_remote_token_from_the_environment(
    token_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = token_server
    monkeypatch.setenv("MY_TOKEN", "s3cret")
    good = RemoteScorer(RemotePreference(url=proc.url, token_env="MY_TOKEN"))
    assert good.prob(PROMPTS, YS, YPS).shape == (4,)
    monkeypatch.setenv("MY_TOKEN", "wrong")
    bad = RemoteScorer(RemotePreference(url=proc.url, token_env="MY_TOKEN", retries=5))
    with pytest.raises(RemotePreferenceError, match="HTTP 401"):
        bad.prob(PROMPTS, YS, YPS)
    assert bad.http.requests == 1  # a wrong token is not retried
    assert "s3cret" not in proc.output()


@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_binding_beyond_loopback_needs_a_token(tiny_ckpts: dict[str, Path]) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if k != "NLHF_SERVE_TOKEN"}
    started = time.monotonic()
    done = subprocess.run(
        [NLHF, "serve", str(tiny_ckpts["llama"]), "--host", "0.0.0.0", "--port", "9"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert "needs an access token" in done.stderr and "NLHF_SERVE_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 120


@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_serve_refuses_a_missing_directory(tmp_path: Path) -> None:
    done = subprocess.run(
        [NLHF, "serve", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "is not a directory" in done.stderr


# ------------------------------------------------------------------ the judge LM
@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_openai_judge_equals_the_in_process_llm_judge(
    judge_server: Any, tiny_ckpts: dict[str, Path], tmp_path: Path
) -> None:
    """``openai_judge`` against the served judge LM gives ½(p(1|y,y′) + 1 − p(1|y′,y)) with
    p = σ(ℓ₁ − ℓ₂) of the answer tokens: the formula the in-process ``llm_judge`` uses on
    the same model, so both agree at model scope; a second scorer reads the cache."""
    expected = load_judge(LLMJudgePreference(model=str(tiny_ckpts["llama"]))).prob(PROMPTS, YS, YPS)
    spec = OpenAIJudgePreference(
        base_url=judge_server.url + "/v1",
        model="tiny",
        answers=(" 1", " 2"),
        top_logprobs=0,  # only the two answer tokens come back
        cache_dir=str(tmp_path / "cache"),
    )
    before = httpx.get(judge_server.url + "/v1/model", timeout=10).json()["batching"]["chat"]
    scorer = OpenAIJudgeScorer(spec)  # 8 requests, up to 8 in flight (concurrency)
    got = scorer.prob(PROMPTS, YS, YPS)
    assert_close(got, expected, "float32", "openai_judge vs llm_judge", scope="model")
    assert scorer.http.requests == 8
    after = httpx.get(judge_server.url + "/v1/model", timeout=10).json()["batching"]["chat"]
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] < 8  # concurrent judge calls share forwards
    cached = OpenAIJudgeScorer(spec)
    np.testing.assert_array_equal(cached.prob(PROMPTS, YS, YPS), got)
    assert cached.http.requests == 0


@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_chat_completions_shape(judge_server: Any) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Which is better, 1 or 2?"}],
        "logprobs": True,
        "top_logprobs": 3,
        "max_tokens": 1,
    }
    data = post(judge_server, "/v1/chat/completions", body).json()
    assert data["object"] == "chat.completion"
    (choice,) = data["choices"]
    first = choice["logprobs"]["content"][0]
    assert choice["message"]["content"] == first["token"]
    top = first["top_logprobs"]
    assert 3 <= len(top) <= 5  # the 3 most likely and the two answer tokens
    probs = np.exp([t["logprob"] for t in top[:3]])
    assert np.all(np.diff(probs) <= 0) and probs.sum() <= 1 + 1e-9
    assert post(judge_server, "/v1/chat/completions", {"messages": []}).status_code == 422


@pytest.mark.slow  # a real server process (model load: tens of seconds here)
def test_served_preference_in_a_killed_and_restarted_server(
    tiny_ckpts: dict[str, Path], tmp_path: Path
) -> None:
    proc = serve(tiny_ckpts["llama_rm"], tmp_path)
    try:
        scorer = RemoteScorer(RemotePreference(url=proc.url, retries=2, backoff=0.05))
        first = scorer.prob(PROMPTS, YS, YPS)
        proc.kill()
        with pytest.raises(RemotePreferenceError, match="3 attempts"):
            scorer.prob(PROMPTS, YS, YPS)
        proc.start()
        np.testing.assert_array_equal(scorer.prob(PROMPTS, YS, YPS), first)
    finally:
        proc.stop()
