"""Preferences over the network, the same on every backend (HTTP + NumPy; docs/serving.md).

- :class:`RemoteScorer` (``preference: {name: remote}``): a model served by
  ``nlhf serve``; P(y≻y'|x) from ``POST /v1/preference``, r(x, y) from ``/v1/reward`` when
  the server's ``/v1/model`` says it is a Bradley–Terry model.
- :class:`OpenAIJudgeScorer` (``preference: {name: openai_judge}``): an LLM judge behind
  an OpenAI-compatible ``/chat/completions``. The judge reads ``template`` with y shown as
  response 1 and y' as response 2, then swapped; p(1|a,b) is the probability that it
  answers ``answers[0]``: from the logprobs of the two answer tokens when the server
  returns them, p = exp ℓ₁ / (exp ℓ₁ + exp ℓ₂) = σ(ℓ₁ − ℓ₂) (the two answers renormalised,
  as :class:`nlhf.preference.scorers.JudgeScorer` does with logits), else 1, 0 or ½ from
  the verdict text. Both orders are averaged (:func:`~nlhf.preference.scorers.average_orders`),
  P(y≻y'|x) = ½·(p(1|y,y') + 1 − p(1|y',y)), which cancels a position bias. Answers are
  kept in an SQLite cache keyed by sha256(model, template, system, answers, prompt, a, b),
  so a resumed run or a repeated evaluation asks again for nothing.

Both retry connection errors, timeouts, HTTP 429 and 5xx and malformed answers with
exponential backoff (``backoff · 2^attempt`` seconds, or the server's ``Retry-After``),
``retries`` times, then raise :class:`RemotePreferenceError` naming the URL and the last
problem; other 4xx answers (a wrong token, a request over the server's limits) fail at once.
API keys and tokens are read from the environment variable the spec names and are never
written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from nlhf.errors import InputError, PreferenceUnavailableError
from nlhf.preference.format import render_judge
from nlhf.preference.scorers import (
    average_orders,
    check_comparisons,
    check_probabilities,
    check_rewards,
)
from nlhf.spec.models import OpenAIJudgePreference, RemotePreference

REMOTE_PREFERENCES = ("remote", "openai_judge")
"""The preference kinds built here, on any backend."""
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0
"""Longest ``Retry-After`` honoured (seconds)."""


class RemotePreferenceError(PreferenceUnavailableError):
    """A preference server did not give a usable answer after every retry."""


class Malformed(Exception):
    """An answer that is not what the protocol promises (retried)."""


def _secret(env: str | None, field: str) -> str | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise InputError(
            f"preference.{field}: the environment variable {env} is not set; export it "
            "(the secret is read from the environment and never written to outputs)"
        )
    return value


class _Client:
    """``httpx.Client`` with the retry policy of the module docstring."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None,
        timeout: float,
        retries: int,
        backoff: float,
        what: str,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import httpx

        self._httpx = httpx
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url
        self.client = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        self.retries, self.backoff, self.what, self.sleep = retries, backoff, what, sleep
        self.requests = 0
        """HTTP requests sent (retries included)."""

    def call(self, method: str, path: str, parse: Callable[[Any], Any], body: Any = None) -> Any:
        """``parse(json)`` of the answer to ``method path``, retried per the policy."""
        httpx = self._httpx
        problem = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2**attempt
            try:
                self.requests += 1
                response = self.client.request(method, path, json=body)
            except httpx.TimeoutException as exc:
                problem = f"timed out ({type(exc).__name__})"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code in RETRY_STATUS:
                    problem = f"HTTP {response.status_code}: {_detail(response)}"
                    wait = _retry_after(response, wait)
                elif response.status_code >= 400:
                    raise RemotePreferenceError(
                        f"{self.what}: {self.base_url}{path} answered HTTP "
                        f"{response.status_code}: {_detail(response)}"
                    )
                else:
                    try:
                        return parse(response.json())
                    except (ValueError, Malformed, KeyError, TypeError, IndexError) as exc:
                        problem = f"a malformed answer ({exc})"
            if attempt < self.retries:
                self.sleep(wait)
        raise RemotePreferenceError(
            f"{self.what}: {self.base_url}{path}: no usable answer after {self.retries + 1} "
            f"attempts (last: {problem}); check that the server is running and reachable, or "
            "raise preference.retries / preference.timeout"
        )

    def close(self) -> None:
        self.client.close()


def _detail(response: Any) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = str(detail) if detail is not None else response.text
    return text[:300] or "(empty body)"


def _retry_after(response: Any, default: float) -> float:
    value = response.headers.get("retry-after")
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER) if value is not None else default
    except ValueError:
        return default


def _floats(values: Any, n: int, key: str) -> list[float]:
    if not isinstance(values, list) or len(values) != n:
        size = len(values) if isinstance(values, list) else type(values).__name__
        raise Malformed(f"`{key}` should be a list of {n} numbers, got {size}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise Malformed(f"`{key}` holds a value that is not a number")
    return [float(v) for v in values]


# ---------------------------------------------------------------------- nlhf serve
class RemoteScorer:
    """P(y≻y'|x) (and r for a Bradley–Terry model) from an ``nlhf serve`` server."""

    def __init__(self, spec: RemotePreference, **client: Any) -> None:
        self.spec = spec
        self.http = _Client(
            spec.url,
            token=_secret(spec.token_env, "token_env"),
            timeout=spec.timeout,
            retries=spec.retries,
            backoff=spec.backoff,
            what="preference.url",
            **client,
        )
        self._info: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        """The server's ``/v1/model`` (fetched once)."""
        if self._info is None:

            def parse(data: Any) -> dict[str, Any]:
                if not isinstance(data, dict) or data.get("kind") not in (
                    "pairwise",
                    "bradley_terry",
                ):
                    raise Malformed("/v1/model has no `kind` pairwise or bradley_terry")
                return data

            self._info = self.http.call("GET", "/v1/model", parse)
        return self._info

    def has_reward(self) -> bool:
        return self.info()["kind"] == "bradley_terry"

    def request_size(self) -> int:
        """Comparisons per request: ``batch_size``, capped by the server's ``max_request``
        (from ``/v1/model``) so that no request is refused for its size."""
        limit = (self.info().get("limits") or {}).get("max_request")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1:
            return min(self.spec.batch_size, limit)
        return self.spec.batch_size

    def prob(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> np.ndarray:
        prompts, ys, y_primes = check_comparisons(prompts, ys, y_primes)
        out: list[float] = []
        size = self.request_size()
        for i in range(0, len(prompts), size):
            chunk = [
                {"prompt": x, "response_a": a, "response_b": b}
                for x, a, b in zip(
                    prompts[i : i + size], ys[i : i + size], y_primes[i : i + size], strict=True
                )
            ]

            def parse(data: Any, n: int = len(chunk)) -> list[float]:
                values = _floats(data["probs"], n, "probs")
                if not all(0.0 <= v <= 1.0 for v in values):
                    raise Malformed("`probs` holds a value outside [0, 1]")
                return values

            out += self.http.call("POST", "/v1/preference", parse, {"comparisons": chunk})
        return check_probabilities(out, len(prompts), "preference remote")

    def reward(self, prompts: Sequence[str], ys: Sequence[str]) -> np.ndarray:
        if not self.has_reward():
            raise InputError(
                "algorithm.name: rlhf_pg needs a scalar reward r(x, y), and the served model "
                f"at {self.spec.url} is pairwise; serve a Bradley–Terry reward model"
            )
        out: list[float] = []
        size = self.request_size()
        for i in range(0, len(prompts), size):
            items = [
                {"prompt": x, "response": y}
                for x, y in zip(prompts[i : i + size], ys[i : i + size], strict=True)
            ]

            def parse(data: Any, n: int = len(items)) -> list[float]:
                values = _floats(data["rewards"], n, "rewards")
                if not all(math.isfinite(v) for v in values):
                    raise Malformed("`rewards` holds a non-finite value")
                return values

            out += self.http.call("POST", "/v1/reward", parse, {"items": items})
        return check_rewards(out, len(prompts), "preference remote")


# ---------------------------------------------------------------------- OpenAI judge
def verdict_probability(choice: Any, answers: tuple[str, str]) -> float:
    """p(answers[0]) from one chat-completions ``choice``: σ(ℓ₁ − ℓ₂) over the first
    generated token's ``top_logprobs`` when both answers are among them (tokens compared
    exactly, else after stripping white space, merged by log-sum-exp), else 1 / 0 / ½ from
    the verdict text (it starts with one answer / the other / neither)."""
    first, second = answers
    logprobs = (choice.get("logprobs") or {}).get("content") or []
    if logprobs:
        top = logprobs[0].get("top_logprobs") or []
        pairs = [(str(t["token"]), float(t["logprob"])) for t in top]

        def logp(answer: str) -> float | None:
            exact = [lp for tok, lp in pairs if tok == answer]
            if exact:
                return exact[0]
            loose = [lp for tok, lp in pairs if tok.strip() == answer.strip()]
            return float(np.logaddexp.reduce(loose)) if loose else None

        l1, l2 = logp(first), logp(second)
        if l1 is not None and l2 is not None:
            return float(1.0 / (1.0 + math.exp(l2 - l1)))
    content = choice["message"]["content"]
    if not isinstance(content, str):
        raise Malformed("choices[0].message.content is not text")
    text = content.strip()
    one, two = text.startswith(first.strip()), text.startswith(second.strip())
    if one != two:
        return 1.0 if one else 0.0
    return 0.5


def default_cache_dir() -> Path:
    root = os.environ.get("NLHF_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "nlhf") / "openai_judge"


class JudgeCache:
    """p(1|a,b) answers in SQLite (``answers.sqlite``), keyed by the sha256 of what the
    judge saw; safe across threads and processes."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "answers.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, p REAL)")
        self._db.commit()

    def get(self, key: str) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT p FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else float(row[0])

    def put(self, key: str, p: float) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, p))
            self._db.commit()


class OpenAIJudgeScorer:
    """P(y≻y'|x) from an OpenAI-compatible judge (module docstring)."""

    def __init__(self, spec: OpenAIJudgePreference, **client: Any) -> None:
        self.spec = spec
        self.http = _Client(
            spec.base_url,
            token=_secret(spec.api_key_env, "api_key_env"),
            timeout=spec.timeout,
            retries=spec.retries,
            backoff=spec.backoff,
            what="preference.base_url",
            **client,
        )
        directory = Path(spec.cache_dir) if spec.cache_dir else default_cache_dir()
        self.cache = JudgeCache(directory) if spec.cache else None
        self._identity = {
            "model": spec.model,
            "template": spec.template,
            "system": spec.system,
            "answers": list(spec.answers),
            "logprobs": spec.logprobs,
            "temperature": spec.temperature,
        }

    def has_reward(self) -> bool:
        return False

    def reward(self, prompts: Sequence[str], ys: Sequence[str]) -> np.ndarray:
        raise InputError(
            "algorithm.name: rlhf_pg needs a scalar reward r(x, y), and an openai_judge "
            "preference has none; use a bradley_terry_reward or remote reward model"
        )

    def key(self, prompt: str, first: str, second: str) -> str:
        data = {**self._identity, "prompt": prompt, "response_1": first, "response_2": second}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def ask(self, prompt: str, first: str, second: str) -> float:
        """p(answers[0] | prompt, response 1 = first, response 2 = second)."""
        key = self.key(prompt, first, second)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return hit
        spec = self.spec
        messages = [{"role": "system", "content": spec.system}] if spec.system else []
        messages.append(
            {"role": "user", "content": render_judge(spec.template, prompt, first, second)}
        )
        body: dict[str, Any] = {
            "model": spec.model,
            "messages": messages,
            "max_tokens": spec.max_tokens,
            "temperature": spec.temperature,
        }
        if spec.logprobs:
            body.update(logprobs=True, top_logprobs=spec.top_logprobs)

        def parse(data: Any) -> float:
            choices = data["choices"]
            if not isinstance(choices, list) or not choices:
                raise Malformed("no `choices`")
            return verdict_probability(choices[0], spec.answers)

        p = self.http.call("POST", "/chat/completions", parse, body)
        if self.cache is not None:
            self.cache.put(key, p)
        return p

    def prob(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> np.ndarray:
        prompts, ys, y_primes = check_comparisons(prompts, ys, y_primes)
        jobs = [(x, a, b) for x, a, b in zip(prompts, ys, y_primes, strict=True)]
        jobs += [(x, b, a) for x, a, b in zip(prompts, ys, y_primes, strict=True)]
        with ThreadPoolExecutor(max_workers=self.spec.concurrency) as pool:
            answers = list(pool.map(lambda job: self.ask(*job), jobs))
        n = len(prompts)
        return check_probabilities(
            average_orders(answers[:n], answers[n:]), n, "preference openai_judge"
        )


def secret_problems(spec: Any) -> list[tuple[tuple[str, ...], str]]:
    """``(field, message)`` when a ``remote`` / ``openai_judge`` preference names an
    environment variable for its token or key that is not set (``nlhf validate`` /
    ``nlhf run`` report it before anything loads)."""
    preference = getattr(spec, "preference", None)
    field = {RemotePreference: "token_env", OpenAIJudgePreference: "api_key_env"}.get(
        type(preference)
    )
    env = getattr(preference, field, None) if field else None
    if env is None or os.environ.get(env):
        return []
    return [
        (
            ("preference", field),
            f"the environment variable {env} is not set; export it before the run (the "
            "secret is read from the environment and never written to outputs)",
        )
    ]


def build_remote_scorer(preference: Any, **client: Any) -> RemoteScorer | OpenAIJudgeScorer:
    """The scorer of a ``remote`` or ``openai_judge`` preference section (the factory a
    backend's preference builder calls for :data:`REMOTE_PREFERENCES`)."""
    if isinstance(preference, RemotePreference):
        return RemoteScorer(preference, **client)
    if isinstance(preference, OpenAIJudgePreference):
        return OpenAIJudgeScorer(preference, **client)
    raise InputError(
        f"preference.name: {getattr(preference, 'name', None)!r} is not one of "
        f"{', '.join(REMOTE_PREFERENCES)}"
    )
