"""A preference server that misbehaves on request, for the fault tests of
``nlhf.preference.remote`` (FastAPI + uvicorn on loopback; run as
``python fault_server.py PORT``).

``POST /control {"mode": M, "count": N, "delay": S, "p": P}`` sets what the next answers
of ``/v1/preference``, ``/v1/model`` and ``/v1/chat/completions`` do: ``ok`` (probs all
``p``; a chat verdict with logprobs ln p / ln(1 − p) for "1" / "2"), ``status`` (HTTP N
with ``Retry-After: S`` for the next ``count`` requests, then ok), ``malformed`` (a body of
the wrong shape), ``garbage`` (not JSON), ``slow`` (sleep S seconds first, ``count``
times), ``text`` (a chat verdict "2" without logprobs); ``/v1/model`` always answers, with
``max_request`` as its limit. ``GET /stats`` counts requests.
"""

from __future__ import annotations

import asyncio
import math
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

app = FastAPI()
STATE: dict[str, Any] = {
    "mode": "ok",
    "count": 0,
    "delay": 0.0,
    "status": 503,
    "p": 0.25,
    "max_request": 256,
}
SEEN: dict[str, int] = {}


@app.post("/control")
async def control(body: dict[str, Any]) -> dict[str, Any]:
    STATE.update(body)
    SEEN.clear()
    return STATE


@app.get("/stats")
async def stats() -> dict[str, int]:
    return SEEN


async def misbehave(path: str) -> Any:
    """The fault response for this request, or None to answer normally."""
    SEEN[path] = SEEN.get(path, 0) + 1
    mode = STATE["mode"]
    if mode in ("status", "slow") and STATE["count"] <= 0:
        return None
    if mode == "status":
        STATE["count"] -= 1
        return JSONResponse(
            {"detail": "injected"},
            status_code=int(STATE["status"]),
            headers={"Retry-After": str(STATE["delay"])},
        )
    if mode == "slow":
        STATE["count"] -= 1
        await asyncio.sleep(float(STATE["delay"]))
        return None
    if mode == "malformed":
        return JSONResponse({"probs": "not a list", "choices": [], "kind": "?"})
    if mode == "garbage":
        return PlainTextResponse("<html>bad gateway</html>")
    return None


@app.get("/v1/model")
async def model() -> Any:
    SEEN["model"] = SEEN.get("model", 0) + 1  # always answers: the faults hit the scoring
    return {"kind": "pairwise", "head": "lm", "limits": {"max_request": int(STATE["max_request"])}}


@app.post("/v1/preference")
async def preference(request: Request) -> Any:
    body = await request.json()
    fault = await misbehave("preference")
    return fault or {"probs": [STATE["p"]] * len(body["comparisons"])}


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Any:
    await request.json()
    fault = await misbehave("chat")
    if fault is not None:
        return fault
    p = float(STATE["p"])
    if STATE["mode"] == "text":
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "2"}}]}
    top = [{"token": "1", "logprob": math.log(p)}, {"token": "2", "logprob": math.log(1 - p)}]
    return {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "1" if p >= 0.5 else "2"},
                "logprobs": {"content": [{"token": "1", "logprob": 0.0, "top_logprobs": top}]},
            }
        ]
    }


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
