"""The ``population`` oracle: the tabular population game as a text preference, its
Bradley–Terry reward, and the summary's distances to the regularised Nash equilibrium."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from nlhf.errors import InputError
from nlhf.plugins import build_plugins
from nlhf.spec import RunSpec
from nlhf.spec.load import load_spec
from nlhf.tabular.games import population
from nlhf.tabular.metrics import duality_gap
from nlhf.testing.tolerances import assert_close, sampling_bound
from nlhf.training.protocols import Tokens
from nlhf_quickstart.assets import prepare_assets
from nlhf_quickstart.measure import answer_probs
from nlhf_quickstart.population import PopulationOracle, bradley_terry_fit
from nlhf_quickstart.task import ANSWERS, PROMPTS
from nlhf_torch.preference.scorers import build_scorer
from transformers import AutoModelForCausalLM, AutoTokenizer

SPEC = Path(__file__).resolve().parents[3] / "specs" / "quickstart.yaml"
ROUNDING = 1e-4
"""The summary rounds its distributions to 4 digits."""


def _oracle_spec(options: dict[str, object] | None = None) -> RunSpec:
    return RunSpec.model_validate(
        {
            "policy": {"model": "unused"},
            "preference": {"name": "oracle", "function": "population", "options": options or {}},
            "data": {"path": "unused.jsonl"},
            "algorithm": {"name": "nash_md_pg"},
        }
    )


class HFProbe:
    """A :class:`nlhf.training.PolicyProbe` over transformers models written for the test:
    one unpadded forward per row, and plain ancestral sampling (no padding, no cache)."""

    def __init__(self, policy: Any, reference: Any, tokenizer: Any) -> None:
        self.models = {"policy": policy, "reference": reference}
        self.tokenizer = tokenizer

    @torch.no_grad()
    def sequence_logprobs(
        self, prompt_ids: Tokens, completion_ids: Tokens, *, model: str, temperature: float
    ) -> np.ndarray:
        out = []
        for p, c in zip(prompt_ids, completion_ids, strict=True):
            logits = self.models[model](input_ids=torch.tensor([p + c])).logits[0].double()
            lp = torch.log_softmax(logits[len(p) - 1 : -1] / temperature, -1)
            out.append(lp[torch.arange(len(c)), torch.tensor(c)].sum().item())
        return np.array(out)

    @torch.no_grad()
    def sample_completions(
        self, prompt_ids: Tokens, *, temperature: float, max_new_tokens: int, seed: int
    ) -> Tokens:
        """Ancestral sampling, all rows of one prompt in one unpadded batch."""
        gen = torch.Generator().manual_seed(seed)
        eos = self.tokenizer.eos_token_id
        rows: list[list[int]] = [[] for _ in prompt_ids]
        for prompt in dict.fromkeys(tuple(p) for p in prompt_ids):
            which = [i for i, p in enumerate(prompt_ids) if tuple(p) == prompt]
            ids = torch.tensor([prompt] * len(which))
            for _ in range(max_new_tokens):
                logits = self.models["policy"](input_ids=ids).logits[:, -1].double()
                probs = torch.softmax(logits / temperature, -1)
                ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], 1)
            for i, seq in zip(which, ids[:, len(prompt) :].tolist(), strict=True):
                rows[i] = seq[: seq.index(eos) + 1] if eos in seq else seq
        return rows


def _pairs(tok: Any, prompts: list[str]) -> tuple[Tokens, Tokens]:
    """Prompt-major rows of every prompt × (answer + EOS)."""
    p_ids = [tok(x)["input_ids"] for x in prompts]
    a_ids = [[*tok(a, add_special_tokens=False)["input_ids"], tok.eos_token_id] for a in ANSWERS]
    return [p for p in p_ids for _ in a_ids], [a for _ in p_ids for a in a_ids]


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """The quickstart tokenizer and tiny Llama without SFT (a few seconds to build)."""
    root = tmp_path_factory.mktemp("qs-untrained") / "quickstart-assets"
    prepare_assets(root, sft_steps=0)
    policy = root / "policy"
    return AutoModelForCausalLM.from_pretrained(policy), AutoTokenizer.from_pretrained(policy)


def test_population_oracle_is_the_tabular_population_game() -> None:
    pref = build_scorer(_oracle_spec().preference, plugins=build_plugins())  # the installed plugin
    P = population().matrix
    for i, a in enumerate(ANSWERS):
        for j, b in enumerate(ANSWERS):
            assert pref.prob(["x"], [a], [b]).item() == P[i, j]
    # unknown answers lose to known ones and tie with each other
    probs = pref.prob(["x"] * 3, [" kiwi", " apple", " kiwi"], [" apple", " kiwi", " fig"])
    assert probs.tolist() == [0.0, 1.0, 0.5]
    rewards = PopulationOracle().reward(["x"] * 4, [" apple", " banana", " cherry", " kiwi"])
    assert rewards[0] > rewards[1] > rewards[2] > rewards[3]


def test_population_oracle_rejects_bad_options() -> None:
    with pytest.raises(InputError, match="weights must sum to 1"):
        PopulationOracle(types=[[0.5, [0, 1, 2]], [0.4, [1, 2, 0]]])
    with pytest.raises(InputError, match="order all 3 answers"):
        PopulationOracle(types=[[1.0, [0, 1]]])
    with pytest.raises(InputError, match="use bradley_terry or borda"):
        PopulationOracle(reward="elo")
    borda = PopulationOracle(reward="borda")
    assert_close(borda.rewards, population().matrix.mean(1), "float64", "Borda rewards")


def test_bradley_terry_fit_is_the_maximum_likelihood() -> None:
    """Stationarity of Σ_{i≠j} P_ij log σ(r_i − r_j): Σ_{j≠i} P_ij = Σ_{j≠i} σ(r_i − r_j)."""
    P = population().matrix
    r = bradley_terry_fit(P)
    s = 1 / (1 + np.exp(-(r[:, None] - r[None, :])))
    off = 1 - np.eye(3)
    assert_close((P * off).sum(1), (s * off).sum(1), "float64", "BT score equations")
    assert np.argmax(r) == 0  # the best ranking: apple (most wins, 1.15 Borda) first


def test_answer_probs_match_unbatched_forwards(untrained: tuple[Any, Any]) -> None:
    """π(answer EOS | x) from the padded batch the SFT trains on = exp Σ log_softmax of one
    unpadded forward over prompt + answer + EOS per pair."""
    model, tok = untrained
    prompts = ["Pick a fruit:", "Which fruit?"]  # different lengths: padding is exercised
    got = answer_probs(model, tok, prompts, ANSWERS, 0.7)
    rows_p, rows_a = _pairs(tok, prompts)
    lp = HFProbe(model, model, tok).sequence_logprobs(
        rows_p, rows_a, model="policy", temperature=0.7
    )
    want = np.exp(lp).reshape(len(prompts), len(ANSWERS))
    assert_close(got, want, "float32", "answer probabilities", scope="model")


def test_summary_reports_distances_to_the_regularised_nash(
    untrained: tuple[Any, Any],
) -> None:
    spec = load_spec(SPEC)
    model, tok = untrained
    oracle = PopulationOracle(eval_samples=8)
    prompt = "Pick a fruit:"  # one prompt: the reported means are that prompt's values
    probe = HFProbe(model, model, tok)
    out = oracle.summary(probe=probe, prompts=[prompt, prompt], spec=spec)
    tau = spec.algorithm.tau
    assert out["tau"] == tau
    rows_p, rows_a = _pairs(tok, [prompt])
    temp = spec.training.generation.temperature
    exact = np.exp(probe.sequence_logprobs(rows_p, rows_a, model="policy", temperature=temp))
    mu = np.array(list(out["reference"].values()))
    ne = np.array(list(out["regularized_nash"].values()))
    np.testing.assert_allclose(mu, exact / exact.sum(), rtol=0, atol=ROUNDING)
    assert_close(out["known_answer_mass"], exact.sum(), "float32", "answer mass", scope="model")
    # the reported NE is the regularised NE of the tabular population game: zero duality gap
    assert duality_gap(population().matrix, mu, ne, tau) < 10 * ROUNDING
    assert out["policy"] == out["reference"]  # policy = reference here
    assert out["tv_policy_to_nash"] == out["tv_reference_to_nash"]
    tv = 0.5 * np.abs(mu - ne).sum()
    assert out["tv_reference_to_nash"] == pytest.approx(tv, abs=len(ANSWERS) * ROUNDING)
    sampled_total = sum(out["policy_sampled"].values())
    assert sampled_total == pytest.approx(1.0, abs=(len(ANSWERS) + 1) * ROUNDING)
    assert out["preference_matrix"] == population().matrix.tolist()


@pytest.mark.slow
def test_sampled_answers_match_the_exact_distribution(quickstart_assets: Path) -> None:
    """On the SFT policy: the sampled answer frequencies estimate the exact π(·|x)."""
    spec = load_spec(SPEC)
    policy = quickstart_assets / "policy"
    model = AutoModelForCausalLM.from_pretrained(policy)
    tok = AutoTokenizer.from_pretrained(policy)
    n = 256
    out = PopulationOracle(eval_samples=n).summary(
        probe=HFProbe(model, model, tok), prompts=list(PROMPTS), spec=spec
    )
    exact = answer_probs(model, tok, list(PROMPTS), ANSWERS, 1.0).mean(0)
    sampled = np.array(list(out["policy_sampled"].values()))
    bound = sampling_bound(0.5, n * len(PROMPTS)) + ROUNDING  # Bernoulli std ≤ ½
    np.testing.assert_allclose(sampled[:-1], exact, rtol=0, atol=bound)
    assert sampled[-1] < 1 - exact.sum() + bound  # "other": what the answers leave
