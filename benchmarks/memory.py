"""Peak memory of one Nash-MD-PG step with and without the memory options
(``training.gradient_checkpointing``, ``training.precision: bf16-mixed``,
``training.logprob_chunk``) on SmolLM2-135M-Instruct (docs/benchmarks.md, Memory).

Each configuration runs in a fresh child process (``--child NAME``): the torch stepper
loads the policy and its frozen reference (``runs/models/smollm2-135m-instruct``, built on
first use by :mod:`nlhf.packaged`), samples y and y′ for 4 prompts of exactly 128 tokens
(hh-rlhf dialogues, left-truncated) with 64 new tokens each (EOS off, so every row decodes
64), and takes two steps (loss, backward, AdamW). Before each phase of a step the child
resets its resident-set high-water mark (``/proc/self/clear_refs``, value 5) and after it
reads ``VmHWM`` from ``/proc/self/status``; the record holds the second (steady-state:
AdamW's moments resident) step's sampling peak and update peak (loss, backward,
optimizer), each also above the RSS its phase started from, and the whole process's
peak (imports, model loading and both steps). A fixed preference P stands in for a
preference model, which the options do not touch.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory.py     # -> benchmarks/results/memory.json

``--fuse-max-params N`` sets :data:`nlhf_torch.fastdecode.FUSE_MAX_PARAMS` in the children:
``200000000`` gives SmolLM2 the fused decode's stacked weight copies of policy and
reference (1.3 GB; the default up to 2026-12), the default decodes on the parameters in
place::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory.py --configs baseline \
        --fuse-max-params 200000000 --out /tmp/memory-copies.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "runs" / "models" / "smollm2-135m-instruct"
PROMPTS = ROOT / "tests" / "data" / "hh-rlhf-harmless-200.jsonl.gz"
BATCH, PROMPT_TOKENS, NEW_TOKENS = 4, 128, 64

CONFIGS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "gradient_checkpointing": {"gradient_checkpointing": True},
    "bf16_mixed": {"precision": "bf16-mixed"},
    "logprob_chunk_auto": {"logprob_chunk": "auto"},
    "all_three": {
        "gradient_checkpointing": True,
        "precision": "bf16-mixed",
        "logprob_chunk": "auto",
    },
}
"""Training options per configuration (on top of ``logprob_chunk: off``)."""


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Reset this process's resident-set high-water mark (VmHWM) to its current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def _prompt_ids(tokenizer: Any) -> list[list[int]]:
    """BATCH prompts of exactly PROMPT_TOKENS tokens: the longest hh-rlhf dialogue
    prefixes, left-truncated (the newest turns kept)."""
    with gzip.open(PROMPTS, "rt") as lines:
        rows = [json.loads(line) for line in lines]
    texts = sorted((r["chosen"] for r in rows), key=len, reverse=True)
    out = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        if len(ids) >= PROMPT_TOKENS:
            out.append(ids[-PROMPT_TOKENS:])
        if len(out) == BATCH:
            return out
    raise RuntimeError(f"fewer than {BATCH} dialogues of {PROMPT_TOKENS} tokens in {PROMPTS}")


def child(name: str, out: Path, fuse_max_params: int | None = None) -> None:
    import numpy as np
    import torch
    from nlhf.spec import RunSpec
    from nlhf_torch import fastdecode
    from nlhf_torch.trainer import TorchStepper

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if fuse_max_params is not None:
        fastdecode.FUSE_MAX_PARAMS = fuse_max_params
    spec = RunSpec.model_validate(
        {
            "task": "nash",
            "seed": 0,
            "policy": {"model": str(MODEL)},
            "preference": {"name": "oracle", "function": "population"},
            "data": {"path": str(PROMPTS), "format": "hh_rlhf"},
            "algorithm": {
                "name": "nash_md_pg",
                "beta": 0.125,
                "tau": 0.05,
                "kl_estimator": "exact",
            },
            "training": {
                "steps": 2,
                "batch_size": BATCH,
                "lr": 1e-6,
                "logprob_chunk": "off",
                "generation": {"max_new_tokens": NEW_TOKENS, "temperature": 1.0},
                **CONFIGS[name],
            },
            "output": {"dir": str(ROOT / "runs" / "bench-assets" / "memory")},
        }
    )
    stepper = TorchStepper(spec, None)
    stepper.eos_id = None  # every row decodes NEW_TOKENS tokens
    prompts = _prompt_ids(stepper.tokenizer)
    preference = np.array([0.9, 0.2, 0.6, 0.4])
    record: dict[str, Any] = {
        "rss_loaded_mib": _mib(_status_kib("VmRSS")),
        "load_peak_mib": _mib(_status_kib("VmHWM")),
    }
    peaks = [record["load_peak_mib"]]
    for step in (1, 2):
        start = time.perf_counter()
        reset_peak()
        before = _mib(_status_kib("VmRSS"))
        samples = stepper.sample(step, 0, prompts, 0.125)
        sampling_peak = _mib(_status_kib("VmHWM"))
        reset_peak()
        before_update = _mib(_status_kib("VmRSS"))
        stepper.accumulate(samples, preference, 0.05)
        update = stepper.apply()
        update_peak = _mib(_status_kib("VmHWM"))
        peaks += [sampling_peak, update_peak]
        record[f"step{step}_seconds"] = round(time.perf_counter() - start, 2)
    record.update(
        rss_before_step_mib=before,
        sampling_peak_mib=sampling_peak,
        sampling_above_mib=round(sampling_peak - before, 1),
        rss_before_update_mib=before_update,
        update_peak_mib=update_peak,
        update_above_mib=round(update_peak - before_update, 1),
        step_peak_mib=max(sampling_peak, update_peak),
        process_peak_mib=max(peaks),  # loading and both steps
    )
    record["loss"] = update.losses[0]
    record["decode_path"] = stepper.decode_path
    record["fuse_max_params"] = fastdecode.FUSE_MAX_PARAMS
    record["logprob_chunk"] = stepper._logprob_chunk(samples.payload[2].y)
    record["completion_tokens"] = int(samples.payload[2].y.shape[1])
    out.write_text(json.dumps(record))


def run(names: list[str], output: Path, fuse_max_params: int | None = None) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    results: dict[str, Any] = {}
    fuse = [] if fuse_max_params is None else ["--fuse-max-params", str(fuse_max_params)]
    for name in names:
        tmp = output.with_suffix(f".{name}.tmp.json")
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", name, "--out", str(tmp), *fuse],
            env=env,
            cwd=ROOT,
        )
        # (the child reports its peak: ru_maxrss would follow its resets of VmHWM)
        if proc.wait() != 0:
            raise SystemExit(f"configuration {name} failed (exit {proc.returncode})")
        record = json.loads(tmp.read_text())
        tmp.unlink()
        record["options"] = CONFIGS[name]
        results[name] = record
        print(name, json.dumps(record), flush=True)
    return {
        "workload": {
            "model": "SmolLM2-135M-Instruct (float32, 134.5M parameters, vocabulary 49152)",
            "algorithm": "nash_md_pg, kl_estimator exact, AdamW",
            "batch": BATCH,
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": NEW_TOKENS,
            "threads": int(env["OMP_NUM_THREADS"]),
        },
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/memory.json")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument(
        "--fuse-max-params",
        type=int,
        help="fastdecode.FUSE_MAX_PARAMS in the children (models up to it decode on stacked "
        "weight copies; default: the library's)",
    )
    args = parser.parse_args()
    if args.child:
        child(args.child, args.out, args.fuse_max_params)
        return
    from nlhf.packaged import build_packaged_model, is_built, packaged_model

    if not is_built(MODEL):  # built on first use, as `nlhf run` does (docs/real-models.md)
        model = packaged_model(str(MODEL))
        assert model is not None
        build_packaged_model(model, MODEL)
    report = run(args.configs.split(","), args.out, args.fuse_max_params)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
