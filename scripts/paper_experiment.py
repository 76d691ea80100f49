"""The Nash-MD paper's experiment, small (Munos et al., arXiv:2312.00886, §8 and Table 1),
on SmolLM2-135M-Instruct with hh-rlhf harmless prompts and a preference model trained on
hh-rlhf pairs.

The SFT model is the reference μ. Six policies are trained from it under one budget
(``specs/real/nash-smollm2.yaml`` with the algorithm swapped): Nash-MD-PG at two β,
Self-Play, Best-Response, Nash-EMA-PG and RLHF-PG (the Bradley–Terry reward trained on the
same pairs). ``nlhf eval`` then builds the 7×7 win-rate matrix twice: judged by the
training preference model P, and by a second preference model on the other backbone that
no policy trained against, so reward hacking of P shows as a disagreement.

Usage (every stage is skipped when its outputs exist, so a stopped pipeline continues)::

    .venv/bin/python scripts/paper_experiment.py                  # the full budget (~1 h)
    .venv/bin/python scripts/paper_experiment.py --budget smoke   # plumbing, minutes

Outputs under ``--out`` (default ``runs/real/experiment``): ``specs/`` (every spec run),
``policies/<name>/`` (training runs), ``eval-P/`` and ``eval-judge/`` (``nlhf eval``
outputs with ``winrate.json``, heatmaps and per-policy KL), and ``results.json`` /
``results.md`` (the matrices, KL to μ, sample completions), which docs/results.md reads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
NLHF = str(Path(sys.executable).with_name("nlhf"))
NASH_SPEC = REPO / "specs" / "real" / "nash-smollm2.yaml"

POLICIES: dict[str, dict[str, Any]] = {
    "nash_md_b0.125": {"name": "nash_md_pg", "beta": 0.125},
    "nash_md_b0.5": {"name": "nash_md_pg", "beta": 0.5},
    "self_play": {"name": "self_play"},
    "best_response": {"name": "best_response"},
    "nash_ema": {"name": "nash_ema_pg", "ema_decay": 0.9},
    "rlhf": {"name": "rlhf_pg"},
}
"""The trained policies (with the reference μ, "sft", the matrix is 7×7): algorithm fields
replacing the base spec's, τ kept."""

BUDGETS: dict[str, dict[str, Any]] = {
    "hour": {
        "steps": 64,
        "num_prompts": 64,
        "pm_spec": "preference-hh.yaml",
        "judge_spec": "preference-hh-smollm2.yaml",
    },
    "smoke": {
        "steps": 2,
        "num_prompts": 4,
        "pm_spec": None,
        "judge_spec": None,
        "batch_size": 2,
        "tokens": 8,
    },
}


def run(cmd: list[str], log: Path) -> None:
    """Run one ``nlhf`` command, its output in ``log``; a failure stops the pipeline."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {' '.join(cmd)}  (log: {log})", flush=True)
    t0 = time.monotonic()
    with log.open("w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise SystemExit(f"{cmd[1]} failed (exit {code}); last lines of {log}:\n{tail}")
    print(f"  done in {time.monotonic() - t0:.0f} s", flush=True)


def preference_section(model_run: Path) -> dict[str, Any]:
    """The ``preference`` section that uses a ``task: preference_model`` run's model."""
    resolved = yaml.safe_load((model_run / "spec.resolved.yaml").read_text())
    kind = (resolved.get("preference_training") or {}).get("kind", "pairwise")
    name = "bradley_terry_reward" if kind == "bradley_terry" else "pairwise_model"
    return {"name": name, "path": str(model_run / "model"), "batch_size": 8}


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="hour")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "real" / "experiment")
    ap.add_argument(
        "--preference",
        type=Path,
        default=REPO / "runs" / "real" / "preference-hh",
        help="the training preference model P: a `task: preference_model` run directory",
    )
    ap.add_argument(
        "--judge",
        type=Path,
        default=REPO / "runs" / "real" / "preference-hh-smollm2",
        help="the second preference model (the other backbone), never trained against: a "
        "`task: preference_model` run directory (specs/real/preference-hh-smollm2.yaml)",
    )
    ap.add_argument("--backend", default="torch")
    args = ap.parse_args(argv)
    budget, out = BUDGETS[args.budget], args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    # 1. the training preference model P
    pm = args.preference.resolve()
    if not (pm / "summary.json").is_file():
        if budget["pm_spec"] is None:
            raise SystemExit(
                f"--preference {pm}: no trained preference model there; train one with "
                "`nlhf run specs/real/preference-hh.yaml` (or pass --preference DIR)"
            )
        run([NLHF, "run", str(REPO / "specs" / "real" / budget["pm_spec"])], out / "logs/pm.log")
    # RLHF-PG needs a scalar reward: P itself when it is Bradley-Terry, else its BT baseline
    reward = pm / "baseline" if (pm / "baseline").is_dir() else pm

    # 2. the six policies, one budget
    base = yaml.safe_load(NASH_SPEC.read_text())
    base["training"]["steps"] = budget["steps"]
    if "batch_size" in budget:
        base["training"]["batch_size"] = budget["batch_size"]
        base["training"]["generation"]["max_new_tokens"] = budget["tokens"]
    base["preference"] = preference_section(pm)
    tau = base["algorithm"]["tau"]
    runs: dict[str, str] = {"sft": "reference"}
    for name, algo in POLICIES.items():
        spec = json.loads(json.dumps(base))
        spec["algorithm"] = {**algo, "tau": tau}
        if name == "rlhf":
            spec["preference"] = preference_section(reward)
            spec["preference"]["name"] = "bradley_terry_reward"
        target = out / "policies" / name
        spec["output"] = {**spec.get("output", {}), "dir": str(target)}
        path = write_spec(out / "specs" / f"{name}.yaml", spec)
        if not (target / "summary.json").is_file():
            resume = ["--resume"] if (target / "checkpoints").is_dir() else []
            run(
                [NLHF, "run", str(path), "--backend", args.backend, *resume],
                out / f"logs/{name}.log",
            )
        runs[name] = str(target)

    # 3. the second judge (needed only now: it may still be training beside the policies)
    judge = args.judge.resolve()
    if not (judge / "summary.json").is_file():
        if budget["judge_spec"] is None:
            print(f"warning: no second preference model at {judge}; judging twice by P")
            judge = pm
        else:
            spec = REPO / "specs" / "real" / budget["judge_spec"]
            run([NLHF, "run", str(spec)], out / "logs/judge.log")

    # 4. the 7x7 matrix, judged twice
    results: dict[str, Any] = {"budget": args.budget, "policies": list(runs), "judges": {}}
    for label, model in (("P", pm), ("judge", judge)):
        spec = {
            "spec_version": 1,
            "task": "evaluate",
            "seed": 0,
            "policy": base["policy"],
            "preference": preference_section(model),
            "data": {**base["data"], "limit": None},
            "training": {"generation": base["training"]["generation"]},
            "eval": {
                "policies": [f"{n}={p}" for n, p in runs.items()],
                "num_prompts": budget["num_prompts"],
                "samples_per_prompt": 1,
            },
            "output": {"dir": str(out / f"eval-{label}")},
        }
        spec["data"].pop("limit")
        path = write_spec(out / "specs" / f"eval-{label}.yaml", spec)
        target = out / f"eval-{label}"
        if not (target / "winrate.json").is_file():  # --resume reuses the cached responses
            resume = ["--resume"] if target.is_dir() else []
            cmd = [NLHF, "run", str(path), "--backend", args.backend, *resume]
            run(cmd, out / f"logs/eval-{label}.log")
        results["judges"][label] = {
            "model": str(model),
            "winrate": json.loads((out / f"eval-{label}" / "winrate.json").read_text()),
            "summary": json.loads((out / f"eval-{label}" / "summary.json").read_text()),
        }
    results["samples"] = sample_completions(out / "eval-P", list(runs), prompts=2)
    results["speed"] = {n: step_times(Path(p)) for n, p in runs.items() if n != "sft"}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")


def sample_completions(evaluation: Path, names: list[str], prompts: int) -> dict[str, Any]:
    """The first response of each policy to the first ``prompts`` prompts, from the
    evaluation's response cache (one ``responses/<hash>.jsonl`` per policy, its
    ``meta`` line naming the policy)."""
    found: dict[str, Any] = {}
    for path in sorted((evaluation / "responses").glob("*.jsonl")):
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        meta = lines[0].get("meta", {}) if lines else {}
        name = meta.get("name")
        if name in names:
            rows = [r for r in lines[1:] if r.get("sample") == 0]
            found[name] = [r["response"] for r in rows[:prompts]]
    return found


def step_times(run_dir: Path) -> dict[str, Any]:
    """A training run's speed from its ``metrics.jsonl``: step 1's seconds, the median of
    the later steps', the median generation share and generated tokens/s, and the decode
    path ``summary.json`` records."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    steps = [r for r in rows if "step_seconds" in r]
    later = steps[1:] or steps
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "steps": len(steps),
        "first_step_s": steps[0]["step_seconds"] if steps else None,
        "median_step_s": statistics.median(r["step_seconds"] for r in later) if later else None,
        "median_generation_s": statistics.median(r["generation_seconds"] for r in later)
        if later
        else None,
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] or 0.0 for r in later)
        if later
        else None,
        "decode_path": summary.get("decode_path"),
    }


def _cell(judge: dict[str, Any], i: int, j: int) -> str:
    w = judge["winrate"]
    mean, low, high = w["matrix"][i][j], w["ci_low"][i][j], w["ci_high"][i][j]
    if mean is None:
        return "–"
    if i == j or low is None:
        return f"{mean:.2f}"
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def markdown(results: dict[str, Any]) -> str:
    """The tables of docs/results.md: per judge the 7×7 matrix (column beats row, with
    its confidence interval) and each policy's KL to μ; sample completions."""
    names = results["policies"]
    lines = [f"Budget `{results['budget']}`.", ""]
    for label, judge in results["judges"].items():
        w = judge["winrate"]
        methods = sorted({m for row in w["ci_method"] for m in row} - {"exact"})
        lines += [
            f"### Judged by {label} (`{judge['model']}`)",
            "",
            f"P(column ≻ row), {w['confidence']:.0%} intervals ({', '.join(methods)}).",
            "",
            "| row \\ column | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for i, row in enumerate(names):
            lines.append(
                f"| {row} | " + " | ".join(_cell(judge, i, j) for j in range(len(names))) + " |"
            )
        lines += ["", "| policy | column average | KL(π‖μ) | mean length |", "|---|---|---|---|"]
        per = judge["summary"]["per_policy"]
        for j, name in enumerate(names):
            stats = per.get(name, {}) if isinstance(per, dict) else {}
            avg = w["column_average"][j]
            lines.append(
                f"| {name} | {avg:.3f} | {stats.get('kl_to_reference', float('nan')):.3f} ± "
                f"{stats.get('kl_stderr', float('nan')):.3f} | "
                f"{stats.get('mean_length', float('nan')):.1f} |"
            )
        lines.append("")
    if results.get("speed"):
        lines += [
            "### Training speed (LoRA, this machine)",
            "",
            "| policy | steps | step 1 (s) | later steps, median (s) | generation, median (s) "
            "| generated tokens/s | decode path |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, sp in results["speed"].items():
            lines.append(
                f"| {name} | {sp['steps']} | {sp['first_step_s']:.1f} | {sp['median_step_s']:.1f}"
                f" | {sp['median_generation_s']:.1f} | {sp['median_tokens_per_s']:.2f} | "
                f"{sp['decode_path']} |"
            )
        lines.append("")
    lines += ["### Sample completions (first two evaluation prompts)", ""]
    for name, texts in results.get("samples", {}).items():
        for k, text in enumerate(texts):
            quoted = " ".join(text.split())[:300]
            lines.append(f"- **{name}**, prompt {k + 1}: {quoted}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
