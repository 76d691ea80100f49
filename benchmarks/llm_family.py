"""Every LLM algorithm of ``task: nash`` on the quickstart population, under one budget.

The quickstart task (examples/nlhf-quickstart, ``specs/quickstart.yaml``): a tiny Llama
SFT-ed to answer " apple" / " banana" / " cherry" with μ = (0.25, 0.5, 0.25), judged by
the ``population`` oracle, whose majority preference is a Condorcet cycle. Each algorithm
runs ``nlhf run`` in its own process from the same spec (seed, steps, batch, lr, τ,
tokens); only the algorithm block changes, keeping the quickstart's β and the η,
``num_samples`` and ``magnet_every`` of ``specs/quickstart-<name>.yaml``.

Per algorithm it reports, from the final checkpoint and independently of the oracle's
``summary`` hook, the answer distribution π(·|x) of each prompt (teacher-forced sequence
probabilities of the three answers + EOS with transformers, renormalised), its total
variation to π*_τ = softmax(log μ + Pπ*_τ/τ) (Newton solve
:func:`nlhf.tabular.solvers.regularized_nash`, mean over prompts) and KL(π‖μ) over the
answers; next to them the hook's own ``tv_policy_to_nash`` (for sppo, which has no τ, the
hook measures against the maximal lottery instead), the last step's ``kl`` metric, and
the wall and CPU seconds of the process (CPU: user + system of the child).

    .venv/bin/python benchmarks/llm_family.py            # 11 algorithms, 400 steps, jax
    .venv/bin/python benchmarks/llm_family.py --smoke    # 2 algorithms, 2 steps (tests)
    .venv/bin/python benchmarks/llm_family.py --algorithms dpo,ipo --merge  # add offline
    .venv/bin/python benchmarks/llm_family.py --markdown  # the table from the JSON
    .venv/bin/python benchmarks/run.py --workload llm-family

Writes ``benchmarks/results/llm-family.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
ASSETS = ROOT / "runs" / "quickstart-assets"
TAU = 0.05
"""The quickstart's τ, for every algorithm that has one (sppo has none)."""
ANSWERS = (" apple", " banana", " cherry")
ALGORITHMS: dict[str, dict[str, Any]] = {
    "nash_md_pg": {"beta": 0.125, "tau": TAU, "kl_estimator": "exact"},
    "self_play": {"tau": TAU, "kl_estimator": "exact"},
    "best_response": {"tau": TAU, "kl_estimator": "exact"},
    "nash_ema_pg": {"tau": TAU, "kl_estimator": "exact"},
    "rlhf_pg": {"tau": TAU, "kl_estimator": "exact"},
    "online_ipo": {"beta": 0.125, "tau": TAU, "kl_estimator": "exact"},
    "egpo": {"tau": TAU},
    "mpo": {"tau": TAU, "magnet_every": 100, "kl_estimator": "exact"},
    "onpo": {"tau": TAU, "eta": 2.0},
    "inpo": {"tau": TAU, "eta": 2.0},
    "sppo": {"eta": 2.0, "num_samples": 4},
}
"""The algorithm block of each run (besides ``name``); everything else is the quickstart's."""
OFFLINE: dict[str, dict[str, Any]] = {"dpo": {"tau": TAU}, "ipo": {"tau": TAU}}
"""``task: offline`` baselines (``--offline``): one epoch of ``steps × batch_size`` pairs
of μ's answers labelled by the population (:func:`write_pairs`)."""
SMOKE_ALGORITHMS = ("nash_md_pg", "inpo")
SMOKE_STEPS = 2


def tv(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation ½ Σ |a − b|."""
    return float(0.5 * np.abs(a - b).sum())


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p‖q) = Σ p log(p/q)."""
    return float(np.sum(p * (np.log(p) - np.log(q))))


def answer_distributions(model_dir: Path, prompts: list[str]) -> np.ndarray:
    """π(a|x) over the quickstart's answers for each prompt: exp of the teacher-forced
    log-prob of the answer's tokens + EOS after ``tokenizer(x)`` (temperature 1, as the
    quickstart samples), renormalised over the answers. Shape (prompts, answers)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    out = np.zeros((len(prompts), len(ANSWERS)))
    with torch.no_grad():
        for i, x in enumerate(prompts):
            p_ids = tok(x)["input_ids"]
            for j, a in enumerate(ANSWERS):
                a_ids = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                ids = torch.tensor([p_ids + a_ids])
                logp = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
                targets = ids[0, 1:]
                rows = torch.arange(len(p_ids) - 1, ids.shape[1] - 1)
                out[i, j] = float(logp[rows, targets[rows]].sum().exp())
    return out / out.sum(1, keepdims=True)


def distinct_prompts(path: Path) -> list[str]:
    """The prompts of the quickstart's ``prompts.jsonl``, distinct, in file order."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return list(dict.fromkeys(r["prompt"] for r in rows))


def write_pairs(
    path: Path, prompts: list[str], mu: np.ndarray, P: np.ndarray, n: int, seed: int
) -> None:
    """``n`` offline preference pairs, the data an RLHF pipeline would collect: a uniform
    prompt x, two different answers y ≠ y' drawn from μ(·|x), y chosen with probability
    P(y ≻ y') (an annotator drawn from the population), as ``prompt, chosen, rejected``."""
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < n:
        i = int(rng.integers(len(prompts)))
        y, y2 = rng.choice(len(ANSWERS), size=2, p=mu[i])
        if y == y2:
            continue
        w, lose = (y, y2) if rng.random() < P[y, y2] else (y2, y)
        rows.append({"prompt": prompts[i], "chosen": ANSWERS[w], "rejected": ANSWERS[lose]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_spec(
    name: str, steps: int, out_dir: Path, pairs: Path | None = None, seed: int | None = None
) -> dict[str, Any]:
    """The quickstart spec with algorithm ``name`` (:data:`ALGORITHMS`; :data:`OFFLINE`
    as ``task: offline`` on ``pairs``), ``steps`` steps, absolute asset paths, ``out_dir``
    as the output directory and ``seed`` (default: the quickstart's)."""
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec["seed"] = spec["seed"] if seed is None else seed
    spec["policy"]["model"] = str(ASSETS / "policy")
    spec["data"]["path"] = str(ASSETS / "prompts.jsonl")
    spec["training"]["steps"] = steps
    spec["output"] = {"dir": str(out_dir), "plots": False}
    if name in OFFLINE:
        assert pairs is not None
        spec.update(task="offline", algorithm={"name": name, **OFFLINE[name]})
        spec["data"] = {"path": str(pairs), "format": "preference"}
        spec["training"].pop("generation")
        del spec["preference"]
    else:
        spec["algorithm"] = {"name": name, **ALGORITHMS[name]}
    return spec


def run_one(
    name: str,
    steps: int,
    backend: str,
    work: Path,
    timeout: float,
    env: dict[str, str],
    pairs: Path | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """One ``nlhf run`` of the quickstart with ``name``: its process's wall and CPU seconds
    and the summary; ``error`` (the command and the tail of its output) if it failed."""
    out_dir = work / name
    spec_path = work / f"{name}.yaml"
    spec = run_spec(name, steps, out_dir, pairs, seed)
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    log = work / f"{name}.log"
    cmd = [str(Path(sys.executable).with_name("nlhf")), "run", str(spec_path)]
    cmd += ["--backend", backend, "--overwrite"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with log.open("w") as f:
        try:
            code = subprocess.run(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=ROOT
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row: dict[str, Any] = {
        "algorithm": spec["algorithm"],
        "task": spec["task"],
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "run_dir": str(out_dir),
    }
    summary_path = out_dir / "summary.json"
    if code != 0 or not summary_path.exists():
        tail = "\n".join(log.read_text().splitlines()[-12:])
        why = "timed out" if code is None else f"exit {code}"
        row["error"] = f"{' '.join(cmd)}: {why}\n{tail}"
        return row
    summary = json.loads(summary_path.read_text())
    records = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines() if x]
    step_s = [r["step_seconds"] for r in records[1:] if "step_seconds" in r]
    row.update(
        checkpoint=summary["checkpoint"],
        train_wall_seconds=round(summary["wall_seconds"], 2),
        median_step_seconds=round(float(np.median(step_s)), 4) if step_s else None,
        final_kl_metric=summary["final"].get("kl"),
    )
    if "oracle" not in summary:  # task: offline has no preference, so no oracle hook
        return row
    oracle = summary["oracle"]
    row.update(
        summary_tv_policy_to_target=oracle["tv_policy_to_nash"],
        summary_tv_sampled_to_target=oracle["tv_sampled_to_nash"],
        summary_target="regularized_nash" if oracle["tau"] > 0 else "maximal_lottery",
        summary_tau=oracle["tau"],
        known_answer_mass=oracle["known_answer_mass"],
    )
    return row


def measure(row: dict[str, Any], prompts: list[str], mu: np.ndarray, ne: np.ndarray) -> None:
    """Adds the checkpoint's answer distribution and its TV to π*_τ and KL to μ to ``row``."""
    pi = answer_distributions(Path(row["checkpoint"]), prompts)
    row["policy"] = dict(
        zip([a.strip() for a in ANSWERS], pi.mean(0).round(4).tolist(), strict=True)
    )
    row["tv_policy_to_nash"] = float(np.mean([tv(p, n) for p, n in zip(pi, ne, strict=True)]))
    row["kl_answers_to_reference"] = float(np.mean([kl(p, m) for p, m in zip(pi, mu, strict=True)]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="2 algorithms, 2 steps")
    ap.add_argument("--steps", type=int, help="default: the quickstart's (smoke: 2)")
    ap.add_argument("--backend", default="jax", choices=("jax", "torch"))
    ap.add_argument("--seed", type=int, help="default: the quickstart's")
    ap.add_argument("--algorithms", help="comma list of " + ",".join(ALGORITHMS))
    ap.add_argument("--offline", action="store_true", help="also " + ", ".join(OFFLINE))
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the other algorithms' results of an existing --out of the same budget",
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "bench" / "llm-family"))
    ap.add_argument("--out", default=str(HERE / "results" / "llm-family.json"))
    ap.add_argument("--markdown", action="store_true", help="print the table of --out, run nothing")
    args = ap.parse_args(argv)
    if args.markdown:
        out = json.loads(Path(args.out).read_text())
        print(markdown(out))
        return out
    from nlhf.tabular.solvers import regularized_nash
    from nlhf_quickstart.assets import prepare_assets
    from nlhf_quickstart.population import PopulationOracle

    quick = yaml.safe_load(QUICKSTART.read_text())
    seed = quick["seed"] if args.seed is None else args.seed
    default_steps = SMOKE_STEPS if args.smoke else quick["training"]["steps"]
    steps = args.steps or default_steps
    names = args.algorithms.split(",") if args.algorithms else list(ALGORITHMS)
    if args.smoke and not args.algorithms:
        names = list(SMOKE_ALGORITHMS)
    names += list(OFFLINE) if args.offline else []
    unknown = sorted(set(names) - set(ALGORITHMS) - set(OFFLINE))
    if unknown:
        ap.error(
            f"--algorithms: unknown {unknown}; choose from {', '.join([*ALGORITHMS, *OFFLINE])}"
        )
    if not (ASSETS / "policy" / "model.safetensors").exists():
        prepare_assets(ASSETS)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    prompts = distinct_prompts(ASSETS / "prompts.jsonl")
    mu = answer_distributions(ASSETS / "policy", prompts)
    P = PopulationOracle().P
    ne = np.stack([regularized_nash(P, m, TAU) for m in mu])
    env = dict(os.environ)
    pairs = work / "pairs.jsonl"
    if any(name in OFFLINE for name in names):
        n = steps * quick["training"]["batch_size"]
        write_pairs(pairs, prompts, mu, P, n, seed)
    results: dict[str, Any] = {}
    for name in names:
        print(f"llm-family: {name}, {steps} steps on {args.backend}", flush=True)
        row = run_one(name, steps, args.backend, work, args.timeout, env, pairs, seed)
        if "error" not in row:
            measure(row, prompts, mu, ne)
            print(
                f"  TV to pi*_tau {row['tv_policy_to_nash']:.4f}, wall {row['wall_seconds']:.0f} s",
                flush=True,
            )
        else:
            print(f"  FAILED: {row['error']}", flush=True)
        results[name] = row
    t = quick["training"]
    out = {
        "workload": "llm-family-smoke" if args.smoke else "llm-family",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "backend": args.backend,
        "budget": {
            "steps": steps,
            "quickstart_steps": quick["training"]["steps"],
            "batch_size": t["batch_size"],
            "lr": t["lr"],
            "max_grad_norm": t["max_grad_norm"],
            "max_new_tokens": t["generation"]["max_new_tokens"],
            "temperature": t["generation"]["temperature"],
            "seed": seed,
            "tau": TAU,
        },
        "prompts": prompts,
        "answers": [a.strip() for a in ANSWERS],
        "preference_matrix": P.tolist(),
        "reference": {
            "policy": dict(
                zip([a.strip() for a in ANSWERS], mu.mean(0).round(4).tolist(), strict=True)
            ),
            "tv_to_nash": float(np.mean([tv(m, n) for m, n in zip(mu, ne, strict=True)])),
        },
        "regularized_nash": dict(
            zip([a.strip() for a in ANSWERS], ne.mean(0).round(4).tolist(), strict=True)
        ),
        "results": results,
        "failures": [n for n, r in results.items() if "error" in r],
    }
    old = Path(args.out)
    if args.merge and old.exists():
        before = json.loads(old.read_text())
        if before["budget"] != out["budget"] or before["backend"] != out["backend"]:
            ap.error(f"--merge: {old} has another budget or backend; use another --out")
        merged = {**before["results"], **results}
        order = [*ALGORITHMS, *OFFLINE]
        out["results"] = {k: merged[k] for k in sorted(merged, key=order.index)}
        out["failures"] = [n for n, r in out["results"].items() if "error" in r]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(markdown(out))
    print(f"results: {args.out}")
    return out


def markdown(out: dict[str, Any]) -> str:
    """The results as the table of docs/algorithms.md."""
    head = (
        "| algorithm | TV(π, π*_τ) | KL(π‖μ) answers | π (apple, banana, cherry) "
        "| step ms | wall s | CPU s |\n|---|---|---|---|---|---|---|"
    )
    ref = out["reference"]
    lines = [
        head,
        f"| μ (reference) | {ref['tv_to_nash']:.3f} | 0 | "
        f"{', '.join(f'{v:.3f}' for v in ref['policy'].values())} | – | – | – |",
    ]
    for name, r in sorted(
        out["results"].items(), key=lambda kv: kv[1].get("tv_policy_to_nash", 9.0)
    ):
        if "error" in r:
            lines.append(f"| `{name}` | failed | | | | {r['wall_seconds']:.0f} | |")
            continue
        label = f"`{name}`" + (" (offline)" if r.get("task") == "offline" else "")
        lines.append(
            f"| {label} | {r['tv_policy_to_nash']:.3f} | {r['kl_answers_to_reference']:.3f} | "
            f"{', '.join(f'{v:.3f}' for v in r['policy'].values())} | "
            f"{1000 * r['median_step_seconds']:.0f} | {r['wall_seconds']:.0f} | {r['cpu_seconds']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if not main()["failures"] else 1)
