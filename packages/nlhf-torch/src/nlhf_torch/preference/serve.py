"""Load a trained preference model for scoring, and serve it over HTTP (``nlhf serve``,
docs/serving.md).

:func:`load_pairwise_model` / :func:`from_spec` give the in-process scorer of
``preference: {name: pairwise_model | bradley_terry_reward, path: ...}``.

:func:`build_app` is a FastAPI application around one loaded model, run by uvicorn
(:func:`serve`):

- ``POST /v1/preference`` ``{"comparisons": [{"prompt", "response_a", "response_b"}, …]}``
  → ``{"probs": [P(a ≻ b | prompt), …]}`` (pairwise: σ(v(x,a,b) − v(x,b,a)), the
  comparison cut as ``pairwise_model`` cuts it; Bradley–Terry: σ(r(x,a) − r(x,b)) of the
  served rewards);
- ``POST /v1/reward`` ``{"items": [{"prompt", "response"}, …]}`` → ``{"rewards": [r, …]}``
  (Bradley–Terry models only), each ``prompt + response`` cut as ``bradley_terry_reward``
  cuts it;
- ``POST /v1/chat/completions``: the OpenAI chat-completions shape for a judge LM (a
  pairwise model with ``head: lm``): one next token after the last user message, with
  ``logprobs``/``top_logprobs`` (the k most likely tokens plus the model's two answer
  tokens), so an ``openai_judge`` preference can be pointed at it;
- ``GET /health`` (no token needed) and ``GET /v1/model`` (kind, head, template, limits,
  batching counters).

A model saved by ``task: preference_model`` reads its rows as it was trained (its
``nlhf_preference.json``: :func:`nlhf.data.tokenizer.pairs_as_trained`,
:func:`nlhf.data.tokenizer.reward_texts_as_trained`), so ``preference: {name: remote}``
gives what the in-process scorer of the same directory gives.

Comparisons (and judge conversations) from concurrent requests are scored together: a
:class:`MicroBatcher` collects them for up to ``max_wait_ms`` or ``max_batch`` items, then
runs one forward in a worker thread. The queue is bounded (``max_queue`` comparisons pending: 503 with
``Retry-After`` beyond it), as are a request (``max_request`` comparisons, ``max_body_bytes``
bytes: 413) and each text (``max_text_chars``: 422). Bound beyond loopback, the server
refuses to start without a token (``--token-env``, default ``NLHF_SERVE_TOKEN``); with a
token every endpoint but ``/health`` needs ``Authorization: Bearer TOKEN`` (401).
"""

# No `from __future__ import annotations`: FastAPI reads the request models of
# build_app from its endpoints' annotations, which must be evaluated where they are defined.
import asyncio
import contextlib
import hmac
import ipaddress
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from nlhf.data.tokenizer import pairs_as_trained, reward_texts_as_trained
from nlhf.errors import InputError
from nlhf.preference.scorers import BradleyTerryScorer, PairwiseScorer

from nlhf_torch.preference.model import PreferenceModel, load_preference_model
from nlhf_torch.preference.scorers import host_scores

TOKEN_ENV = "NLHF_SERVE_TOKEN"


def load_pairwise_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    dtype: str = "float32",
) -> PreferenceModel:
    """Load a preference model directory for scoring (eval mode, no gradients).

    Returns an object with ``prob(prompts, ys, y_primes) -> list[float]`` giving
    P(y≻y'|x) = σ(v(x,y,y') − v(x,y',y)) for a pairwise model and σ(r(x,y) − r(x,y'))
    for a Bradley–Terry reward model, scored ``batch_size`` comparisons at a time;
    ``pair_logits`` gives z = logit P as a tensor. ``max_length`` caps the token limit
    saved with the model. Directories without ``nlhf_preference.json`` load as a
    zero-shot judge (causal LM) or a BT reward model (1-label classifier).
    """
    model = load_preference_model(path, device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    model.batch_size = batch_size
    if max_length is not None:
        model.config.max_length = min(model.config.max_length, max_length)
    return model


def from_spec(preference: Any, device: str | torch.device = "cpu") -> PreferenceModel:
    """Build the scorer of a ``PairwiseModelPreference`` / ``BradleyTerryPreference``."""
    return load_pairwise_model(
        preference.path,
        device,
        batch_size=preference.batch_size,
        max_length=preference.max_length,
        dtype=preference.dtype,
    )


def as_trained(model: PreferenceModel) -> BradleyTerryScorer | PairwiseScorer:
    """The in-process scorer of a loaded ``model`` that the server answers with: a
    Bradley–Terry model as ``bradley_terry_reward`` reads it (each ``prompt + response``
    cut alone, :func:`nlhf.data.tokenizer.reward_texts_as_trained`), a pairwise model as
    ``pairwise_model`` reads it (:func:`nlhf.data.tokenizer.pairs_as_trained`)."""
    if model.config.kind == "bradley_terry":
        texts = reward_texts_as_trained(model.tokenizer, model.config)
        return BradleyTerryScorer(
            host_scores(model), batch_size=2 * model.batch_size, model=model, texts=texts
        )
    return PairwiseScorer(model, pairs=pairs_as_trained(model.tokenizer, model.config))


# ------------------------------------------------------------------------- options
@dataclass(frozen=True)
class ServeOptions:
    """Limits and batching of a server (``nlhf serve`` options)."""

    max_batch: int = 32
    """Comparisons (or texts) per forward pass."""
    max_wait_ms: float = 5.0
    """How long the first queued comparison waits for others to join its batch."""
    max_queue: int = 1024
    """Comparisons pending at once; beyond it a request gets 503 + Retry-After."""
    max_request: int = 256
    """Comparisons (or items) in one request; beyond it 413."""
    max_body_bytes: int = 8 * 2**20
    max_text_chars: int = 100_000
    token: str | None = None
    """Bearer token every endpoint but /health requires (None: no token)."""
    model_path: str = ""


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a token."""
    if token is None and not is_loopback(host):
        raise InputError(
            f"--host {host}: serving beyond loopback needs an access token; set "
            f"{TOKEN_ENV} (or the variable named by --token-env) to a secret, or bind "
            "127.0.0.1"
        )


# ------------------------------------------------------------------------- batching
class QueueFull(Exception):
    """More comparisons are pending than ``max_queue`` allows."""


@dataclass
class BatchStats:
    requests: int = 0
    items: int = 0
    batches: int = 0
    largest_batch: int = 0


@dataclass
class MicroBatcher:
    """Collects items from concurrent requests into batches of at most ``max_batch``,
    waiting at most ``max_wait`` seconds after the first, and runs ``fn`` on each batch in
    a worker thread (one at a time: ``lock``). At most ``max_queue`` items are pending."""

    fn: Callable[[list[Any]], Sequence[Any]]
    """One result per item (a float for the preference and reward endpoints)."""
    max_batch: int
    max_wait: float
    max_queue: int
    lock: threading.Lock
    stats: BatchStats = field(default_factory=BatchStats)
    pending: int = 0
    _queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] | None = None
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, items: list[Any]) -> list[Any]:
        if self.pending + len(items) > self.max_queue:
            raise QueueFull
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self.pending += len(items)
        self.stats.requests += 1
        for item, future in zip(items, futures, strict=True):
            self._queue.put_nowait((item, future))
        try:
            return list(await asyncio.gather(*futures))
        finally:
            self.pending -= len(items)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(item, fut) for item, fut in batch if not fut.done()]
            if not live:
                continue
            self.stats.batches += 1
            self.stats.items += len(live)
            self.stats.largest_batch = max(self.stats.largest_batch, len(live))
            try:
                values = await asyncio.to_thread(self._locked, [item for item, _ in live])
            except Exception as exc:  # every waiting request gets the error
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), value in zip(live, values, strict=True):
                if not fut.done():
                    fut.set_result(value)

    def _locked(self, items: list[Any]) -> Sequence[Any]:
        with self.lock:
            return self.fn(items)


# ------------------------------------------------------------------------- the app
def build_app(model: PreferenceModel, options: ServeOptions) -> Any:
    """The FastAPI application serving ``model`` (module docstring)."""
    from contextlib import asynccontextmanager

    import nlhf
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    limit = options.max_text_chars
    Text = Field(max_length=limit)

    class Comparison(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: str = Text
        response_a: str = Text
        response_b: str = Text

    class PreferenceRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        comparisons: list[Comparison]

    class RewardItem(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: str = Text
        response: str = Text

    class RewardRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: list[RewardItem]

    class Message(BaseModel):
        role: str
        content: str = Text

    class ChatRequest(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: str | None = None
        messages: list[Message] = Field(min_length=1)
        logprobs: bool = False
        top_logprobs: int = Field(default=0, ge=0, le=20)
        max_tokens: int | None = Field(default=None, ge=1)
        max_completion_tokens: int | None = Field(default=None, ge=1)

    kind, head = model.config.kind, model.config.head
    lock = threading.Lock()
    scorer = as_trained(model)

    def probs(items: list[Comparison]) -> list[float]:
        return scorer.prob(
            [c.prompt for c in items], [c.response_a for c in items], [c.response_b for c in items]
        ).tolist()

    def rewards(items: list[RewardItem]) -> list[float]:
        return scorer.reward([i.prompt for i in items], [i.response for i in items]).tolist()

    wait = options.max_wait_ms / 1000
    pref_batcher = MicroBatcher(probs, options.max_batch, wait, options.max_queue, lock)
    reward_batcher = MicroBatcher(rewards, options.max_batch, wait, options.max_queue, lock)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        batchers = (pref_batcher, reward_batcher, chat_batcher)
        for batcher in batchers:
            batcher.start()
        yield
        for batcher in batchers:
            await batcher.stop()

    app = FastAPI(title="nlhf preference server", version=nlhf.__version__, lifespan=lifespan)

    @app.middleware("http")
    async def body_limit(request: Request, call_next: Any) -> Any:
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "send a Content-Length header"}, status_code=411)
            if not length.isdigit() or int(length) > options.max_body_bytes:
                return JSONResponse(
                    {"detail": f"request body over {options.max_body_bytes} bytes"},
                    status_code=413,
                )
        return await call_next(request)

    def authorised(request: Request) -> None:
        if options.token is None:
            return
        given = request.headers.get("authorization", "")
        expected = f"Bearer {options.token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(401, "missing or wrong token: send Authorization: Bearer TOKEN")

    def check_size(n: int) -> None:
        if n == 0:
            raise HTTPException(422, "send at least one comparison")
        if n > options.max_request:
            raise HTTPException(
                413, f"{n} in one request; at most {options.max_request} (split the request)"
            )

    async def batched(batcher: MicroBatcher, items: list[Any]) -> list[float]:
        try:
            return await batcher.submit(items)
        except QueueFull:
            raise HTTPException(
                503,
                f"the server has {batcher.pending} comparisons queued (max_queue "
                f"{options.max_queue}); retry later",
                headers={"Retry-After": "1"},
            ) from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/v1/model", dependencies=[Depends(authorised)])
    async def info() -> dict[str, Any]:
        return {
            "path": options.model_path,
            "kind": kind,
            "head": head,
            "template": model.config.template if kind == "pairwise" else None,
            "answer_tokens": list(model.config.answer_tokens) if head == "lm" else None,
            "max_length": model.config.max_length,
            "max_prompt_length": model.config.max_prompt_length,
            "truncation": model.config.truncation,
            "device": str(model.device),
            "dtype": str(next(model.model.parameters()).dtype).removeprefix("torch."),
            "endpoints": ["/v1/preference"]
            + (["/v1/reward"] if kind == "bradley_terry" else [])
            + (["/v1/chat/completions"] if head == "lm" else []),
            "limits": {
                "max_batch": options.max_batch,
                "max_wait_ms": options.max_wait_ms,
                "max_queue": options.max_queue,
                "max_request": options.max_request,
                "max_body_bytes": options.max_body_bytes,
                "max_text_chars": options.max_text_chars,
            },
            "batching": {
                "preference": pref_batcher.stats.__dict__,
                "reward": reward_batcher.stats.__dict__,
                "chat": chat_batcher.stats.__dict__,
            },
            "nlhf": nlhf.__version__,
        }

    @app.post("/v1/preference", dependencies=[Depends(authorised)])
    async def preference(body: PreferenceRequest) -> dict[str, Any]:
        check_size(len(body.comparisons))
        return {"probs": await batched(pref_batcher, body.comparisons)}

    @app.post("/v1/reward", dependencies=[Depends(authorised)])
    async def reward(body: RewardRequest) -> dict[str, Any]:
        if kind != "bradley_terry":
            raise HTTPException(404, f"this is a {kind} model: it has no reward r(x, y)")
        check_size(len(body.items))
        return {"rewards": await batched(reward_batcher, body.items)}

    @torch.no_grad()
    def next_tokens(conversations: list[list[dict[str, str]]]) -> list[torch.Tensor]:
        """The judge's next-token log-probabilities (float64, vocabulary-sized) after each
        conversation, in one right-padded forward: the tokenizer's chat template with the
        assistant prompt when it has one, else the last user message; no special tokens
        added (as ``llm_judge``), then the answers' shared prefix."""
        tok = model.tokenizer
        rows = []
        for messages in conversations:
            if tok.chat_template:
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            else:
                text = [m["content"] for m in messages if m["role"] == "user"][-1]
            ids = tok(text, add_special_tokens=False).input_ids
            rows.append(ids[-(model.config.max_length - len(model._suffix)) :] + model._suffix)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        ids, mask = ids.to(model.device), mask.to(model.device)
        logits = model.model(input_ids=ids, attention_mask=mask).logits
        last = torch.tensor([len(r) - 1 for r in rows], device=model.device)
        picked = logits[torch.arange(len(rows), device=model.device), last].double()
        return list(torch.log_softmax(picked, dim=-1).cpu())

    chat_batcher = MicroBatcher(next_tokens, options.max_batch, wait, options.max_queue, lock)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorised)])
    async def chat(body: ChatRequest) -> dict[str, Any]:
        if head != "lm":
            raise HTTPException(404, f"this {kind} model has a classification head, not a judge LM")
        if not any(m.role == "user" for m in body.messages):
            raise HTTPException(422, "messages: no user message to answer")
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        (logp,) = await batched(chat_batcher, [messages])
        best = int(logp.argmax())
        top = torch.topk(logp, body.top_logprobs).indices.tolist() if body.top_logprobs else []
        decode = model.tokenizer.decode

        def entry(i: int) -> dict[str, Any]:
            token = decode([i])
            return {"token": token, "logprob": float(logp[i]), "bytes": list(token.encode())}

        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": decode([best])},
            "finish_reason": "length",
            "logprobs": None,
        }
        if body.logprobs:
            shown = list(dict.fromkeys([*top, model._id_1, model._id_2]))
            choice["logprobs"] = {
                "content": [{**entry(best), "top_logprobs": [entry(i) for i in shown]}]
            }
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model or options.model_path,
            "choices": [choice],
            "usage": {"completion_tokens": 1},
        }

    return app


def serve(
    path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    dtype: str = "float32",
    max_length: int | None = None,
    token_env: str = TOKEN_ENV,
    options: ServeOptions | None = None,
    log_level: str = "warning",
) -> None:
    """``nlhf serve``: load the model at ``path`` and serve it with uvicorn until stopped
    (SIGINT/SIGTERM). The token, if any, comes from the environment variable
    ``token_env`` and is never printed."""
    import uvicorn

    token = os.environ.get(token_env) or None
    check_bind(host, token)
    model = load_pairwise_model(path, device, max_length=max_length, dtype=dtype)
    base = options or ServeOptions()
    options = ServeOptions(**{**base.__dict__, "token": token, "model_path": str(path)})
    model.batch_size = options.max_batch
    app = build_app(model, options)
    print(f"nlhf serve: {path} ({model.config.kind}) on http://{host}:{port}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
