"""Train the NLHF algorithms on the quickstart task and evaluate them against each other.

The paper's Table 1 experiment (arXiv:2312.00886 §8) in miniature: the policies of

    nash_md_pg (β = 0.125), nash_md_pg (β = 0.5), self_play, best_response,
    nash_ema_pg, rlhf_pg

are trained from ``specs/quickstart.yaml`` (same prompts, preference oracle, τ, steps,
seed; only ``algorithm`` changes), then ``specs/compare-algorithms.yaml`` evaluates all
of them, plus the reference μ, with the same oracle: the matrix P(π_column ≻ π_row).

Usage (from the repository root)::

    .venv/bin/python scripts/compare_algorithms.py                 # full budget
    .venv/bin/python scripts/compare_algorithms.py --steps 100     # quicker
    .venv/bin/python scripts/compare_algorithms.py --only-eval     # re-evaluate

Equivalent commands::

    nlhf run specs/quickstart.yaml --backend torch \\
        --set 'algorithm={name: self_play, tau: 0.05}' -o runs/compare/self_play
    ...                                        # one per algorithm, see ALGORITHMS
    nlhf eval specs/compare-algorithms.yaml --backend torch
    nlhf report runs/compare/eval

Finished runs (a ``summary.json`` with the requested step count) are skipped, and the
evaluation caches responses per policy, so the script can be re-run after an interruption.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAU = 0.05
ALGORITHMS: dict[str, str] = {
    "nash_md_pg_b0.125": f"{{name: nash_md_pg, beta: 0.125, tau: {TAU}}}",
    "nash_md_pg_b0.5": f"{{name: nash_md_pg, beta: 0.5, tau: {TAU}}}",
    "self_play": f"{{name: self_play, tau: {TAU}}}",
    "best_response": f"{{name: best_response, tau: {TAU}}}",
    "nash_ema_pg": f"{{name: nash_ema_pg, ema_decay: 0.9, tau: {TAU}}}",
    "rlhf_pg": f"{{name: rlhf_pg, tau: {TAU}}}",
}
"""Run name -> the ``algorithm`` section (YAML) given to ``--set``."""


def nlhf(*args: str) -> None:
    cmd = [str(Path(sys.executable).parent / "nlhf"), *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def finished(run_dir: Path, steps: int) -> bool:
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("steps") == steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="specs/quickstart.yaml", help="training spec")
    parser.add_argument("--eval-spec", default="specs/compare-algorithms.yaml")
    parser.add_argument("--out", default="runs/compare", help="root of the run directories")
    parser.add_argument("--steps", type=int, default=400, help="training steps per algorithm")
    parser.add_argument("--samples", type=int, default=None, help="eval samples per prompt")
    parser.add_argument("--only", nargs="*", default=None, help="subset of the algorithms")
    parser.add_argument("--only-eval", action="store_true", help="skip training")
    args = parser.parse_args(argv)
    out = Path(args.out)
    names = args.only or list(ALGORITHMS)
    unknown = sorted(set(names) - set(ALGORITHMS))
    if unknown:
        parser.error(f"unknown algorithm(s) {unknown}; choose from {list(ALGORITHMS)}")
    if not args.only_eval:
        for name in names:
            run_dir = out / name
            if finished(run_dir, args.steps):
                print(f"= {run_dir}: done, skipped", flush=True)
                continue
            nlhf(
                "run",
                args.spec,
                "--backend",
                "torch",
                "--set",
                f"algorithm={ALGORITHMS[name]}",
                "--set",
                f"training.steps={args.steps}",
                "-o",
                str(run_dir),
            )
    policies = ["reference"] + [str(out / n) for n in names]
    overrides = ["--set", "eval.policies=" + json.dumps(policies)]
    overrides += ["--set", f"output.dir={out / 'eval'}"]
    if args.samples is not None:
        overrides += ["--set", f"eval.samples_per_prompt={args.samples}"]
    nlhf("eval", args.eval_spec, "--backend", "torch", *overrides)
    nlhf("report", str(out / "eval"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
