"""nlhf's torch trainer on the benchmark workload, one child process of ``run.py``.

Drives the core :class:`nlhf.training.NashLoop` on the torch stepper
(:func:`nlhf.training.nash_loop`) — the same objects ``nlhf run --backend torch``
uses — built from a run spec (``nash_md_pg``, β = 0.5, τ = 0.1, ``kl_estimator:
exact``, ``bradley_terry_reward`` on the shared reward model, batch 8, 32 new tokens at
temperature 0.9, AdamW, ``max_grad_norm`` 1.0) and calls ``trainer.step(n)``, whose metrics
record (the one written to ``metrics.jsonl``) carries ``step_seconds`` (generation +
decode + preference + loss + backward + optimizer step) and ``generated_tokens``.

One deviation from ``nlhf run``: the stepper's ``eos_id`` is set to ``None`` after
construction so that no row stops early — every completion has exactly
``max_new_tokens`` tokens, like TRL's run with ``min_new_tokens = max_new_tokens``.
No checkpoint is written (the run's end-of-training save is not part of a step).

    .venv/bin/python benchmarks/nlhf_torch_bench.py --workload W.json --assets DIR --out R.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import Workload, time_trainer_steps


def nash_spec(w: Workload, assets: Path, output: str | Path) -> dict[str, Any]:
    """The run spec (as data) of the benchmark workload for nlhf's trainers."""
    spec: dict[str, Any] = {
        "spec_version": 1,
        "task": "nash",
        "seed": w.seed,
        "policy": {"model": str(assets / "policy"), "chat_template": False},
        "preference": {"name": "bradley_terry_reward", "path": str(assets / "reward")},
        "data": {"path": str(assets / "prompts.jsonl"), "format": "prompt"},
        "algorithm": {"name": "nash_md_pg", "beta": w.beta, "tau": w.tau, "kl_estimator": "exact"},
        "training": {
            "steps": w.steps,
            "batch_size": w.batch_size,
            "lr": w.lr,
            "max_grad_norm": 1.0,
            "generation": {"max_new_tokens": w.max_new_tokens, "temperature": w.temperature},
        },
        "output": {"dir": str(output), "plots": False},
    }
    if w.precision != "pure":
        spec["training"]["precision"] = w.precision
    return spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", required=True, help="a JSON file written by run.py")
    ap.add_argument("--assets", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--profile",
        help="after the timed steps, run one more under torch.profiler and write its "
        "key_averages (self CPU time) to this file",
    )
    args = ap.parse_args()
    t_start = time.perf_counter()
    w = Workload.from_json(Path(args.workload).read_text())

    import torch

    torch.set_num_threads(args.threads)
    import transformers
    from nlhf.spec import RunSpec
    from nlhf.training import nash_loop

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as out_dir:
        spec = RunSpec.model_validate(nash_spec(w, Path(args.assets), out_dir))
        trainer = nash_loop(spec, Path(out_dir), backend="torch")
        if not hasattr(trainer.stepper, "eos_id"):
            raise RuntimeError("the torch stepper has no `eos_id`; update the benchmark")
        trainer.stepper.eos_id = None  # exactly max_new_tokens tokens per completion
        result = time_trainer_steps(
            trainer,
            w,
            method="nlhf_torch",
            backend="torch",
            threads=args.threads,
            t_start=t_start,
            progress=Path(args.out),
            versions={"transformers": transformers.__version__, "torch": torch.__version__},
        )
        result["decode_path"] = getattr(trainer.stepper, "decode_path", None)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                rec = trainer.step(w.steps + 1)
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
            Path(args.profile).write_text(
                f"step {w.steps + 1}: {rec['step_seconds']:.2f} s, generation "
                f"{rec['generation_seconds']:.2f} s (under the profiler)\n{table}"
            )
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
