"""Tabular solvers on a random preference game (docs/benchmarks.md), a child process
of ``run.py``.

The game: :func:`nlhf.tabular.games.random_game` (P_ij ~ U[0,1] for i < j, P_ji = 1 − P_ij),
size 1000 by default, uniform reference μ. Methods, interleaved A B A B over ``--repeats``:

- ``nlhf_regularized_nash_tau=T``: :func:`nlhf.tabular.solvers.regularized_nash`
  (damped Newton) to duality gap ≤ 1e-8, for each τ in ``--taus``;
- ``nlhf_maximal_lottery``: :func:`nlhf.tabular.solvers.maximal_lottery` (the τ = 0
  equilibrium: scipy HiGHS LP + a least-squares polish on the support);
- ``scipy_linprog``: the bare LP min v s.t. Pπ ≤ v·1, 1ᵀπ = 1, π ≥ 0 with
  ``scipy.optimize.linprog(method="highs")``: the baseline.

Reported per method: median seconds, the duality gap reached (τ = 0: 2·exploitability),
exploitability max_y (Pπ)_y − ½ and the support size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--taus", default="0.1,0.01,0.001")
    ap.add_argument("--tol", type=float, default=1e-8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import numpy as np
    import scipy
    from nlhf.tabular.games import random_game
    from nlhf.tabular.metrics import duality_gap, exploitability
    from nlhf.tabular.solvers import maximal_lottery, regularized_nash
    from scipy.optimize import linprog
    from workload import peak_rss_mb

    P = random_game(args.size, args.seed).matrix
    n = P.shape[0]
    mu = np.full(n, 1.0 / n)

    def bare_lp() -> Any:
        c = np.zeros(n + 1)
        c[-1] = 1.0
        res = linprog(
            c,
            A_ub=np.hstack([P, -np.ones((n, 1))]),
            b_ub=np.zeros(n),
            A_eq=np.hstack([np.ones((1, n)), np.zeros((1, 1))]),
            b_eq=[1.0],
            bounds=[(0.0, None)] * n + [(None, None)],
            method="highs",
        )
        pi = np.clip(res.x[:n], 0.0, None)
        return pi / pi.sum()

    methods: dict[str, tuple[Callable[[], Any], float]] = {}
    for tau in (float(t) for t in args.taus.split(",") if t):
        methods[f"nlhf_regularized_nash_tau={tau:g}"] = (
            lambda tau=tau: regularized_nash(P, mu, tau, tol=args.tol),
            tau,
        )
    methods["nlhf_maximal_lottery"] = (lambda: maximal_lottery(P), 0.0)
    methods["scipy_linprog"] = (bare_lp, 0.0)

    times: dict[str, list[float]] = {name: [] for name in methods}
    last: dict[str, Any] = {}
    for _ in range(args.repeats):
        for name, (fn, _tau) in methods.items():
            t0 = time.perf_counter()
            last[name] = fn()
            times[name].append(time.perf_counter() - t0)
    rows = {}
    for name, (_fn, tau) in methods.items():
        pi = last[name]
        rows[name] = {
            "tau": tau,
            "seconds": times[name],
            "median_seconds": statistics.median(times[name]),
            "duality_gap": float(duality_gap(P, mu, pi, tau)),
            "exploitability": float(exploitability(P, pi)),
            "support": int((pi > 1e-9).sum()),
        }
    result = {
        "method": "tabular",
        "size": n,
        "seed": args.seed,
        "tol": args.tol,
        "repeats": args.repeats,
        "results": rows,
        "peak_rss_mb_self": peak_rss_mb(),
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__},
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
