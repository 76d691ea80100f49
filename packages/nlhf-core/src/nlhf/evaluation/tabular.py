"""Exact win-rate matrices of tabular policies (no sampling; paper §3, §8).

For policies π_i over the responses of a preference matrix P (``P[a, b] = P(y_a ≻ y_b)``)

    matrix[i, j] = P(π_j ≻ π_i) = π_jᵀ P π_i,

which satisfies matrix + matrixᵀ = 1 exactly because P + Pᵀ = 1. Per policy we report
its exploitability max_y (Pπ)_y − ½ and its duality gap
2τ log Σ_y μ(y) e^{(Pπ)_y/τ} + 2τ KL(π‖μ) − 1 (docs/architecture.md §5; :mod:`nlhf.tabular.metrics`)
at the τ the policy was trained for (0 for built-in policies).

Policies are given as strings (``eval.policies``):

- a tabular run directory (its ``summary.json`` holds ``policy``) or a ``summary.json``;
- a built-in: ``reference`` (μ), ``uniform``, ``maximal_lottery`` or
  ``regularized_nash:TAU`` (π*_τ = softmax(log μ + Pπ*_τ/τ));
- optionally prefixed by a display name: ``NAME=ENTRY``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nlhf.errors import InputError
from nlhf.evaluation.winrate import WinRateMatrix, exact_matrix, matrix_from_outcomes
from nlhf.tabular.metrics import duality_gap, exploitability, kl_divergence

if TYPE_CHECKING:
    from nlhf.spec.models import RunSpec

BUILTINS = ("reference", "uniform", "maximal_lottery", "regularized_nash:TAU")


@dataclass
class TabularPolicy:
    """A named distribution over the responses; ``tau`` is the τ it targets."""

    name: str
    probs: np.ndarray
    tau: float = 0.0
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def split_name(entry: str) -> tuple[str | None, str]:
    """``NAME=ENTRY`` -> (NAME, ENTRY); an entry without a name -> (None, entry).

    The name may not contain ``/`` (so a path holding ``=`` is read as a path)."""
    if "=" in entry:
        name, rest = entry.split("=", 1)
        if name and "/" not in name and rest:
            return name.strip(), rest.strip()
    return None, entry


def unique_names(names: Sequence[str], sources: Sequence[str]) -> list[str]:
    """Make display names unique by prefixing the parent folder of clashing sources."""
    out = list(names)
    for name in set(names):
        idx = [i for i, n in enumerate(names) if n == name]
        if len(idx) > 1:
            for i in idx:
                parent = Path(sources[i]).parent.name or str(i)
                out[i] = f"{parent}/{name}"
    if len(set(out)) != len(out):
        out = [f"{n}#{i}" if out.count(n) > 1 else n for i, n in enumerate(out)]
    return out


def _check_probs(p: Any, size: int, where: str) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64).reshape(-1)
    if arr.size != size:
        raise InputError(f"{where}: policy has {arr.size} entries; the game has {size} responses")
    if np.any(~np.isfinite(arr)) or np.any(arr < 0) or abs(arr.sum() - 1.0) > 1e-6:
        raise InputError(f"{where}: policy is not a probability vector (sum {arr.sum():.6g})")
    return arr / arr.sum()


def load_policy(
    entry: str,
    P: np.ndarray,
    mu: np.ndarray,
    *,
    game: str | None = None,
    labels: Sequence[str] | None = None,
) -> TabularPolicy:
    """Resolve one ``eval.policies`` entry (module docstring) against the game (P, μ)."""
    from nlhf.tabular.solvers import maximal_lottery, regularized_nash

    name, body = split_name(entry)
    size = P.shape[0]
    path = Path(body)
    if path.exists():
        summary_path = path / "summary.json" if path.is_dir() else path
        if not summary_path.is_file():
            raise InputError(f"eval.policies: {body}: no summary.json (is it a tabular run dir?)")
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"eval.policies: {summary_path}: invalid JSON ({exc})") from exc
        if "policy" not in summary or not isinstance(summary["policy"], list):
            raise InputError(
                f"eval.policies: {summary_path} has no tabular `policy` (an LLM run? evaluate "
                f"it with --backend torch)"
            )
        run_game = summary.get("game")
        if game is not None and run_game is not None and run_game != game:
            raise InputError(
                f"eval.policies: {body} was trained on game {run_game!r}; this evaluation's "
                f"game is {game!r}"
            )
        run_labels = summary.get("responses")
        if labels is not None and run_labels is not None and list(run_labels) != list(labels):
            raise InputError(
                f"eval.policies: {body} has responses {run_labels}; the game has {list(labels)}"
            )
        probs = _check_probs(summary["policy"], size, f"eval.policies: {body}")
        tau = float(summary.get("tau_final", 0.0) or 0.0)
        default = path.name if path.is_dir() else path.parent.name
        info = {k: summary.get(k) for k in ("algorithm", "steps", "tau_final") if k in summary}
        return TabularPolicy(name or default, probs, tau, str(path), info)
    if body == "reference":
        return TabularPolicy(name or "reference", mu.copy(), 0.0, "reference")
    if body == "uniform":
        return TabularPolicy(name or "uniform", np.full(size, 1.0 / size), 0.0, "uniform")
    if body == "maximal_lottery":
        return TabularPolicy(name or "maximal_lottery", maximal_lottery(P), 0.0, "maximal_lottery")
    if body.startswith("regularized_nash:"):
        try:
            tau = float(body.split(":", 1)[1])
        except ValueError:
            tau = -1.0
        if not tau > 0:
            raise InputError(f"eval.policies: {body!r}: write regularized_nash:TAU with TAU > 0")
        return TabularPolicy(name or body, regularized_nash(P, mu, tau), tau, body)
    raise InputError(
        f"eval.policies: {body!r} is neither an existing run directory / summary.json nor a "
        f"built-in ({', '.join(BUILTINS)})"
    )


def exact_winrates(P: np.ndarray, policies: Sequence[np.ndarray]) -> np.ndarray:
    """matrix[i, j] = π_jᵀ P π_i = P(π_j ≻ π_i) (column beats row)."""
    Pi = np.stack([np.asarray(p, dtype=np.float64) for p in policies])  # (k, n)
    return Pi @ P.T @ Pi.T  # [i, j] = Σ_ab π_i(a) P[b, a] π_j(b)


def policy_metrics(P: np.ndarray, mu: np.ndarray, policy: TabularPolicy) -> dict[str, Any]:
    """Exploitability, duality gap at the policy's τ, KL(π‖μ) and the policy itself."""
    pi = policy.probs
    return {
        "policy": pi.tolist(),
        "tau": policy.tau,
        "exploitability": exploitability(P, pi),
        "duality_gap": duality_gap(P, mu, pi, policy.tau),
        "kl_to_reference": kl_divergence(pi, mu),
        "source": policy.source,
        **policy.info,
    }


def tabular_winrate_matrix(
    P: np.ndarray, mu: np.ndarray, policies: Sequence[TabularPolicy]
) -> WinRateMatrix:
    """The exact matrix (CI = the value, ``n = 0``) with per-policy metrics."""
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        names = unique_names(names, [p.source for p in policies])
    result = exact_matrix(names, exact_winrates(P, [p.probs for p in policies]))
    result.per_policy = {n: policy_metrics(P, mu, p) for n, p in zip(names, policies, strict=True)}
    return result


def sampled_tabular_matrix(
    P: np.ndarray,
    policies: Sequence[np.ndarray],
    names: Sequence[str],
    *,
    comparisons: int,
    seed: int = 0,
    confidence: float = 0.95,
    binary: bool = True,
    symmetric: bool = False,
) -> WinRateMatrix:
    """A sampled estimate of :func:`exact_winrates` (a check of the estimators).

    For each ordered cell (i, j), ``comparisons`` independent draws y ~ π_i, y' ~ π_j and
    the outcome o = P[y', y] (``binary=False``) or o ~ Bernoulli(P[y', y]) (``binary=True``,
    then the CI is Clopper–Pearson). ``symmetric=False`` estimates (i, j) and (j, i) from
    independent samples, so antisymmetry then holds only up to sampling error.
    """
    if comparisons < 1:
        raise InputError(f"comparisons: must be ≥ 1; got {comparisons}")
    rng = np.random.default_rng(seed)
    k = len(policies)
    n_resp = P.shape[0]
    outcomes: dict[tuple[int, int], np.ndarray] = {}
    for i in range(k):
        for j in range(k):
            if i == j or (symmetric and j < i):
                continue
            y = rng.choice(n_resp, size=comparisons, p=policies[i])
            yp = rng.choice(n_resp, size=comparisons, p=policies[j])
            p = P[yp, y]
            outcomes[(i, j)] = (rng.random(comparisons) < p).astype(float) if binary else p
    return matrix_from_outcomes(
        names, outcomes, confidence=confidence, symmetric=symmetric, seed=seed
    )


# ---------------------------------------------------------------------- spec entry
def evaluate_tabular_spec(spec: RunSpec, output: Path | None = None) -> dict[str, Any]:
    """``task: evaluate`` with a tabular preference: the exact matrix of ``eval.policies``.

    Writes ``spec.resolved.yaml``, ``winrate.csv``, ``winrate.json``, ``summary.json`` and
    (``output.plots``) ``plots/winrate.{png,svg}`` (+ ``plots/simplex.{png,svg}`` for a
    3-response game) under ``output`` (default ``output.dir``); returns the summary.
    """
    from nlhf.runio import write_resolved_spec, write_summary
    from nlhf.tabular.runner import resolve
    from nlhf.tracking import track

    start = time.perf_counter()
    if spec.eval is None or not spec.eval.policies:
        raise InputError("eval.policies: list the policies to compare")
    problem = resolve(spec)
    policies = [
        load_policy(e, problem.P, problem.mu, game=problem.game, labels=problem.labels)
        for e in spec.eval.policies
    ]
    result = tabular_winrate_matrix(problem.P, problem.mu, policies)
    result.confidence = spec.eval.confidence
    result.meta = {
        "backend": "numpy",
        "kind": "tabular_exact",
        "game": problem.game,
        "responses": list(problem.labels),
        "reference": problem.mu.tolist(),
    }
    out = Path(output if output is not None else spec.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_spec(out, spec)
    result.write(out)
    with track(spec, out, "evaluate"):  # output.report_to: the plots and the summary
        plots: list[str] = []
        if spec.output.plots:
            from nlhf.evaluation.plots import save_figure, simplex_figure, winrate_heatmap

            plots += save_figure(winrate_heatmap(result), out / "plots" / "winrate")
            if problem.P.shape[0] == 3:
                points = {n: p.probs for n, p in zip(result.policies, policies, strict=True)}
                fig = simplex_figure({}, list(problem.labels), points=points, reference=problem.mu)
                plots += save_figure(fig, out / "plots" / "simplex")
        summary = {
            "task": "evaluate",
            "backend": "numpy",
            "game": problem.game,
            "policies": result.policies,
            "matrix": result.mean.tolist(),
            "column_average": result.column_average().tolist(),
            "antisymmetry_error": result.antisymmetry_error(),
            "per_policy": result.per_policy,
            "plots": plots,
            "seconds": time.perf_counter() - start,
        }
        write_summary(out, summary)
    return summary


# ---------------------------------------------------------------------- trajectories
def run_trajectory(run_dir: Path, *, points: int = 400) -> dict[str, Any] | None:
    """Recompute the iterates of a tabular run from its ``spec.resolved.yaml`` (tabular
    runs are deterministic and keep no checkpoints). Returns ``policies`` (≈ ``points``
    rows), ``steps``, ``labels``, ``reference``, ``solution``, or None when ``run_dir`` is
    not a tabular ``task: nash`` run."""
    import yaml

    from nlhf.spec.models import RunSpec
    from nlhf.tabular import dynamics
    from nlhf.tabular.runner import resolve, solution

    path = Path(run_dir) / "spec.resolved.yaml"
    if not path.is_file():
        return None
    try:
        spec = RunSpec.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except Exception:
        return None
    if not spec.is_tabular or spec.task != "nash" or spec.algorithm is None:
        return None
    problem = resolve(spec)
    traj = dynamics.run(
        problem.P,
        problem.mu,
        algorithm=problem.algorithm,
        tau=problem.tau,
        eta=problem.eta,
        steps=problem.steps,
        record_every=max(1, problem.steps // points),
        magnet_every=problem.magnet_every,
    )
    return {
        "policies": traj.policies,
        "steps": traj.steps,
        "labels": list(problem.labels),
        "reference": problem.mu,
        "solution": solution(problem),
        "algorithm": problem.algorithm,
    }
