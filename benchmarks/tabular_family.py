"""Convergence benchmark of every tabular algorithm (docs/algorithms.md, "Benchmark").

For each game (dice, RPS, the population game, random games of 10, 100 and 1000
responses) and each τ, every algorithm of :mod:`nlhf.tabular.dynamics` runs from π_0 = μ
with ``eta: auto`` for a fixed iteration cap N. At every iteration the benchmark measures,
against two oracles that do not use the dynamics:

- the **duality gap** of the τ-regularised game (:func:`nlhf.tabular.metrics.duality_gap`,
  0 iff π = π*_τ) and KL(π*_τ‖π_t), with π*_τ from the Newton solver
  :func:`nlhf.tabular.solvers.regularized_nash`;
- the **exploitability** max_y P(y ≻ π_t) − ½, 0 iff π_t is a maximal lottery: the τ → 0
  oracle, the LP's :func:`nlhf.tabular.solvers.maximal_lottery`, whose distance to π*_τ is
  reported per τ (exploitability(π*_τ) is the floor a τ-regularised method can reach).

Wall-clock and CPU time cover the dynamics only (the metrics are computed afterwards, in
one vectorised pass per chunk of iterations); the time at an iteration inside a chunk is
interpolated linearly. A τ = 0 panel runs the algorithms defined there (self_play, which
is also omd and sppo at τ = 0, egpo, onpo, mpo with a magnet refresh, best_response) on
the three 3-response games against the maximal lottery. SPPO has no KL term, so its run
(τ = 0) is measured against each τ; its average iterate π̄_t is reported next to the last.

    .venv/bin/python benchmarks/tabular_family.py          # the full benchmark (~5 CPU-min)
    .venv/bin/python benchmarks/tabular_family.py --smoke  # seconds (tests)
    .venv/bin/python benchmarks/tabular_family.py --replot --markdown  # figures, tables
    .venv/bin/python benchmarks/run.py --workload tabular-family

Writes ``benchmarks/results/tabular-family.json`` and the figures
``docs/figures/tabular-<game>.png`` (``--figures-dir``; ``--no-figures`` skips them).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nlhf.tabular import dynamics
from nlhf.tabular.games import dice, population, random_game, rps
from nlhf.tabular.metrics import duality_gap, exploitability, kl_divergence
from nlhf.tabular.solvers import maximal_lottery, regularized_nash
from scipy.special import logsumexp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_GAP = 1e-8
CHUNK = 2048
"""Iterations per timed call of the dynamics (also bounds the memory of a chunk)."""
CURVE_POINTS = 60
"""Log-spaced iterations kept per run in the JSON and the figures."""
MAGNET_EVERY = 20
"""``mpo``'s magnet refresh in the τ = 0 panel (as in the tests on games)."""

ALGORITHMS = dynamics.ALGORITHMS
TAUS = (0.1, 0.01, 0.001)
TAU_ZERO_ALGORITHMS = ("self_play", "egpo", "onpo", "mpo", "best_response")
"""At τ = 0 with ``eta: auto``, ``omd`` and ``sppo`` are ``self_play`` (the same Hedge
step √(8 ln n / T) on the same update), so the τ = 0 panel runs it once."""


@dataclass(frozen=True)
class Case:
    """A game with its reference, the τ values it runs at and its iteration cap."""

    name: str
    P: np.ndarray
    mu: np.ndarray
    taus: tuple[float, ...]
    steps: int
    tau_zero: bool = False


def cases(smoke: bool) -> list[Case]:
    """The benchmark's games. The 3-response games use a non-uniform μ (with a uniform μ
    the NE of dice and RPS *is* μ, so every method would start at the solution); the
    random games use a uniform μ. Iteration caps bound the full run to ≤ 15 min on 2
    cores: 100,000 for the 3- and 10-response games, 50,000 for 100, 5,000 for 1000."""
    three = {
        "dice": (dice().matrix, np.array([0.6, 0.3, 0.1])),
        "rps": (rps().matrix, np.array([0.5, 0.3, 0.2])),
        "population": (population().matrix, np.array([0.2, 0.5, 0.3])),
    }
    if smoke:
        out = [Case(k, P, mu, (0.1,), 1000, tau_zero=True) for k, (P, mu) in three.items()]
        P10 = random_game(10, seed=0).matrix
        return [*out, Case("random-10", P10, np.full(10, 0.1), (0.1,), 1000)]
    out = [Case(k, P, mu, TAUS, 100_000, tau_zero=True) for k, (P, mu) in three.items()]
    for n, steps in ((10, 100_000), (100, 50_000), (1000, 5_000)):
        out.append(
            Case(f"random-{n}", random_game(n, seed=0).matrix, np.full(n, 1 / n), TAUS, steps)
        )
    return out


# ----------------------------------------------------------------------- metrics
def step_metrics(
    P: np.ndarray, mu: np.ndarray, rows: np.ndarray, tau: float, log_star: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-row duality gap, exploitability and KL(π*‖π) of log-policies ``rows`` (K, n):
    :func:`nlhf.tabular.metrics.duality_gap` and friends, vectorised over rows."""
    pi = np.exp(rows)
    u = pi @ P.T  # (Pπ)_y per row
    expl = np.max(u, axis=1) - 0.5
    log_mu = np.log(mu)
    if tau > 0:
        kl_mu = np.sum(pi * (rows - log_mu), axis=1)
        gap = 2 * tau * logsumexp(log_mu + u / tau, axis=1) + 2 * tau * kl_mu - 1
    else:
        gap = 2 * expl
    star = np.exp(log_star)
    kl_star = np.sum(np.where(star > 0, star * (log_star - rows), 0.0), axis=1)
    return {"duality_gap": gap, "exploitability": expl, "kl_to_solution": kl_star}


def average_metrics(
    P: np.ndarray, mu: np.ndarray, avg: np.ndarray, tau: float, star: np.ndarray
) -> dict[str, np.ndarray]:
    """The same metrics of average iterates ``avg`` (K, n) given as probabilities."""
    with np.errstate(divide="ignore"):
        m = step_metrics(P, mu, np.log(avg), tau, np.log(star))
    return {f"average_{k}": v for k, v in m.items()}


def curve_index(steps: int, points: int = CURVE_POINTS) -> np.ndarray:
    """0 and about ``points`` log-spaced iterations in [1, steps] (always including steps)."""
    idx = np.unique(np.round(np.logspace(0, math.log10(steps), points)).astype(int))
    return np.concatenate([[0], idx[idx <= steps]])


def first_stable_below(values: np.ndarray, target: float) -> int | None:
    """The first t with values[s] ≤ target for every s ≥ t (None if values[-1] > target)."""
    above = np.flatnonzero(~(values <= target))
    if above.size == 0:
        return 0
    last = int(above[-1])
    return None if last == len(values) - 1 else last + 1


def _rounded(values: Sequence[float] | np.ndarray) -> list[float]:
    return [float(f"{x:.5g}") for x in np.asarray(values, dtype=np.float64).tolist()]


# --------------------------------------------------------------------------- runs
def run_one(
    case: Case,
    algorithm: str,
    tau_run: float,
    taus_measured: Sequence[float],
    stars: dict[float, np.ndarray],
    magnet_every: int | None = None,
) -> dict[float, dict[str, Any]]:
    """One run of ``algorithm`` at τ = ``tau_run``, measured against each τ of
    ``taus_measured`` (π*_τ = ``stars[τ]``; the maximal lottery when τ = 0)."""
    P, mu = case.P, case.mu
    sched = dynamics.schedules(
        P,
        mu,
        algorithm=algorithm,
        tau=tau_run,
        eta="auto",
        steps=case.steps,
        magnet_every=magnet_every,
    )
    total = len(sched)
    log_pi = dynamics.initial_log_policy(mu)
    log_aux = log_pi
    averaged = tau_run == 0 and algorithm in ("sppo", "self_play")
    with np.errstate(divide="ignore"):
        log_stars = {t: np.log(s) for t, s in stars.items()}
    series: dict[float, dict[str, list[np.ndarray]]] = {t: {} for t in taus_measured}
    wall, cpu = [0.0], [0.0]  # cumulative dynamics time at iteration 0, 1, …, total

    def add(rows: np.ndarray, avg: np.ndarray | None) -> None:
        with np.errstate(divide="ignore", invalid="ignore"):
            for t in taus_measured:
                m = step_metrics(P, mu, rows, t, log_stars[t])
                if avg is not None:
                    m |= average_metrics(P, mu, avg, t, stars[t])
                for k, v in m.items():
                    series[t].setdefault(k, []).append(v)

    played = np.zeros_like(mu)  # Σ_{t<s} π_t
    add(log_pi[None, :], np.exp(log_pi)[None, :] if averaged else None)
    for s in range(0, total, CHUNK):
        chunk = sched[s : s + CHUNK]
        w0, c0 = time.perf_counter(), time.process_time()
        rows, log_aux = dynamics.trajectory(P, mu, log_pi, log_aux, chunk, algorithm)
        dw, dc = time.perf_counter() - w0, time.process_time() - c0
        k = len(chunk)
        frac = np.arange(1, k + 1) / k
        wall.extend((wall[-1] + dw * frac).tolist())
        cpu.extend((cpu[-1] + dc * frac).tolist())
        avg = None
        if averaged:  # π̄ at iteration i = (1/i) Σ_{t<i} π_t
            sums = played + np.cumsum(np.vstack([np.exp(log_pi), np.exp(rows[:-1])]), axis=0)
            avg = sums / np.arange(s + 1, s + k + 1)[:, None]
            played = sums[-1]
        add(rows, avg)
        log_pi = rows[-1]
    final = np.exp(log_pi)
    idx = curve_index(total)
    out: dict[float, dict[str, Any]] = {}
    for t in taus_measured:
        full = {k: np.concatenate(v) for k, v in series[t].items()}
        # the vectorised metrics are the library's, at the last iterate
        check = duality_gap(P, mu, final, t)
        assert abs(full["duality_gap"][-1] - check) <= 1e-9 * max(1.0, abs(check)), (
            algorithm,
            t,
            full["duality_gap"][-1],
            check,
        )
        hit = first_stable_below(full["duality_gap"], TARGET_GAP)
        row: dict[str, Any] = {
            "algorithm": algorithm,
            "tau_run": tau_run,
            "magnet_every": magnet_every,
            "eta": float(sched.etas[0]) if not np.isnan(sched.etas[0]) else None,
            "steps": total,
            "seconds": wall[-1],
            "cpu_seconds": cpu[-1],
            "seconds_per_step": wall[-1] / total,
            "iterations_to_gap": hit,
            "seconds_to_gap": wall[hit] if hit is not None else None,
            "cpu_seconds_to_gap": cpu[hit] if hit is not None else None,
            "final": {k: float(v[-1]) for k, v in full.items()},
            "min_duality_gap": float(np.min(full["duality_gap"])),
            "curve": {  # 5 significant digits: the figures' resolution
                "step": idx.tolist(),
                "wall_seconds": _rounded([wall[i] for i in idx]),
                "cpu_seconds": _rounded([cpu[i] for i in idx]),
                **{k: _rounded(v[idx]) for k, v in full.items()},
            },
        }
        if t == 0:  # distance to the maximal lottery along the run
            kl = full["kl_to_solution"]
            row["kl_to_lottery_first_last_max"] = [float(kl[0]), float(kl[-1]), float(kl.max())]
            row["kl_to_lottery_nondecreasing"] = bool(np.all(np.diff(kl) >= -1e-12))
            row["last_iterate_exploitability_tail_min"] = float(
                np.min(full["exploitability"][total // 2 :])
            )
        out[t] = row
    return out


def oracles(case: Case) -> tuple[dict[float, np.ndarray], dict[str, Any]]:
    """π*_τ (Newton) for each τ and the maximal lottery (LP), with their own checks."""
    P, mu = case.P, case.mu
    t0 = time.perf_counter()
    lottery = maximal_lottery(P, progress=None)
    lp_seconds = time.perf_counter() - t0
    stars: dict[float, np.ndarray] = {0.0: lottery}
    info: dict[str, Any] = {
        "maximal_lottery": {
            "seconds": lp_seconds,
            "exploitability": exploitability(P, lottery),
            "support": int((lottery > 1e-9).sum()),
        },
        "regularized_nash": {},
    }
    for tau in case.taus:
        t0 = time.perf_counter()
        star = regularized_nash(P, mu, tau, progress=None)
        stars[tau] = star
        info["regularized_nash"][f"{tau:g}"] = {
            "seconds": time.perf_counter() - t0,
            "duality_gap": duality_gap(P, mu, star, tau),
            "exploitability": exploitability(P, star),
            "l1_to_lottery": float(np.abs(star - lottery).sum()),
            "kl_from_reference": kl_divergence(star, mu),
        }
    return stars, info


def benchmark(
    smoke: bool, progress: Callable[[str], None], only: set[str] | None = None
) -> dict[str, Any]:
    games: dict[str, Any] = {}
    for case in cases(smoke):
        if only and case.name not in only:
            continue
        t_case = time.perf_counter()
        stars, info = oracles(case)
        runs: dict[str, dict[str, Any]] = {}
        for tau in case.taus:
            for algorithm in ALGORITHMS:
                tau_run = 0.0 if algorithm == "sppo" else tau
                res = run_one(case, algorithm, tau_run, [tau], stars)
                runs[f"{algorithm}@{tau:g}"] = res[tau]
        if case.tau_zero:
            for algorithm in TAU_ZERO_ALGORITHMS:
                tau_run = 0.1 if algorithm == "mpo" else 0.0
                magnet = MAGNET_EVERY if algorithm == "mpo" else None
                res = run_one(case, algorithm, tau_run, [0.0], stars, magnet_every=magnet)
                runs[f"{algorithm}@0"] = res[0.0]
        games[case.name] = {
            "size": int(case.P.shape[0]),
            "reference": "uniform" if np.allclose(case.mu, case.mu[0]) else case.mu.tolist(),
            "taus": list(case.taus) + ([0.0] if case.tau_zero else []),
            "steps": case.steps,
            "lipschitz": dynamics.game_lipschitz(case.P),
            "oracles": info,
            "runs": runs,
            "seconds": time.perf_counter() - t_case,
        }
        progress(f"{case.name}: {time.perf_counter() - t_case:.1f} s")
    return games


# ------------------------------------------------------------------------ output
def fmt_hit(row: dict[str, Any]) -> str:
    hit = row["iterations_to_gap"]
    return f"{hit:,}" if hit is not None else f"not reached in {row['steps']:,}"


def print_table(games: dict[str, Any]) -> None:
    for name, g in games.items():
        print(f"\n# {name} ({g['size']} responses, L = {g['lipschitz']:.3f}, cap {g['steps']:,})")
        taus = [t for t in g["taus"] if t > 0]
        print(f"{'algorithm':<15}" + "".join(f"{'tau=' + format(t, 'g'):>26}" for t in taus))
        for algorithm in ALGORITHMS:
            cells = [fmt_hit(g["runs"][f"{algorithm}@{t:g}"]) for t in taus]
            print(f"{algorithm:<15}" + "".join(f"{c:>26}" for c in cells))


def markdown_tables(games: dict[str, Any]) -> str:
    """The iterations-to-gap tables of docs/algorithms.md: one per τ (a row per algorithm,
    a column per game), each cell the iterations and CPU seconds to a duality gap that
    stays ≤ :data:`TARGET_GAP`, or "not reached in N"."""
    out = []
    names = list(games)
    taus = sorted({t for g in games.values() for t in g["taus"]}, reverse=True)
    for tau in taus:
        cols = [n for n in names if tau in games[n]["taus"]]
        algorithms = ALGORITHMS if tau > 0 else TAU_ZERO_ALGORITHMS
        out.append(f"**τ = {tau:g}**" + (" (gap = 2·exploitability)" if tau == 0 else ""))
        out.append("")
        out.append("| algorithm | " + " | ".join(cols) + " |")
        out.append("|---|" + "---:|" * len(cols))
        for algorithm in algorithms:
            cells = []
            for n in cols:
                r = games[n]["runs"][f"{algorithm}@{tau:g}"]
                if r["iterations_to_gap"] is None:
                    cells.append(f"not reached in {r['steps']:,}")
                else:
                    cells.append(
                        f"{r['iterations_to_gap']:,} ({_seconds(r['cpu_seconds_to_gap'])})"
                    )
            out.append(f"| `{algorithm}` | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _seconds(x: float) -> str:
    return f"{x * 1e3:.2g} ms" if x < 0.1 else f"{x:.2g} s"


def compact_json(obj: Any) -> str:
    """Indented JSON with every list of numbers on one line."""
    text = json.dumps(obj, indent=1, allow_nan=True)
    return re.sub(
        r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text
    )


STYLE = {
    "nash_md": ("C0", "-"),
    "omd": ("C1", "-"),
    "self_play": ("C2", "-"),
    "best_response": ("C7", "o"),
    "egpo": ("C3", "-"),
    "mpo": ("C4", "-"),
    "onpo": ("C5", "--"),
    "inpo": ("C6", "--"),
    "sppo": ("C8", "-"),
}
FLOOR = 1e-16


def _positive(values: Sequence[float]) -> np.ndarray:
    return np.maximum(np.asarray(values, dtype=np.float64), FLOOR)


def save_png(fig: Any, path: Path) -> str:
    """Write ``fig`` as a 128-colour palette PNG (line plots: ~4× smaller than RGBA)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(colors=128).save(path, optimize=True)
    return str(path)


def figures(games: dict[str, Any], out_dir: Path) -> list[str]:
    """One PNG per game: duality gap vs iterations and vs wall-clock, exploitability vs
    iterations (one column per τ; log scales), plus the τ = 0 panel."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, g in games.items():
        taus = [t for t in g["taus"] if t > 0]
        fig = Figure(figsize=(4.3 * len(taus), 9.6), layout="constrained")
        axes = fig.subplots(3, len(taus), squeeze=False)
        for j, tau in enumerate(taus):
            floor = g["oracles"]["regularized_nash"][f"{tau:g}"]["exploitability"]
            for algorithm in ALGORITHMS:
                r = g["runs"][f"{algorithm}@{tau:g}"]
                c = r["curve"]
                color, ls = STYLE[algorithm]
                steps = np.maximum(c["step"], 1)
                label = algorithm + (" (τ=0)" if algorithm == "sppo" else "")
                axes[0, j].plot(steps, _positive(c["duality_gap"]), ls, color=color, label=label)
                axes[1, j].plot(
                    np.maximum(c["wall_seconds"], 1e-6),
                    _positive(c["duality_gap"]),
                    ls,
                    color=color,
                )
                axes[2, j].plot(steps, _positive(c["exploitability"]), ls, color=color)
                if algorithm == "sppo":
                    axes[0, j].plot(
                        steps,
                        _positive(c["average_duality_gap"]),
                        ":",
                        color=color,
                        label="sppo average",
                    )
            for i in range(2):
                axes[i, j].axhline(TARGET_GAP, color="k", lw=0.6, ls="--")
            axes[2, j].axhline(max(floor, FLOOR), color="k", lw=0.6, ls="--")
            axes[0, j].set_title(f"{name}, τ = {tau:g}")
            axes[0, j].set_xlabel("iteration")
            axes[1, j].set_xlabel("wall-clock seconds (dynamics only)")
            axes[2, j].set_xlabel("iteration")
            for i in range(3):
                axes[i, j].set_xscale("log")
                axes[i, j].set_yscale("log")
                if i < 2:
                    axes[i, j].set_ylim(FLOOR / 2, 2.0)
        axes[0, 0].set_ylabel("duality gap at τ")
        axes[1, 0].set_ylabel("duality gap at τ")
        axes[2, 0].set_ylabel("exploitability (dashed: π*_τ's)")
        axes[0, -1].legend(fontsize=7, loc="lower left", ncol=2)
        paths.append(save_png(fig, out_dir / f"tabular-{name}.png"))
    zero = {n: g for n, g in games.items() if 0.0 in g["taus"]}
    if zero:
        fig = Figure(figsize=(4.3 * len(zero), 6.8), layout="constrained")
        axes = fig.subplots(2, len(zero), squeeze=False)
        for j, (name, g) in enumerate(zero.items()):
            for algorithm in TAU_ZERO_ALGORITHMS:
                c = g["runs"][f"{algorithm}@0"]["curve"]
                color, ls = STYLE[algorithm]
                label = {
                    "mpo": f"mpo (τ=0.1, magnet every {MAGNET_EVERY})",
                    "self_play": "self_play = omd = sppo",
                }.get(algorithm, algorithm)
                steps = np.maximum(c["step"], 1)
                axes[0, j].plot(steps, _positive(c["exploitability"]), ls, color=color, label=label)
                axes[1, j].plot(steps, _positive(c["kl_to_solution"]), ls, color=color)
                if "average_exploitability" in c:
                    axes[0, j].plot(
                        steps,
                        _positive(c["average_exploitability"]),
                        ":",
                        color=color,
                        label="its average iterate",
                    )
                    axes[1, j].plot(steps, _positive(c["average_kl_to_solution"]), ":", color=color)
            for i in range(2):
                axes[i, j].set_xscale("log")
                axes[i, j].set_yscale("log")
                axes[i, j].set_ylim(FLOOR / 2, 2.0)
                axes[i, j].set_xlabel("iteration")
            axes[0, j].set_title(f"{name}, τ = 0 (vs the maximal lottery)")
        axes[0, 0].set_ylabel("exploitability")
        axes[1, 0].set_ylabel("KL(maximal lottery ‖ π_t)")
        axes[0, -1].legend(fontsize=6, loc="lower left", ncol=2)
        paths.append(save_png(fig, out_dir / "tabular-tau0.png"))
    return paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="3-response games + random-10, 1000 steps")
    ap.add_argument("--games", help="comma list of games to run (default: all)")
    ap.add_argument("--out", default=str(HERE / "results" / "tabular-family.json"))
    ap.add_argument("--figures-dir", default=str(ROOT / "docs" / "figures"))
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--replot", action="store_true", help="only redraw the figures from --out")
    ap.add_argument("--markdown", action="store_true", help="only print the tables of --out")
    args = ap.parse_args(argv)
    if args.replot or args.markdown:
        result = json.loads(Path(args.out).read_text())
        if args.markdown:
            print(markdown_tables(result["games"]))
        if args.replot:
            for path in figures(result["games"], Path(args.figures_dir)):
                print(f"figure: {path}")
        return result

    start = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {line}", flush=True)

    only = set(args.games.split(",")) if args.games else None
    games = benchmark(args.smoke, progress, only)
    result = {
        "benchmark": "tabular-family",
        "smoke": args.smoke,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "host": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "load_average_at_end": os.getloadavg(),
        },
        "threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "target_gap": TARGET_GAP,
        "total_seconds": time.perf_counter() - start,
        "total_cpu_seconds": time.process_time(),
        "games": games,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(compact_json(result) + "\n")
    print_table(games)
    if not args.no_figures:
        for path in figures(games, Path(args.figures_dir)):
            print(f"figure: {path}")
    print(f"results: {out} ({result['total_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
