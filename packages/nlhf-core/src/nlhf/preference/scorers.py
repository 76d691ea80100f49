"""The runtime preferences P(y≻y'|x) of ``task: nash`` and ``task: evaluate``: everything
but the tensor work, written once for every backend.

A scorer has ``prob(prompts, ys, y_primes) -> np.ndarray``, P(ys[b] ≻ y_primes[b] |
prompts[b]) as float64 (B,) in [0, 1], and ``has_reward()``; when that is true,
``reward(prompts, ys) -> np.ndarray`` gives a scalar reward r(x, y), float64 (B,) (needed
by ``rlhf_pg``). Inputs are decoded text (completions only), so a judge or a reward model
re-tokenizes them with its own tokenizer.

- :class:`OracleScorer` (``oracle``): a function registered by a plugin
  (``nlhf_register_oracles``), whole here.
- :class:`BradleyTerryScorer` (``bradley_terry_reward``): P = σ(r(x,y) − r(x,y'))
  (Bradley & Terry 1952), r read on ``prompt + response``.
- :class:`JudgeScorer` (``llm_judge``): a causal LM reads the judge text with y shown as
  response 1 (inside its chat template for instruct models), p(1|y,y') = σ(v),
  v = ℓ(a₁ᵏ) − ℓ(a₂ᵏ) the logits of the two answers' first differing tokens; both
  presentation orders are averaged, P(y≻y'|x) = ½·(p(1|y,y') + 1 − p(1|y',y)), so
  P(y≻y'|x) + P(y'≻y|x) = 1, and the position bias ½·(p(1|y,y') + p(1|y',y)) − ½ is
  reported.
- :class:`PairwiseScorer` (``pairwise_model``): a trained preference-model directory
  (``task: preference_model`` of either backend), its ``prob`` checked and used as is.

A backend supplies only a :data:`TextScores` function (one value per text of one batch:
r, or the judge's v) and the model loading, and calls :func:`build_scorer` with its
loaders (``nlhf_torch.preference.scorers``, ``nlhf_jax.preference.scorers``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit

from nlhf.errors import InputError, NLHFError
from nlhf.preference.format import render_judge

TextScores = Callable[[list[str]], ArrayLike]
"""A backend's scores of one batch of texts, one value per text: a reward r(x, y) or a
judge's v = ℓ(a₁) − ℓ(a₂)."""


class Scorer(Protocol):
    """What ``task: nash`` and ``task: evaluate`` ask of a preference."""

    def prob(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> np.ndarray: ...

    def has_reward(self) -> bool: ...


# ------------------------------------------------------------------- shared pieces
def check_comparisons(
    prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str], where: str = "prob"
) -> tuple[list[str], list[str], list[str]]:
    """The three inputs of ``prob`` as lists, after checking one of each per comparison."""
    if not len(prompts) == len(ys) == len(y_primes):
        raise InputError(
            f"{where}: got {len(prompts)} prompts, {len(ys)} ys, {len(y_primes)} y_primes; "
            "pass one of each per comparison"
        )
    return list(prompts), list(ys), list(y_primes)


def check_probabilities(values: ArrayLike, n: int, where: str) -> np.ndarray:
    """``values`` as float64 (n,), after checking there are ``n`` of them, finite, in [0, 1]."""
    p = np.asarray(values, dtype=np.float64).reshape(-1)
    if p.size != n:
        raise NLHFError(f"{where}: returned {p.size} probabilities for {n} comparisons")
    if not np.all(np.isfinite(p)) or (p < 0).any() or (p > 1).any():
        raise NLHFError(f"{where}: returned values outside [0, 1]: {p[:8].tolist()}")
    return p


def check_rewards(values: ArrayLike, n: int, where: str) -> np.ndarray:
    """``values`` as float64 (n,), after checking there are ``n`` of them, all finite."""
    r = np.asarray(values, dtype=np.float64).reshape(-1)
    if r.size != n:
        raise NLHFError(f"{where}: returned {r.size} rewards for {n} responses")
    if not np.all(np.isfinite(r)):
        raise NLHFError(f"{where}: returned non-finite rewards: {r[:8].tolist()}")
    return r


def sigmoid(z: ArrayLike) -> np.ndarray:
    """σ(z) = 1 / (1 + e^{−z}) in float64, without overflow for large |z|."""
    return expit(np.asarray(z, dtype=np.float64))


def prob_from_rewards(r: ArrayLike, r_prime: ArrayLike) -> np.ndarray:
    """The Bradley–Terry preference of two rewards: P(y≻y'|x) = σ(r(x,y) − r(x,y'))."""
    return sigmoid(np.asarray(r, np.float64) - np.asarray(r_prime, np.float64))


def average_orders(p_first: ArrayLike, p_first_swapped: ArrayLike) -> np.ndarray:
    """P(y≻y'|x) = ½·(p(1|y,y') + 1 − p(1|y',y)) from a judge's probabilities that the
    response shown first wins, with y first (``p_first``) and with y' first; swapping y
    and y' gives 1 − P, whatever the judge's position bias."""
    return 0.5 * (np.asarray(p_first, np.float64) + 1.0 - np.asarray(p_first_swapped, np.float64))


def position_bias(p_first: ArrayLike, p_first_swapped: ArrayLike) -> np.ndarray:
    """A judge's position bias per comparison: b = ½·(p(1|y,y') + p(1|y',y)) − ½, how much
    more than ½ on average the response shown first wins (0 for an order-blind judge)."""
    return 0.5 * (np.asarray(p_first, np.float64) + np.asarray(p_first_swapped, np.float64)) - 0.5


def judge_texts(
    template: str, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The judge text of each comparison with y shown as response 1, and with y' shown as
    response 1 (:func:`nlhf.preference.format.render_judge`)."""
    triples = list(zip(prompts, ys, y_primes, strict=True))
    return (
        [render_judge(template, x, a, b) for x, a, b in triples],
        [render_judge(template, x, b, a) for x, a, b in triples],
    )


def reward_texts(prompts: Sequence[str], ys: Sequence[str]) -> list[str]:
    """What a reward model reads: ``prompt + response``."""
    return [x + y for x, y in zip(prompts, ys, strict=True)]


def score_in_batches(score: TextScores, texts: list[str], batch_size: int) -> np.ndarray:
    """``score`` over ``texts``, ``batch_size`` texts per call, as float64 (len(texts),)."""
    out = [np.zeros(0)]
    for i in range(0, len(texts), batch_size):
        chunk = texts[i : i + batch_size]
        values = np.asarray(score(chunk), dtype=np.float64).reshape(-1)
        if values.size != len(chunk):
            raise NLHFError(f"scorer: {values.size} scores for {len(chunk)} texts")
        out.append(values)
    return np.concatenate(out)


def _no_reward(name: str) -> InputError:
    return InputError(
        f"algorithm.name: rlhf_pg needs a scalar reward r(x, y), and a {name} preference "
        "has none; use a bradley_terry_reward preference or an oracle with `reward`"
    )


# ---------------------------------------------------------------------- the scorers
class OracleScorer:
    """A plugin-registered preference function (``preference: {name: oracle}``):
    ``factory(**options) -> f(prompts, ys, y_primes) -> P``; ``f.reward(prompts, ys)``,
    when present, is its scalar reward, and ``f.summary`` its summary hook."""

    def __init__(self, spec: Any, plugins: Any = None) -> None:
        from nlhf.plugins import get_plugins

        registry = (plugins or get_plugins()).oracles
        registry.get(spec.function)  # UnknownNameError with did-you-mean
        try:
            self.fn = registry.create(spec.function, **spec.options)
        except TypeError as exc:
            raise InputError(f"preference.options: oracle {spec.function!r}: {exc}") from exc
        self.name = spec.function

    def prob(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> np.ndarray:
        prompts, ys, y_primes = check_comparisons(prompts, ys, y_primes)
        return check_probabilities(self.fn(prompts, ys, y_primes), len(ys), self._where)

    def has_reward(self) -> bool:
        return callable(getattr(self.fn, "reward", None))

    def reward(self, prompts: Sequence[str], ys: Sequence[str]) -> np.ndarray:
        if not self.has_reward():
            raise InputError(
                f"algorithm.name: rlhf_pg needs a scalar reward, and oracle {self.name!r} has "
                "no `reward`; use a bradley_terry_reward preference or an oracle with reward"
            )
        prompts, ys, _ = check_comparisons(prompts, ys, ys, "reward")
        return check_rewards(self.fn.reward(prompts, ys), len(ys), self._where)

    @property
    def _where(self) -> str:
        return f"oracle {self.name!r}"


class BradleyTerryScorer:
    """P(y≻y'|x) = σ(r(x,y) − r(x,y')) with r = ``score`` of ``texts(prompts, ys)``
    (default ``prompt + response``; a trained model's rows as it was trained:
    :func:`nlhf.data.tokenizer.reward_texts_as_trained`), in batches of ``batch_size``
    texts; ``model`` is the backend's network behind ``score``."""

    def __init__(
        self,
        score: TextScores,
        *,
        batch_size: int,
        model: object = None,
        texts: Callable[[Sequence[str], Sequence[str]], list[str]] = reward_texts,
    ) -> None:
        self.score, self.batch_size, self.model, self.texts = score, batch_size, model, texts

    def has_reward(self) -> bool:
        return True

    def reward(self, prompts: Sequence[str], ys: Sequence[str]) -> np.ndarray:
        """r(x, y) of each row, float64 (B,)."""
        prompts, ys, _ = check_comparisons(prompts, ys, ys, "reward")
        values = score_in_batches(self.score, self.texts(prompts, ys), self.batch_size)
        return check_rewards(values, len(ys), "bradley_terry_reward")

    def prob(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> np.ndarray:
        prompts, ys, y_primes = check_comparisons(prompts, ys, y_primes)
        r = self.reward(prompts * 2, ys + y_primes)
        return prob_from_rewards(r[: len(ys)], r[len(ys) :])


class JudgeScorer:
    """P(y≻y'|x) = ½·(p(1|y,y') + 1 − p(1|y',y)), p(1|a,b) = σ(v) with v = ``score`` of
    ``template`` filled with (x, a, b) and passed through ``wrap`` (an instruct judge's
    chat template, :func:`nlhf.data.tokenizer.chat_wrapper`). Each call of ``score`` reads
    both orders of ⌊``batch_size``/2⌋ comparisons (at least one); ``model`` is the
    backend's network.

    v is read at the answers' **first differing token** k, after the judge text and their
    shared prefix: v = ℓ(a₁ᵏ) − ℓ(a₂ᵏ) = log p(a₁ᵏ|·) − log p(a₂ᵏ|·) (the softmax
    normaliser cancels), rather than the full continuation log-probs
    log p(a₁|·) − log p(a₂|·): one forward per text instead of one per text and answer;
    the tokens after the branch point are near-deterministic and would only add a length
    penalty to the longer answer; and it is the read-out of the trained ``head: lm``
    preference models, so a prompted and a trained judge are the same function.

    :meth:`pop_metrics` gives the judge's mean position bias
    b = ½·(p(1|y,y') + p(1|y',y)) − ½ ∈ [−½, ½] (0: unbiased; > 0: favours the response
    shown first, which averaging the orders cancels from P but not from the noise) and the
    fraction of comparisons whose two orders pick the same winner, since the last call."""

    def __init__(
        self,
        score: TextScores,
        *,
        template: str,
        batch_size: int,
        model: object = None,
        wrap: Callable[[str], str] | None = None,
    ) -> None:
        self.score, self.template, self.batch_size, self.model = score, template, batch_size, model
        self.wrap = wrap
        self._bias_sum, self._agree, self._count = 0.0, 0, 0

    def has_reward(self) -> bool:
        return False

    def reward(self, prompts: Sequence[str], ys: Sequence[str]) -> np.ndarray:
        raise _no_reward("llm_judge")

    def prob(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> np.ndarray:
        prompts, ys, y_primes = check_comparisons(prompts, ys, y_primes)
        size = max(1, self.batch_size // 2)
        out = [np.zeros(0)]
        for i in range(0, len(ys), size):
            fwd, bwd = judge_texts(
                self.template, *(v[i : i + size] for v in (prompts, ys, y_primes))
            )
            texts = fwd + bwd if self.wrap is None else [self.wrap(t) for t in fwd + bwd]
            p = sigmoid(score_in_batches(self.score, texts, len(texts)))
            p_fwd, p_bwd = p[: len(fwd)], p[len(fwd) :]
            self._bias_sum += float(np.sum(position_bias(p_fwd, p_bwd)))
            self._agree += int(np.sum((p_fwd > 0.5) != (p_bwd > 0.5)))
            self._count += len(fwd)
            out.append(average_orders(p_fwd, p_bwd))
        return np.concatenate(out)

    def pop_metrics(self) -> dict[str, float]:
        """``judge_position_bias`` (mean b) and ``judge_order_agreement`` over the
        comparisons scored since the last call (empty when there were none); resets."""
        if not self._count:
            return {}
        metrics = {
            "judge_position_bias": self._bias_sum / self._count,
            "judge_order_agreement": self._agree / self._count,
        }
        self._bias_sum, self._agree, self._count = 0.0, 0, 0
        return metrics


Comparisons = tuple[list[str], list[str], list[str]]
"""``(prompts, ys, y_primes)``, one of each per comparison."""


def as_given(prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]) -> Comparisons:
    """The comparisons unchanged (a model without a training budget)."""
    return list(prompts), list(ys), list(y_primes)


class PairwiseScorer:
    """A trained preference model (``pairwise_model``): ``model.prob`` (a backend's
    ``PreferenceModel``) of the comparisons ``pairs(prompts, ys, y_primes)`` (default as
    given; a trained model's as it was trained: :func:`nlhf.data.tokenizer.pairs_as_trained`),
    checked to be one probability per comparison in [0, 1]."""

    def __init__(
        self,
        model: Any,
        *,
        pairs: Callable[[Sequence[str], Sequence[str], Sequence[str]], Comparisons] = as_given,
    ) -> None:
        self.model, self.pairs = model, pairs

    def has_reward(self) -> bool:
        return False

    def reward(self, prompts: Sequence[str], ys: Sequence[str]) -> np.ndarray:
        raise _no_reward("pairwise_model")

    def prob(
        self, prompts: Sequence[str], ys: Sequence[str], y_primes: Sequence[str]
    ) -> np.ndarray:
        prompts, ys, y_primes = check_comparisons(prompts, ys, y_primes)
        return check_probabilities(
            self.model.prob(*self.pairs(prompts, ys, y_primes)), len(ys), "pairwise_model"
        )


# ------------------------------------------------------------------------- dispatch
BACKEND_AGNOSTIC = ("oracle", "remote", "openai_judge")
"""Preference kinds built here for every backend (a plugin's function, the network
scorers of :mod:`nlhf.preference.remote`); a backend's supported kinds are these plus
its :data:`Loaders`."""
Loaders = Mapping[str, Callable[[Any], Scorer]]
"""A backend's scorer factories by preference name (``bradley_terry_reward``,
``llm_judge``, ``pairwise_model``), each taking the spec's preference section."""


def check_supported(preference: Any, supported: Sequence[str], backend: str) -> None:
    """Refuse, before any model loads, a missing preference section or one that
    ``backend`` cannot score (``supported``: its names, ``oracle`` included)."""
    if preference is None:
        raise InputError("preference: a `task: nash` run needs a `preference` section")
    if preference.name == "tabular":
        raise InputError(
            "preference: tabular preferences run on the numpy backend: use --backend numpy"
        )
    if preference.name not in supported:
        raise InputError(
            f"preference.name: {preference.name!r} is not supported by the {backend} backend "
            f"(supported: {', '.join(supported)}); choose one of those or another --backend"
        )


def build_scorer(preference: Any, loaders: Loaders, *, backend: str, plugins: Any = None) -> Scorer:
    """The scorer of a spec's ``preference`` section: an :class:`OracleScorer` for
    ``oracle`` (``plugins``, a :class:`nlhf.plugins.Plugins`, overrides the process-wide
    plugin set), a network scorer for ``remote`` / ``openai_judge``
    (:func:`nlhf.preference.remote.build_remote_scorer`, the same on every backend), else
    ``loaders[name](preference)``."""
    from nlhf.preference.remote import REMOTE_PREFERENCES, build_remote_scorer

    check_supported(preference, (*BACKEND_AGNOSTIC, *loaders), backend)
    if preference.name == "oracle":
        return OracleScorer(preference, plugins)
    if preference.name in REMOTE_PREFERENCES:
        return build_remote_scorer(preference)
    return loaders[preference.name](preference)
