"""Benchmark runner (docs/benchmarks.md): nlhf vs TRL 1.13 ``NashMDTrainer``, torch vs jax, tabular.

Every measurement runs in its own child process (so peak RSS is per run, read with
``os.wait4``), and the methods alternate A B A B … over ``--rounds`` so that load from
other processes on a shared machine hits them alike; ratios are taken within the same
invocation. Steps before ``warmup`` are dropped from each run; the remaining per-step
times of all rounds are pooled into a median.

    .venv/bin/python benchmarks/run.py              # tiny workload, 2 rounds, everything
    .venv/bin/python benchmarks/run.py --large      # 8 layers, hidden 512, 128 new tokens
    .venv/bin/python benchmarks/run.py --smoke      # 2 steps, nlhf only (tests)
    .venv/bin/python benchmarks/run.py --workload tabular-family   # every tabular algorithm
    .venv/bin/python benchmarks/run.py --workload llm-family   # every LLM algorithm, quickstart
    .venv/bin/python benchmarks/run.py --workload real   # SmolLM2-135M, 64 tokens, roofline
    .venv/bin/python benchmarks/run.py --workload real --smoke   # tiny Llama, 1 step
    nox -s bench -- --rounds 3

The TRL baseline lives in ``benchmarks/.trl-venv`` (created on first use: torch 2.13.0
CPU, trl 1.13.0, requests); it is never a dependency of nlhf. Results go to
``benchmarks/results/<workload>.json`` and a table is printed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import roofline  # noqa: E402
from workload import (  # noqa: E402
    LARGE,
    QWEN2_05B,
    REAL,
    REAL_SMOKE,
    SMOKE_STEPS,
    TINY,
    Assets,
    Workload,
    build_assets,
    load_prompts,
)

TRL_VENV = HERE / ".trl-venv"
TRL_PACKAGES = ["torch==2.13.0", "trl==1.13.0", "requests"]
SCRIPTS = {
    "trl_defaults": "trl_baseline.py",
    "trl_no_gc": "trl_baseline.py",
    "nlhf_torch": "nlhf_torch_bench.py",
    "nlhf_jax": "nlhf_jax_bench.py",
}
TARGETS = {
    # (numerator method, denominator method, target, meaning)
    "speedup_vs_trl_defaults": ("trl_defaults", "nlhf_torch", 5.0, ">="),
    "speedup_vs_trl_no_gc": ("trl_no_gc", "nlhf_torch", 2.0, ">="),
    "jax_over_torch": ("nlhf_jax", "nlhf_torch", 1.25, "<="),
}
REAL_TARGETS = {
    "speedup_vs_trl_defaults": ("trl_defaults", "nlhf_torch", 8.0, ">="),
    "speedup_vs_trl_no_gc": ("trl_no_gc", "nlhf_torch", 3.0, ">="),
    "jax_over_torch": ("nlhf_jax", "nlhf_torch", 1.1, "<="),
}
REAL_ORDER = ["nlhf_torch", "nlhf_jax", "trl_defaults", "trl_no_gc"]
ROOFLINE_TARGET = 0.6
"""Each phase of nlhf torch's step at ≥ this fraction of its roofline limit."""


# ------------------------------------------------------------------------- children
def trl_python(install: bool, share: bool = False) -> Path | None:
    """The TRL venv's python, creating the venv when ``install`` (None if unavailable).

    ``share``: layer the venv on this interpreter's site-packages (a ``.pth`` file) and
    install only ``trl==1.13.0 --no-deps``, so TRL runs on the same torch/transformers as
    nlhf and nothing else is downloaded."""
    py = TRL_VENV / "bin" / "python"
    check = [str(py), "-c", "import trl, requests; assert trl.__version__ == '1.13.0'"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    if not install:
        return None
    print(f"creating the TRL baseline environment in {TRL_VENV} (a few minutes)", flush=True)
    base = os.environ.get("NLHF_BENCH_PYTHON", "python3.11")
    if share:
        import site
        import sysconfig

        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
        rel = Path(sysconfig.get_path("purelib")).relative_to(sys.prefix)
        (TRL_VENV / rel / "zz-shared-site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
        # NLHF_BENCH_PIP_ARGS: e.g. "--no-index --find-links DIR" (benchmarks/gpu.sh)
        packages = [*os.environ.get("NLHF_BENCH_PIP_ARGS", "").split(), "--no-deps", "trl==1.13.0"]
    else:
        subprocess.run([base, "-m", "venv", str(TRL_VENV)], check=True)
        packages = TRL_PACKAGES
    subprocess.run([str(py), "-m", "pip", "install", "-q", *packages], check=True)
    return py if subprocess.run(check, capture_output=True).returncode == 0 else None


PIN_CPUS: set[int] | None = None
"""``--pin``: the CPUs every child is restricted to (``sched_setaffinity``), so a runtime
with threads of its own (XLA's CPU client) gets no more cores than ``--threads``."""


def run_child(
    cmd: list[str], env: dict[str, str], log: Path, timeout: float
) -> tuple[int, float, float]:
    """Run ``cmd`` (on :data:`PIN_CPUS` when set); return (exit code, wall seconds, peak
    RSS MiB of that child)."""
    t0 = time.perf_counter()
    cpus = PIN_CPUS
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    with log.open("ab") as f:
        f.write(f"\n$ {' '.join(cmd)}\n".encode())
        f.flush()
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, preexec_fn=pin
        )
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024.0


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRL_EXPERIMENTAL_SILENCE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        OPENBLAS_NUM_THREADS=str(threads),
        PYTHONWARNINGS="ignore",
    )
    return env


# ------------------------------------------------------------------------- summary
def summarize(runs: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Pooled per-step statistics of one method's runs (first ``warmup`` steps dropped)."""
    steps: list[float] = []
    cpu: list[float] = []
    tokens: list[int] = []
    per_round: list[float] = []
    gen: list[float] = []
    for r in runs:
        s = r["step_seconds"][warmup:] or r["step_seconds"][-1:]
        t = r["generated_tokens"][warmup:] or r["generated_tokens"][-1:]
        c = r.get("step_cpu_seconds", [])
        g = r.get("generation_seconds", [])
        steps += s
        tokens += t
        cpu += c[warmup:] or c[-1:]
        gen += g[warmup:] or g[-1:]
        per_round.append(statistics.median(s))
    med = statistics.median(steps)
    tok_per_step = statistics.median(tokens)
    phases: dict[str, Any] = {}
    if len(gen) == len(steps):
        phases = {
            "median_generation_seconds": statistics.median(gen),
            "median_update_seconds": statistics.median(
                a - b for a, b in zip(steps, gen, strict=True)
            ),
            "first_step_seconds": [r["step_seconds"][0] for r in runs],
            "first_generation_seconds": [
                r["generation_seconds"][0] for r in runs if r.get("generation_seconds")
            ],
        }
    return {
        **phases,
        "runs": len(runs),
        "measured_steps": len(steps),
        "median_step_seconds": med,
        "mean_step_seconds": statistics.fmean(steps),
        "min_step_seconds": min(steps),
        "max_step_seconds": max(steps),
        "per_round_median_step_seconds": per_round,
        "median_step_cpu_seconds": statistics.median(cpu) if cpu else None,
        "generated_tokens_per_step": tok_per_step,
        "generated_tokens_per_s": tok_per_step / med,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_rss_mb_after_setup": max(r.get("peak_rss_mb_after_setup", 0.0) for r in runs),
        "setup_seconds": statistics.median(r["setup_seconds"] for r in runs),
    }


def ratios(
    summary: dict[str, dict[str, Any]], targets: dict[str, tuple[str, str, float, str]] = TARGETS
) -> dict[str, Any]:
    """Speed-ups (pooled and same-round), memory ratios and the :data:`TARGETS`."""
    out: dict[str, Any] = {}
    for key, (num, den, target, sense) in targets.items():
        if num not in summary or den not in summary:
            continue
        a, b = summary[num], summary[den]
        value = a["median_step_seconds"] / b["median_step_seconds"]
        rounds = [
            x / y
            for x, y in zip(
                a["per_round_median_step_seconds"], b["per_round_median_step_seconds"], strict=False
            )
        ]
        cpu = None
        if a["median_step_cpu_seconds"] and b["median_step_cpu_seconds"]:
            cpu = a["median_step_cpu_seconds"] / b["median_step_cpu_seconds"]
        out[key] = {
            "value": value,
            "cpu_time_value": cpu,
            "same_round": rounds,
            "target": target,
            "met": value >= target if sense == ">=" else value <= target,
            "peak_rss_ratio": b["peak_rss_mb"] / a["peak_rss_mb"]
            if key != "jax_over_torch"
            else a["peak_rss_mb"] / b["peak_rss_mb"],
        }
    return out


def print_table(w: Workload, summary: dict[str, dict[str, Any]], rat: dict[str, Any]) -> None:
    if w.name.startswith("real"):
        return print_real_table(w, summary, rat)
    print(
        f"\n# workload {w.name}: Qwen2 {w.layers}L h{w.hidden} V{w.vocab_size}, batch "
        f"{w.batch_size}, {w.max_new_tokens} new tokens, beta={w.beta}, tau={w.tau}, "
        f"T={w.temperature}, {w.steps} steps ({w.warmup} warm-up)"
    )
    head = (
        f"{'method':<14}{'median s/step':>14}{'mean':>9}{'cpu s/step':>11}{'gen tok/s':>11}"
        f"{'peak RSS MiB':>14}"
    )
    print(head + f"{'vs nlhf_torch':>15}")
    print("-" * (len(head) + 15))
    base = summary.get("nlhf_torch")
    for name, s in summary.items():
        rel = ""
        if base is not None:
            rel = f"{s['median_step_seconds'] / base['median_step_seconds']:.2f}x"
        cpu = s["median_step_cpu_seconds"]
        print(
            f"{name:<14}{s['median_step_seconds']:>14.4f}{s['mean_step_seconds']:>9.4f}"
            f"{cpu if cpu is not None else float('nan'):>11.4f}"
            f"{s['generated_tokens_per_s']:>11.0f}{s['peak_rss_mb']:>14.0f}{rel:>15}"
        )
    for key, r in rat.items():
        sense = ">=" if key.startswith("speedup") else "<="
        rounds = ", ".join(f"{x:.2f}" for x in r["same_round"])
        cpu = f"{r['cpu_time_value']:.2f}x" if r["cpu_time_value"] else "n/a"
        print(
            f"{key}: {r['value']:.2f}x wall (per round: {rounds}; target {sense} {r['target']}: "
            f"{'met' if r['met'] else 'MISSED'}); {cpu} CPU time; "
            f"peak RSS ratio {r['peak_rss_ratio']:.2f}"
        )


def print_real_table(w: Workload, summary: dict[str, dict[str, Any]], rat: dict[str, Any]) -> None:
    print(
        f"\n# workload {w.name}: {w.model}, batch {w.batch_size}, {w.max_new_tokens} new tokens, "
        f"prompts <= {w.max_prompt_tokens} tokens, {w.steps} steps ({w.warmup} warm-up)"
    )
    head = (
        f"{'method':<14}{'s/step':>9}{'gen s':>9}{'update s':>10}{'gen tok/s':>10}"
        f"{'RSS MiB':>9}{'gen roof':>9}{'upd roof':>9}{'vs torch':>9}"
    )
    print(head)
    print("-" * len(head))
    base = summary.get("nlhf_torch")
    for name, s in summary.items():
        rel = f"{s['median_step_seconds'] / base['median_step_seconds']:.2f}x" if base else ""
        roof = s.get("roofline_fraction", {})
        print(
            f"{name:<14}{s['median_step_seconds']:>9.2f}"
            f"{s.get('median_generation_seconds', float('nan')):>9.2f}"
            f"{s.get('median_update_seconds', float('nan')):>10.2f}"
            f"{s['generated_tokens_per_s']:>10.1f}{s['peak_rss_mb']:>9.0f}"
            f"{roof.get('generation', float('nan')):>9.2f}{roof.get('update', float('nan')):>9.2f}"
            f"{rel:>9}"
        )
    for key, r in rat.items():
        if key.startswith("roofline"):
            print(
                f"{key}: {r['value']:.2f} (target >= {r['target']}: "
                f"{'met' if r['met'] else 'MISSED'})"
            )
            continue
        sense = ">=" if key.startswith("speedup") else "<="
        rounds = ", ".join(f"{x:.2f}" for x in r["same_round"])
        print(
            f"{key}: {r['value']:.2f}x (per round: {rounds}; target {sense} {r['target']}: "
            f"{'met' if r['met'] else 'MISSED'}); peak RSS ratio {r['peak_rss_ratio']:.2f}"
        )


def measure_peaks(
    env: dict[str, str], log: Path, threads: int, tmp: Path, tag: str, device: str = "cpu"
) -> dict:
    """Matmul FLOP/s and memory bandwidth, measured in a child like the benchmark runs."""
    out = tmp / f"peaks-{tag}.json"
    cmd = [sys.executable, str(HERE / "roofline.py"), "--measure", "--threads", str(threads)]
    cmd += ["--device", device]
    code, _, _ = run_child([*cmd, "--out", str(out)], env, log, 600)
    if code != 0 or not out.exists():
        raise RuntimeError(f"measuring the machine's peaks failed (exit {code}, see {log})")
    res = json.loads(out.read_text())
    res["load_average"] = os.getloadavg()
    res["tag"] = tag
    print(
        f"  peaks ({tag}): {res['matmul_flops'] / 1e9:.1f} GFLOP/s fp32 matmul, "
        f"{res['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, load {res['load_average'][0]:.1f}",
        flush=True,
    )
    return res


def real_roofline(
    w: Workload, assets: Assets, peaks: list[dict[str, Any]], summary: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The step's roofline (benchmarks/roofline.py) against the best measured peaks, and each
    method's generation and update time as a fraction of it (stored in ``summary``)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets.policy)
    prompts = load_prompts(assets.prompts)
    lens = [len(tok(p).input_ids) for p in prompts]
    # prompts are used in order, batch_size per step: the ones the measured steps saw
    seen = lens[: w.steps * w.batch_size] or lens
    roof = roofline.step_roofline(
        json.loads((assets.policy / "config.json").read_text()),
        json.loads((assets.reward / "config.json").read_text()),
        batch=w.batch_size,
        prompt_len=statistics.fmean(seen),
        new_tokens=w.max_new_tokens,
        peak_flops=max(p["matmul_flops"] for p in peaks),
        bandwidth=max(p["bandwidth_bytes_per_s"] for p in peaks),
    )
    roof["peaks"] = peaks
    for s in summary.values():
        if "median_generation_seconds" in s:
            s["roofline_fraction"] = roofline.fractions(
                roof, s["median_generation_seconds"], s["median_update_seconds"]
            )
            s["generation_flops_per_s"] = (
                roof["generation"]["flops"] / s["median_generation_seconds"]
            )
            s["update_flops_per_s"] = roof["update"]["flops"] / s["median_update_seconds"]
            if s.get("median_step_cpu_seconds"):
                # against CPU time: what the step would reach with a core of its own
                s["roofline_fraction_cpu_time"] = (
                    roof["step"]["limit_seconds"] / s["median_step_cpu_seconds"]
                )
            bf16 = [p.get("bf16_datasheet_flops") or p.get("bf16_matmul_flops") for p in peaks]
            if any(bf16):
                # model-FLOPs utilisation of the update against the GPU's bf16 peak
                s["update_mfu_bf16"] = s["update_flops_per_s"] / max(x for x in bf16 if x)
    return roof


def roofline_ratios(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """nlhf torch's roofline fractions against :data:`ROOFLINE_TARGET`."""
    torch_roof = summary.get("nlhf_torch", {}).get("roofline_fraction") or {}
    return {
        f"roofline_{phase}": {
            "value": value,
            "target": ROOFLINE_TARGET,
            "met": value >= ROOFLINE_TARGET,
        }
        for phase, value in torch_roof.items()
    }


def reroof(path: Path, assets_dir: str) -> dict[str, Any]:
    """Recompute the roofline of a saved real-workload result (same peaks and timings),
    e.g. after a change to benchmarks/roofline.py; rewrites ``path``."""
    result = json.loads(path.read_text())
    w = Workload.from_json(json.dumps(result["workload"]))
    assets = build_assets(w, assets_dir)
    result["roofline"] = real_roofline(w, assets, result["roofline"]["peaks"], result["summary"])
    rat = {k: v for k, v in result["ratios"].items() if not k.startswith("roofline")}
    result["ratios"] = {**rat, **roofline_ratios(result["summary"])}
    path.write_text(json.dumps(result, indent=1))
    print_table(w, result["summary"], result["ratios"])
    return result


def print_tabular(t: dict[str, Any]) -> None:
    print(f"\n# tabular: {t['size']}x{t['size']} random game, tol {t['tol']:g}")
    print(f"{'method':<36}{'median s':>10}{'gap':>11}{'exploit.':>11}{'support':>9}")
    for name, r in t["results"].items():
        print(
            f"{name:<36}{r['median_seconds']:>10.3f}{r['duality_gap']:>11.2e}"
            f"{r['exploitability']:>11.2e}{r['support']:>9}"
        )


def tabular_family(args: argparse.Namespace) -> dict[str, Any]:
    """``--workload tabular-family``: benchmarks/tabular_family.py in a child process
    (one BLAS thread per ``--threads``), results in ``<out-dir>/tabular-family.json``;
    ``--smoke`` runs its seconds-long variant (``tabular-family-smoke.json``, no figures)."""
    name = "tabular-family-smoke" if args.smoke else "tabular-family"
    out = Path(args.out_dir) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    log = Path(args.assets_dir) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    cmd = [sys.executable, str(HERE / "tabular_family.py"), "--out", str(out)]
    cmd += ["--smoke", "--no-figures"] if args.smoke else []
    code, wall, rss = run_child(cmd, child_env(args.threads), log, args.timeout)
    failures = [] if code == 0 and out.exists() else [f"{name}: exit {code} (see {log})"]
    print(log.read_text()[-4000:])
    print(f"{name}: exit {code}, wall {wall:.0f} s, peak RSS {rss:.0f} MiB; results: {out}")
    return {"workload": name, "wall_seconds": wall, "peak_rss_mb": rss, "failures": failures}


def llm_family(args: argparse.Namespace) -> dict[str, Any]:
    """``--workload llm-family``: benchmarks/llm_family.py in a child process (every LLM
    algorithm on the quickstart population, one ``nlhf run`` each, runs under
    ``<assets-dir>/<name>/``), results in ``<out-dir>/llm-family.json``; ``--smoke``: 2
    algorithms, 2 steps (``llm-family-smoke.json``); ``--steps`` overrides the steps."""
    name = "llm-family-smoke" if args.smoke else "llm-family"
    out = Path(args.out_dir) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    log = Path(args.assets_dir) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    cmd = [sys.executable, str(HERE / "llm_family.py"), "--out", str(out)]
    cmd += ["--work-dir", str(Path(args.assets_dir) / name)]
    cmd += ["--smoke"] if args.smoke else []
    cmd += ["--steps", str(args.steps)] if args.steps is not None else []
    code, wall, rss = run_child(cmd, child_env(args.threads), log, args.timeout)
    failures = [] if code == 0 and out.exists() else [f"{name}: exit {code} (see {log})"]
    print(log.read_text()[-4000:])
    print(f"{name}: exit {code}, wall {wall:.0f} s, peak RSS {rss:.0f} MiB; results: {out}")
    return {"workload": name, "wall_seconds": wall, "peak_rss_mb": rss, "failures": failures}


def _per_method(text: str | None, kind: type) -> dict[str, Any]:
    """``"a=1,b=2"`` → ``{"a": kind("1"), "b": kind("2")}`` (methods of :data:`SCRIPTS`)."""
    out: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item:
            continue
        name, _, value = item.partition("=")
        if name not in SCRIPTS or not value:
            raise SystemExit(
                f"bad per-method setting {item!r}: use METHOD=VALUE, METHOD in {', '.join(SCRIPTS)}"
            )
        out[name] = kind(value)
    return out


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--workload",
        choices=("nash", "real", "qwen2-0.5b", "tabular-family", "llm-family"),
        default="nash",
        help="nash: the LLM trainers and tabular solvers (default); real: SmolLM2-135M-Instruct "
        "with a roofline (no tabular); qwen2-0.5b: a random Qwen2-0.5B shape (for GPUs); "
        "tabular-family: the convergence benchmark of every "
        "tabular algorithm (benchmarks/tabular_family.py); llm-family: every LLM algorithm on "
        "the quickstart population (benchmarks/llm_family.py)",
    )
    ap.add_argument("--smoke", action="store_true", help="2 steps, nlhf only, small tabular")
    ap.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="real workloads: cuda runs nlhf with training.precision bf16-mixed and TRL on "
        "the GPU (benchmarks/gpu.sh)",
    )
    ap.add_argument("--large", action="store_true", help="8 layers, hidden 512, 128 tokens")
    ap.add_argument("--rounds", type=int, default=2, help="A B A B repetitions")
    ap.add_argument("--steps", type=int, help="override the workload's steps")
    ap.add_argument("--warmup", type=int, help="override the workload's warm-up steps")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per child")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="restrict every child to the first --threads CPUs this process may use "
        "(Linux), so no method uses more cores than --threads",
    )
    ap.add_argument("--methods", help="comma list of " + ",".join(SCRIPTS))
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--skip-jax", action="store_true")
    ap.add_argument("--skip-tabular", action="store_true")
    ap.add_argument("--no-install", action="store_true", help="never create the TRL venv")
    ap.add_argument(
        "--trl-share-site",
        action="store_true",
        help="create the TRL venv on this interpreter's packages (pip install --no-deps trl)",
    )
    ap.add_argument("--tabular-size", type=int, help="default 1000 (smoke: 60)")
    ap.add_argument("--tabular-repeats", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per child")
    ap.add_argument("--method-steps", help="per-method steps, e.g. trl_defaults=1 (that run only)")
    ap.add_argument(
        "--method-timeout",
        help="per-method seconds per child, e.g. trl_defaults=600; a child stopped by its "
        "timeout keeps the steps it finished (recorded under timed_out)",
    )
    ap.add_argument(
        "--reroof", metavar="RESULT", help="recompute the roofline of a saved real-workload JSON"
    )
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--assets-dir", default=str(ROOT / "runs" / "bench-assets"))
    args = ap.parse_args(argv)
    if args.reroof:
        return reroof(Path(args.reroof), args.assets_dir)
    if args.workload == "tabular-family":
        return tabular_family(args)
    if args.workload == "llm-family":
        return llm_family(args)

    real = args.workload in ("real", "qwen2-0.5b")
    w = LARGE if args.large else TINY
    if real:
        w = REAL_SMOKE if args.smoke else (REAL if args.workload == "real" else QWEN2_05B)
        args.skip_tabular = True
        if args.device == "cuda":
            w = w.replace(name=f"{w.name}-cuda", device="cuda", precision="bf16-mixed")
    elif args.smoke:
        w = w.replace(name=f"{w.name}-smoke", steps=SMOKE_STEPS, warmup=1)
    if args.steps is not None:
        w = w.replace(steps=args.steps)
    if args.warmup is not None:
        w = w.replace(warmup=args.warmup)
    methods = args.methods.split(",") if args.methods else list(REAL_ORDER if real else SCRIPTS)
    if (args.smoke and not args.methods) or args.skip_trl:  # smoke: TRL only when named
        methods = [m for m in methods if not m.startswith("trl")]
    if args.skip_jax:
        methods = [m for m in methods if m != "nlhf_jax"]
    rounds = 1 if args.smoke else args.rounds
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Path(args.assets_dir) / f"{w.name}.log"  # children's output (git-ignored runs/)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")

    trl_py = None
    if any(m.startswith("trl") for m in methods):
        trl_py = trl_python(install=not args.no_install, share=args.trl_share_site)
        if trl_py is None:
            print("TRL 1.13.0 venv unavailable: skipping the baseline", file=sys.stderr)
            methods = [m for m in methods if not m.startswith("trl")]
    print(f"building the workload assets under {args.assets_dir}", flush=True)
    assets = build_assets(w, args.assets_dir)
    env = child_env(args.threads)
    global PIN_CPUS
    if args.pin:
        PIN_CPUS = set(sorted(os.sched_getaffinity(0))[: args.threads])
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    failures: list[str] = []
    peaks: list[dict[str, Any]] = []
    uptimes: list[str] = []
    timed_out: list[str] = []
    method_steps = _per_method(args.method_steps, int)
    timeouts = _per_method(args.method_timeout, float)
    with tempfile.TemporaryDirectory() as tmp:
        wfile = Path(tmp) / "workload.json"
        wfile.write_text(w.to_json())
        if real:
            peaks.append(measure_peaks(env, log, args.threads, Path(tmp), "start", w.device))
        for rnd in range(rounds):
            if real and rnd:
                peaks.append(
                    measure_peaks(env, log, args.threads, Path(tmp), f"round-{rnd}", w.device)
                )
            for m in methods:
                out = Path(tmp) / f"{m}-{rnd}.json"
                py = str(trl_py) if m.startswith("trl") else sys.executable
                mfile = wfile
                if m in method_steps:
                    mfile = Path(tmp) / f"workload-{m}.json"
                    mfile.write_text(w.replace(steps=method_steps[m]).to_json())
                cmd = [py, str(HERE / SCRIPTS[m]), "--workload", str(mfile)]
                cmd += ["--assets", str(assets.root), "--out", str(out)]
                cmd += ["--threads", str(args.threads)]
                if m.startswith("trl"):
                    cmd += ["--variant", m.removeprefix("trl_")]
                code, wall, rss = run_child(cmd, env, log, timeouts.get(m, args.timeout))
                partial = json.loads(out.read_text()) if out.exists() else None
                if code != 0 and partial and partial.get("partial") and partial["step_seconds"]:
                    # stopped by the timeout after some steps: keep the finished ones
                    timed_out.append(f"{m} round {rnd + 1}: stopped after {wall:.0f} s")
                    partial["timed_out"] = True
                elif code != 0 or partial is None:
                    limit = timeouts.get(m, args.timeout)
                    why = f"stopped by its {limit:.0f} s timeout" if wall >= limit else "exit"
                    failures.append(f"{m} round {rnd}: {why} {code} after {wall:.0f} s (see {log})")
                    print(f"  {m} round {rnd + 1}: FAILED (exit {code}, log {log})", flush=True)
                    continue
                rec = partial
                rec.update(
                    peak_rss_mb=rss, wall_seconds=wall, round=rnd, load_average=os.getloadavg()
                )
                uptimes.append(f"{m} round {rnd + 1}: load {os.getloadavg()}")
                runs[m].append(rec)
                med = statistics.median(rec["step_seconds"][w.warmup :] or rec["step_seconds"])
                print(
                    f"  {m} round {rnd + 1}/{rounds}: median {med:.4f} s/step, "
                    f"peak RSS {rss:.0f} MiB, wall {wall:.1f} s",
                    flush=True,
                )
        tabular = None
        if not args.skip_tabular:
            size = args.tabular_size or (60 if args.smoke else 1000)
            out = Path(tmp) / "tabular.json"
            cmd = [sys.executable, str(HERE / "tabular_bench.py"), "--size", str(size)]
            cmd += ["--repeats", str(1 if args.smoke else args.tabular_repeats), "--out", str(out)]
            code, wall, rss = run_child(cmd, env, log, args.timeout)
            if code == 0 and out.exists():
                tabular = json.loads(out.read_text())
                tabular["peak_rss_mb"] = rss
            else:
                failures.append(f"tabular: exit {code} (see {log})")

        if real:
            peaks.append(measure_peaks(env, log, args.threads, Path(tmp), "end", w.device))

    summary = {m: summarize(r, w.warmup) for m, r in runs.items() if r}
    rat = ratios(summary, REAL_TARGETS if real else TARGETS)
    roof = None
    if real:
        roof = real_roofline(w, assets, peaks, summary)
        rat.update(roofline_ratios(summary))
    result = {
        "workload": json.loads(w.to_json()),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "host": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "threads": args.threads,
        "pinned_cpus": sorted(PIN_CPUS) if PIN_CPUS is not None else None,
        "rounds": rounds,
        "order": methods,
        "summary": summary,
        "ratios": rat,
        "tabular": tabular,
        "roofline": roof,
        "load_averages": uptimes,
        "timed_out": timed_out,
        "method_steps": method_steps,
        "runs": {
            m: [
                {k: v for k, v in r.items() if k not in ("workload",)}
                for r in rs  # per-step raw times kept
            ]
            for m, rs in runs.items()
        },
        "failures": failures,
    }
    path = out_dir / f"{w.name}.json"
    path.write_text(json.dumps(result, indent=1))
    if summary:
        print_table(w, summary, rat)
    if tabular:
        print_tabular(tabular)
    print(f"\nresults: {path}")
    if failures:
        print("failures:\n  " + "\n  ".join(failures), file=sys.stderr)
    return result


if __name__ == "__main__":
    res = main()
    sys.exit(1 if res["failures"] else 0)
