"""``task: offline``: the spec rules and bad pairs data give located errors; the reference
cache file round-trips bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nlhf.errors import InputError, SpecError
from nlhf.spec.load import load_spec
from nlhf.spec.models import RunSpec
from nlhf.testing.offline import build_offline_fixture
from nlhf.training import offline

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_offline_fixture(tmp_path_factory.mktemp("offline"))


def spec_text(
    fx: dict[str, Path], algorithm: str = "{name: dpo, tau: 0.1}", extra: str = ""
) -> str:
    return (
        "spec_version: 1\ntask: offline\n"
        f"policy: {{model: {fx['policy']}}}\n"
        f"data: {{path: {fx['pairs']}, format: preference}}\n"
        f"algorithm: {algorithm}\n" + extra
    )


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    return [str(i) for i in err.value.issues]


def test_dpo_without_tau_is_located(fixture: dict[str, Path], tmp_path: Path) -> None:
    issues = problems(tmp_path, spec_text(fixture, "{name: dpo}"))
    assert issues == [f"{tmp_path / 'spec.yaml'}:5:1: algorithm.tau: required field is missing"]


@pytest.mark.parametrize(
    ("algorithm", "extra", "fragment"),
    [
        ("{name: nash_md_pg}", "", "`task: offline` trains dpo or ipo on preference pairs"),
        (
            "{name: dpo, tau: 0.1}",
            "preference: {name: oracle, function: population}\n",
            "preference: `task: offline` learns from the pairs' labels",
        ),
        (
            "{name: ipo, tau: 0.1}",
            "training: {eval_every: 5}\n",
            "training.eval_every: `task: offline` scores its held-out pairs once",
        ),
    ],
)
def test_offline_spec_rules(
    fixture: dict[str, Path], tmp_path: Path, algorithm: str, extra: str, fragment: str
) -> None:
    assert any(fragment in i for i in problems(tmp_path, spec_text(fixture, algorithm, extra)))


def test_dpo_under_task_nash_is_refused(fixture: dict[str, Path], tmp_path: Path) -> None:
    text = spec_text(fixture).replace("task: offline", "task: nash")
    text += "preference: {name: oracle, function: population}\n"
    assert any("use `task: offline`" in i for i in problems(tmp_path, text))


def _pairs_spec(fx: dict[str, Path], path: Path) -> RunSpec:
    return RunSpec.model_validate(
        {
            "task": "offline",
            "policy": {"model": str(fx["policy"])},
            "data": {"path": str(path), "format": "preference"},
            "algorithm": {"name": "ipo", "tau": 0.1},
        }
    )


def _tokenizer(fx: dict[str, Path]):  # type: ignore[no-untyped-def]
    from nlhf.data.tokenizer import load_tokenizer

    return load_tokenizer(fx["policy"])


def test_empty_pairs_file(fixture: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match=r"^data.path: .*empty.jsonl is empty \(no pairs\)"):
        offline.load_offline_pairs(_pairs_spec(fixture, empty), _tokenizer(fixture))


def test_missing_column(fixture: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "chosen": " a", "answer": " b"}) + "\n")
    with pytest.raises(InputError, match="rejected") as err:
        offline.load_offline_pairs(_pairs_spec(fixture, bad), _tokenizer(fixture))
    assert str(err.value).startswith("data")


def test_soft_labels_are_refused_and_zero_labels_swap(
    fixture: dict[str, Path], tmp_path: Path
) -> None:
    rows = [
        {"prompt": "x", "chosen": " a", "rejected": " b", "label": 0.0},
        {"prompt": "y", "chosen": " c", "rejected": " d", "label": 1.0},
    ]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, _, _ = offline.load_offline_pairs(_pairs_spec(fixture, path), _tokenizer(fixture))
    swapped = {p.prompt: (p.chosen, p.rejected) for p in pairs.train}
    assert swapped == {"x": (" b", " a"), "y": (" c", " d")}
    rows[0]["label"] = 0.7
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match="soft label"):
        offline.load_offline_pairs(_pairs_spec(fixture, path), _tokenizer(fixture))


def test_cache_file_round_trips_bit_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = offline.ReferenceLogprobs(*(rng.standard_normal(n) * 50 for n in (5, 5, 2, 2)))
    offline.write_reference_cache(tmp_path, {"key": "k1"}, values)
    offline._MEMORY.clear()
    read, on_disk = offline.load_reference_cache(tmp_path, "k1")
    assert on_disk and read is not None
    for a, b in zip(
        (read.chosen, read.eval_rejected), (values.chosen, values.eval_rejected), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert offline.load_reference_cache(tmp_path, "other") == (None, False)


def test_lora_capabilities_are_checked_before_loading(fixture: dict[str, Path]) -> None:
    """Both backends train a LoRA adapter offline; μ is then the base with the adapter
    off, so reference.model is refused before anything loads."""
    from nlhf.spec.capabilities import capabilities_of, check_capabilities

    def spec(**reference: str) -> RunSpec:
        return RunSpec.model_validate(
            {
                "task": "offline",
                "policy": {"model": str(fixture["policy"]), "lora": {"r": 4}},
                "reference": reference,
                "data": {"path": str(fixture["pairs"])},
                "algorithm": {"name": "dpo", "tau": 0.1},
            }
        )

    for backend in ("torch", "jax"):
        caps = capabilities_of(backend)
        assert caps is not None
        assert check_capabilities(spec(), caps, backend) == []
        with_reference = check_capabilities(spec(model=str(fixture["reference"])), caps, backend)
        assert [(p.path, p.message) for p in with_reference] == [
            (
                ("reference", "model"),
                "with policy.lora the reference is the policy with its adapter disabled; "
                "remove reference.model",
            )
        ]


def test_memory_estimate_covers_offline_runs(fixture: dict[str, Path]) -> None:
    """nlhf validate's memory lower bound counts an offline micro-batch: B·T·V·4 bytes of
    logits at least (B pairs, T = data.max_length, V from the model's config.json)."""
    from nlhf.spec import preflight

    spec = RunSpec.model_validate(
        {
            "task": "offline",
            "policy": {"model": str(fixture["policy"])},
            "data": {"path": str(fixture["pairs"]), "max_length": 512},
            "algorithm": {"name": "dpo", "tau": 0.1},
            "training": {"batch_size": 64},
        }
    )
    vocab = json.loads((fixture["policy"] / "config.json").read_text())["vocab_size"]
    [estimate] = preflight.estimate_memory(spec)
    assert estimate.total >= 64 * 512 * vocab * 4
    [(field, message)] = preflight.memory_problems(spec, available=2**20)
    assert field == ("training", "batch_size") and "lower training.batch_size" in message
