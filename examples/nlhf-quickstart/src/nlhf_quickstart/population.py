"""The ``population`` oracle: P(y≻y'|x) of annotator types with cyclic tastes.

By default the tabular ``population`` game (:data:`nlhf.tabular.games.POPULATION_TYPES`:
45% apple>banana>cherry, 30% banana>cherry>apple, 25% cherry>apple>banana), so
P(y_i≻y_j) = Σ_k w_k·1[type k ranks i above j]: a Condorcet cycle. An unknown answer
loses to every known one (P = 0) and ties other unknown answers (½). The scalar
:meth:`PopulationOracle.reward` used by ``rlhf_pg`` is the Bradley–Terry reward fitted by
maximum likelihood to P: the reward an RLHF pipeline would learn from these annotators
(``reward: borda`` gives mean_j P(y≻y_j) instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from nlhf.errors import InputError
from nlhf.tabular.games import POPULATION_TYPES, population_matrix

from nlhf_quickstart.task import ANSWERS

if TYPE_CHECKING:
    from nlhf.spec import RunSpec
    from nlhf.training import PolicyProbe


def bradley_terry_fit(P: np.ndarray, iters: int = 2000) -> np.ndarray:
    """Maximum-likelihood BT rewards for comparisons drawn uniformly over ordered pairs:
    maximise Σ_{i≠j} P_ij log σ(r_i − r_j) (concave; gradient ascent, centred r)."""
    n = len(P)
    r = np.zeros(n)
    off = 1.0 - np.eye(n)
    for _ in range(iters):
        s = 1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :])))
        r += (1.0 / n) * ((P - s) * off).sum(1)
        r -= r.mean()
    return r


def _tv(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation ½ Σ |a − b|."""
    return float(0.5 * np.abs(a - b).sum())


class PopulationOracle:
    """P(y≻y'|x) of a population of annotator types with cyclic rankings (module doc).

    ``types``: [[weight, [ranking best-first as answer indices]], ...] (weights sum to 1);
    ``eval_samples``: samples per prompt behind the summary's ``policy_sampled``.
    """

    def __init__(
        self,
        answers: Sequence[str] = ANSWERS,
        types: Sequence[Sequence[Any]] | None = None,
        reward: str = "bradley_terry",
        eval_samples: int = 64,
    ) -> None:
        self.answers = tuple(answers)
        k = len(self.answers)
        raw = types if types is not None else POPULATION_TYPES
        parsed = tuple((float(w), tuple(int(i) for i in ranking)) for w, ranking in raw)
        if abs(sum(w for w, _ in parsed) - 1.0) > 1e-9:
            raise InputError("preference.options.types: the weights must sum to 1")
        for _, ranking in parsed:
            if sorted(ranking) != list(range(k)):
                raise InputError(
                    f"preference.options.types: each ranking must order all {k} answers "
                    f"(indices 0..{k - 1}); got {list(ranking)}"
                )
        self.P = population_matrix(parsed, k)
        if reward == "bradley_terry":
            self.rewards = bradley_terry_fit(self.P)
        elif reward == "borda":
            self.rewards = self.P.mean(1)
        else:
            raise InputError(f"preference.options.reward: {reward!r}; use bradley_terry or borda")
        self.reward_kind = reward
        self.eval_samples = eval_samples
        self._index = {a.strip(): i for i, a in enumerate(self.answers)}

    def index(self, y: str) -> int:
        """Answer index of a decoded completion, −1 when it is not one of the answers."""
        return self._index.get(y.strip(), -1)

    def __call__(self, prompts: list[str], ys: list[str], y_primes: list[str]) -> list[float]:
        out = []
        for y, yp in zip(ys, y_primes, strict=True):
            i, j = self.index(y), self.index(yp)
            if i < 0 or j < 0:
                out.append(0.5 if i == j else (0.0 if i < 0 else 1.0))
            else:
                out.append(float(self.P[i, j]))
        return out

    def reward(self, prompts: list[str], ys: list[str]) -> list[float]:
        """r(y): the fitted reward of a known answer; unknown answers get min r − 1."""
        low = float(self.rewards.min()) - 1.0
        return [float(self.rewards[i]) if (i := self.index(y)) >= 0 else low for y in ys]

    def summary(self, *, probe: PolicyProbe, prompts: list[str], spec: RunSpec) -> dict[str, Any]:
        """Answer distributions of policy and reference vs the tabular regularised NE.

        Per distinct prompt x: π(·|x) and μ(·|x) exactly (teacher-forced, at the sampling
        temperature, renormalised over the answers), π*_τ = softmax(log μ + Pπ*_τ/τ)
        (:func:`nlhf.tabular.solvers.regularized_nash`) with τ at the last step (the
        maximal lottery when τ = 0 or the algorithm has none, as sppo), and a
        sampled estimate of π; reports their means over prompts and the mean total
        variations. ``rlhf_optimum`` is μ·exp(r/τ) normalised, the KL-regularised reward
        maximiser. ``probe`` is the trainer's backend-agnostic view of π and μ
        (:class:`nlhf.training.PolicyProbe`), so the summary is the same on every backend.
        """
        from nlhf.algorithms.schedules import schedule_value
        from nlhf.tabular.solvers import maximal_lottery, regularized_nash

        temp = spec.training.generation.temperature
        # sppo has no τ: its target is the unregularised game's NE, the maximal lottery
        tau_at = getattr(spec.algorithm, "tau", 0.0)
        tau = schedule_value(tau_at, spec.training.steps - 1, spec.training.steps)
        tok = probe.tokenizer
        uniq = list(dict.fromkeys(prompts))
        p_ids = [tok(x)["input_ids"] for x in uniq]
        a_ids = [
            tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for a in self.answers
        ]
        rows_p = [p for p in p_ids for _ in a_ids]
        rows_a = [a for _ in p_ids for a in a_ids]
        shape = (len(uniq), len(a_ids))
        pi, mu = (
            np.exp(probe.sequence_logprobs(rows_p, rows_a, model=m, temperature=temp)).reshape(
                shape
            )
            for m in ("policy", "reference")
        )
        n = max(self.eval_samples, 1)
        drawn = probe.sample_completions(
            [p for p in p_ids for _ in range(n)],
            temperature=temp,
            max_new_tokens=8,
            seed=spec.seed + 1,
        )
        sampled = np.zeros((len(uniq), len(a_ids) + 1))
        for r, text in enumerate(tok.batch_decode(drawn, skip_special_tokens=True)):
            i = self.index(text)
            sampled[r // n, i if i >= 0 else len(a_ids)] += 1
        sampled /= n
        pi_x = pi / pi.sum(1, keepdims=True)
        mu_x = mu / mu.sum(1, keepdims=True)
        if tau > 0:
            ne_x = np.stack([regularized_nash(self.P, m, tau) for m in mu_x])
        else:
            ne_x = np.stack([maximal_lottery(self.P, progress=None) for _ in mu_x])
        pi_m, mu_m, ne_m, samp_m = (a.mean(0) for a in (pi_x, mu_x, ne_x, sampled))
        rl = mu_m * np.exp(self.rewards / tau) if tau > 0 else None
        names = [a.strip() for a in self.answers]

        def named(values: np.ndarray, keys: list[str] = names) -> dict[str, float]:
            return dict(zip(keys, values.round(4).tolist(), strict=True))

        return {
            "answers": names,
            "tau": tau,
            "policy": named(pi_m),
            "policy_sampled": named(samp_m, [*names, "other"]),
            "reference": named(mu_m),
            "regularized_nash": named(ne_m),
            "rlhf_optimum": named(rl / rl.sum()) if rl is not None else None,
            "tv_policy_to_nash": float(
                np.mean([_tv(a, b) for a, b in zip(pi_x, ne_x, strict=True)])
            ),
            "tv_reference_to_nash": float(
                np.mean([_tv(a, b) for a, b in zip(mu_x, ne_x, strict=True)])
            ),
            "tv_sampled_to_nash": float(
                np.mean([_tv(a[:-1], b) for a, b in zip(sampled, ne_x, strict=True)])
            ),
            "known_answer_mass": float(pi.sum(1).mean()),
            "max_answer_prob": float(pi_m.max()),
            "reward": self.reward_kind,
            "rewards": named(self.rewards),
            "preference_matrix": self.P.tolist(),
        }
