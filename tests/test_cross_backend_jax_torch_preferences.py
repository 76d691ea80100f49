"""torch vs jax preferences and preference-model training from the same tiny checkpoints:
each side runs its production code path — the torch preferences
(:mod:`nlhf_torch.preference`) are the oracle for the jax ones
(:mod:`nlhf_jax.preference`), within the float32
model-scope tolerance of :mod:`nlhf.testing.tolerances` (whole networks on two frameworks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytestmark = [pytest.mark.jax, pytest.mark.torch]

from nlhf.spec.models import RunSpec  # noqa: E402
from nlhf.testing.tolerances import assert_close  # noqa: E402

PROMPTS = ["Pick a fruit:", "Which is better?", "Hello", "The quick brown fox", "Why not?"]
YS = [" apple", " a long answer here that goes on and on", " 1", " jumps", " It is unsafe."]
YPS = [" banana", " 2", " short", " over the lazy dog and more words", " Mix flour."]
TEMPLATE = "Q: {prompt} A1: {response_1} A2: {response_2} Better:"


def _randomize(model: Any, seed: int, std: float = 0.3) -> Any:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std + (1.0 if "norm" in name else 0.0))
    return model


def _nash_spec(preference: dict[str, Any]) -> RunSpec:
    return RunSpec.model_validate({
        "policy": {"model": "unused"}, "preference": preference,
        "data": {"path": "unused.jsonl"}, "algorithm": {"name": "nash_md_pg"},
    })  # fmt: skip


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A judge LM (Llama), a BT reward model (Qwen2 classifier), a tokenizer that adds
    BOS (so truncation must count special tokens), and two saved torch pairwise models
    (``lm`` and ``classification`` heads)."""
    from nlhf_torch.preference.model import PreferenceConfig, build_preference_model
    from nlhf_torch.tiny import build_tiny_model
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    root = tmp_path_factory.mktemp("xpref")
    lm = build_tiny_model(root / "lm-raw", "llama")
    _randomize(AutoModelForCausalLM.from_pretrained(lm), 1).save_pretrained(root / "lm")
    rm = build_tiny_model(
        root / "rm-raw", "qwen2", tokenizer_dir=lm, head="sequence_classification"
    )
    _randomize(AutoModelForSequenceClassification.from_pretrained(rm), 2).save_pretrained(
        root / "rm"
    )
    bos = root / "bos_tok"
    bos.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bos / name).write_text((lm / name).read_text())
    tj = json.loads((bos / "tokenizer.json").read_text())
    tj["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [1], "tokens": ["<|bos|>"]}},
    }  # fmt: skip
    (bos / "tokenizer.json").write_text(json.dumps(tj))
    # as every real checkpoint, the tokenizer is saved by the class transformers loads it
    # with (for a qwen2 directory, Qwen2Tokenizer rebuilds the pre-tokenizer); the jax
    # backend reads that tokenizer.json as is
    for name in ("lm", "rm"):
        AutoTokenizer.from_pretrained(lm if name == "lm" else rm).save_pretrained(root / name)
    out = {"lm": root / "lm", "rm": root / "rm", "bos_tok": bos}
    for head in ("lm", "classification"):
        cfg = PreferenceConfig(kind="pairwise", head=head, template=TEMPLATE, max_length=40)
        model = build_preference_model(root / "lm", cfg)
        if head == "classification":
            _randomize(model.model, 3)
        model.save(root / f"pw-{head}")
        out[f"pw-{head}"] = root / f"pw-{head}"
    bt = PreferenceConfig(kind="bradley_terry", head="classification", max_length=12)
    build_preference_model(root / "rm", bt).save(root / "pw-bt")
    out["pw-bt"] = root / "pw-bt"
    # Qwen2 directories whose tokenizer.json is the generic one build_tiny_model writes
    # (not re-saved by Qwen2Tokenizer): transformers 5 still loads Qwen2Tokenizer, with
    # Qwen's pre-tokenizer (single digits, ...), so tokenizer.json read as is differs
    for name, head, seed in (("qwen2", "causal_lm", 4), ("qwen2-rm", "sequence_classification", 5)):
        build_tiny_model(root / name, "qwen2", tokenizer_dir=lm, head=head, seed=seed)
        cls = AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification
        _randomize(cls.from_pretrained(root / name), seed).save_pretrained(root / name)
        out[name] = root / name
    return out


def _both(preference: dict[str, Any]) -> tuple[Any, Any]:
    from nlhf_jax.preference.scorers import build_scorer as jax_scorer
    from nlhf_torch.preference.scorers import build_scorer as torch_scorer

    spec = _nash_spec(preference)
    return torch_scorer(spec.preference), jax_scorer(spec.preference)


@pytest.mark.parametrize(
    "options",
    [
        {},
        pytest.param({"max_length": 6, "batch_size": 2}, marks=pytest.mark.slow),
        {"tokenizer": "bos_tok", "max_length": 5},
    ],
    ids=["plain", "truncated-batched", "bos-truncated"],
)
def test_bradley_terry_reward_matches_torch(ckpts: dict[str, Path], options: dict) -> None:
    options = dict(options)
    if "tokenizer" in options:
        options["tokenizer"] = str(ckpts[options["tokenizer"]])
    t, j = _both({"name": "bradley_terry_reward", "path": str(ckpts["rm"]), **options})
    assert_close(j.reward(PROMPTS, YS), t.reward(PROMPTS, YS), what="reward", scope="model")
    p = j.prob(PROMPTS, YS, YPS)
    assert p.dtype == np.float64
    assert_close(p, t.prob(PROMPTS, YS, YPS), what="P", scope="model")
    # σ(r − r') + σ(r' − r) = 1 from the same two rewards: one kernel
    assert_close(p + j.prob(PROMPTS, YPS, YS), 1.0, what="P(y≻y') + P(y'≻y)")


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, marks=pytest.mark.slow),
        {"max_length": 20, "batch_size": 3},
        pytest.param({"tokenizer": "bos_tok", "max_length": 17}, marks=pytest.mark.slow),
    ],
    ids=["plain", "truncated-batched", "bos-truncated"],
)
def test_llm_judge_matches_torch(ckpts: dict[str, Path], options: dict) -> None:
    options = dict(options)
    if "tokenizer" in options:
        options["tokenizer"] = str(ckpts[options["tokenizer"]])
    t, j = _both({"name": "llm_judge", "model": str(ckpts["lm"]), "template": TEMPLATE, **options})
    p = j.prob(PROMPTS, YS, YPS)
    assert_close(p, t.prob(PROMPTS, YS, YPS), what="P", scope="model")
    # swapped inputs land in other batches / length buckets: equal up to float32 noise
    assert_close(p + j.prob(PROMPTS, YPS, YS), 1.0, what="P(y≻y') + P(y'≻y)", scope="model")
    assert np.ptp(p) > 1e-3  # the tiny judge is not constant


@pytest.mark.parametrize(
    "which",
    [
        "pw-lm",
        "pw-classification",
        *(pytest.param(w, marks=pytest.mark.slow) for w in ("pw-bt", "lm", "rm")),
    ],
)
def test_pairwise_model_matches_torch(ckpts: dict[str, Path], which: str) -> None:
    """Saved torch preference models (both heads, BT kind, max_length 40/12 so texts are
    truncated) and bare checkpoints (zero-shot judge, BT reward) give torch's P."""
    t, j = _both({"name": "pairwise_model", "path": str(ckpts[which]), "batch_size": 2})
    p = j.prob(PROMPTS, YS, YPS)
    assert_close(p, np.asarray(t.prob(PROMPTS, YS, YPS)), what="P", scope="model")
    assert_close(p + j.prob(PROMPTS, YPS, YS), 1.0, what="P(y≻y') + P(y'≻y)", scope="model")
    assert np.ptp(p) > 1e-4


# ------------------------------------------------------------------ training (task 2)
PAIRS = [  # (prompt, chosen, rejected, label); soft labels included
    ("Pick a fruit:", " apple", " banana", 1.0),
    ("Which is better?", " a long answer here", " 2", 0.8),
    ("Hello", " 1", " short", 1.0),
    ("The quick brown fox", " jumps", " over the lazy dog", 0.3),
    ("Why not?", " It is unsafe.", " Mix flour.", 1.0),
]


def _train_spec(model: Path, head: str, **training: Any) -> RunSpec:
    return RunSpec.model_validate({
        "task": "preference_model", "policy": {"model": str(model)},
        "data": {"path": "unused.jsonl", "max_length": 40},
        "preference_training": {"kind": "pairwise", "head": head, "template": TEMPLATE},
        "training": {"lr": 1e-3, "max_grad_norm": 5.0, "grad_accum": 2, "lr_schedule": "linear",
                     "warmup_steps": 1, "steps": 3,
                     "optimizer": {"name": "adamw", "weight_decay": 0.1}, **training},
    })  # fmt: skip


@pytest.mark.parametrize("head", [pytest.param("lm", marks=pytest.mark.slow), "classification"])
def test_one_training_step_matches_torch(ckpts: dict[str, Path], head: str) -> None:
    """Same checkpoint, same batch (two grad-accumulation chunks, soft labels, texts cut
    at max_length 40): the loss, the gradient norm and every parameter after two AdamW
    steps (clipping, decay, warm-up then linear decay) agree with torch's trainer.

    (lr 1e-3 and a clip at 5: Adam's update g/(|g|+ε) turns float32 noise in a gradient
    entry near ε into a parameter difference up to lr, so lr bounds what 1e-5 can see.)"""
    from nlhf.data.pairs import Pair
    from nlhf_jax.models import to_hf_state_dict
    from nlhf_jax.optim import build_optimizer
    from nlhf_jax.preference import model as jm
    from nlhf_jax.preference.train import Stepper
    from nlhf_torch.kernels import preference_loss
    from nlhf_torch.optim import build_optimizer as torch_optimizer
    from nlhf_torch.optim import build_scheduler
    from nlhf_torch.preference import model as tm

    src = ckpts["lm"] if head == "lm" else ckpts["pw-classification"]
    spec = _train_spec(src, head)
    pairs = [Pair(*row) for row in PAIRS]
    chunks = [pairs[:3], pairs[3:]]  # torch.tensor_split(5 pairs, 2) sizes
    t_cfg = tm.PreferenceConfig(kind="pairwise", head=head, template=TEMPLATE, max_length=40)
    j_cfg = jm.PreferenceConfig(kind="pairwise", head=head, template=TEMPLATE, max_length=40)
    t_model = tm.build_preference_model(src, t_cfg)
    t_model.train()
    j_model = jm.build_preference_model(src, j_cfg)
    params = [p for p in t_model.parameters() if p.requires_grad]
    opt = torch_optimizer(params, spec.training)
    sched = build_scheduler(opt, spec.training, spec.training.steps)
    tx = build_optimizer(spec.training, spec.training.steps)
    stepper, opt_state = Stepper(j_model, tx), tx.init(j_model.state)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        t_loss = 0.0
        for chunk in chunks:
            v_fwd, v_bwd = t_model.pair_scores(
                [q.prompt for q in chunk], [q.chosen for q in chunk], [q.rejected for q in chunk]
            )
            target = torch.tensor([q.label for q in chunk], dtype=v_fwd.dtype)
            loss = preference_loss(v_fwd, v_bwd, target) * (len(chunk) / len(pairs))
            loss.backward()
            t_loss += float(loss.detach())
        t_norm = float(torch.nn.utils.clip_grad_norm_(params, spec.training.max_grad_norm))
        opt.step()
        sched.step()
        opt_state, j_loss, j_norm = stepper.step(opt_state, chunks, len(pairs))
        assert_close(j_loss, t_loss, what="loss", scope="model")
        assert_close(j_norm, t_norm, what="gradient norm", scope="model")
    assert t_norm > spec.training.max_grad_norm  # clipping was active
    theirs = {k: v.detach().numpy() for k, v in t_model.model.state_dict().items()}
    ours = to_hf_state_dict(j_model.model)
    assert set(ours) <= set(theirs)
    for name, value in ours.items():
        assert_close(value, theirs[name], what=name, scope="model")


@pytest.mark.parametrize(
    ("kind", "head"),
    [
        ("pairwise", "classification"),
        pytest.param("bradley_terry", "classification", marks=pytest.mark.slow),
        pytest.param("pairwise", "lm", marks=pytest.mark.slow),
    ],
)
def test_jax_saved_model_loads_in_torch(
    ckpts: dict[str, Path], tmp_path: Path, kind: str, head: str
) -> None:
    """A jax preference model started from a causal LM (a fresh score head for
    ``classification``) and saved: transformers / torch's preference classes load it and
    give the same P."""
    from nlhf_jax.preference import model as jm
    from nlhf_torch.preference.serve import load_pairwise_model

    cfg = jm.PreferenceConfig(kind=kind, head=head, template=TEMPLATE, max_length=30)
    j_model = jm.build_preference_model(ckpts["lm"], cfg, seed=1)
    j_model.save(tmp_path / "m")
    t_model = load_pairwise_model(tmp_path / "m")
    p = j_model.prob(PROMPTS, YS, YPS)
    assert_close(p, t_model.prob(PROMPTS, YS, YPS), what="P", scope="model")
    assert np.ptp(p) > 1e-4
    if kind == "bradley_terry":  # the nash preference reads it as a BT reward model
        t, j = _both({"name": "bradley_terry_reward", "path": str(tmp_path / "m")})
        p_torch = t.prob(PROMPTS, YS, YPS)
        assert_close(j.prob(PROMPTS, YS, YPS), p_torch, what="BT P", scope="model")


@pytest.mark.slow
def test_jax_run_checkpoints_load_in_torch(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """A short ``task: preference_model`` run on jax (pairwise judge + BT baseline): its
    checkpoint and final models give torch's preference classes the same P, and
    ``nlhf_preference.json`` says what was trained."""
    from nlhf_jax.backend import JaxBackend
    from nlhf_jax.preference.model import load_preference_model
    from nlhf_torch.preference.serve import load_pairwise_model

    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": x, "chosen": a, "rejected": b} for x, a, b, _ in PAIRS] * 3
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = RunSpec.model_validate({
        "task": "preference_model", "policy": {"model": str(ckpts["lm"])},
        "data": {"path": str(data), "max_length": 48, "eval_fraction": 0.2},
        "preference_training": {"template": TEMPLATE, "compare_baseline": True},
        "training": {"steps": 2, "batch_size": 4, "lr": 1e-3},
        "output": {"checkpoint_every": 1},
    })  # fmt: skip
    summary = JaxBackend().train(spec, tmp_path / "run")
    assert summary["baseline"]["kind"] == "bradley_terry"
    for d in ("run/checkpoints/step-1", "run/model", "run/baseline/model"):
        path = tmp_path / d
        p_jax = load_preference_model(path).prob(PROMPTS, YS, YPS)
        p_torch = load_pairwise_model(path).prob(PROMPTS, YS, YPS)
        assert_close(p_jax, p_torch, what=d, scope="model")
    saved = json.loads((tmp_path / "run/baseline/model/nlhf_preference.json").read_text())
    assert saved["kind"] == "bradley_terry" and saved["max_length"] == 48


@pytest.mark.slow
def test_whole_run_matches_torch_with_the_shared_batch_order(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    """Both backends' ``task: preference_model`` runs from the same judge LM: the same
    data report and every logged metric (losses, gradient norms, learning rates, held-out
    metrics) at the model-scope tolerance; both draw batches with
    ``nlhf.data.pairs.pair_batch_indices``."""
    import nlhf_torch.preference.train as torch_train
    from nlhf.runio import read_metrics
    from nlhf_jax.preference.train import train_preference_model as jax_train

    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": x, "chosen": a, "rejected": b, "label": p} for x, a, b, p in PAIRS] * 2
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = RunSpec.model_validate({
        "task": "preference_model", "seed": 3, "policy": {"model": str(ckpts["lm"])},
        "data": {"path": str(data), "max_length": 40, "eval_fraction": 0.2},
        "preference_training": {"template": TEMPLATE},
        "training": {"steps": 3, "batch_size": 3, "grad_accum": 2, "lr": 1e-3,
                     "max_grad_norm": 5.0, "lr_schedule": "cosine", "warmup_steps": 1},
    })  # fmt: skip
    s_torch = torch_train.train_preference_model(spec, tmp_path / "torch")
    s_jax = jax_train(spec, tmp_path / "jax")
    assert s_jax["data"] == s_torch["data"]
    m_torch, m_jax = read_metrics(tmp_path / "torch"), read_metrics(tmp_path / "jax")
    assert [sorted(r) for r in m_jax] == [sorted(r) for r in m_torch]
    for a, b in zip(m_jax, m_torch, strict=True):
        for key in a:
            assert_close(a[key], b[key], what=f"step {a['step']}: {key}", scope="model")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "head"), [("pairwise", "lm"), ("bradley_terry", "classification")]
)
def test_jax_lora_run_loads_in_torch(
    ckpts: dict[str, Path], tmp_path: Path, kind: str, head: str
) -> None:
    """A ``policy.lora`` preference run on jax: its checkpoint and final directories load
    in torch's preference classes (the merged weights) and give the P of the jax model
    with the adapters on (model-scope tolerance); the ``adapter/`` files are a peft adapter whose
    logits on the base model (peft, torch) are the merged model's."""
    from nlhf_jax.backend import JaxBackend
    from nlhf_jax.preference.model import load_lora_checkpoint, load_preference_model
    from nlhf_torch.preference.serve import load_pairwise_model

    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": x, "chosen": a, "rejected": b} for x, a, b, _ in PAIRS] * 3
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = RunSpec.model_validate({
        "task": "preference_model", "policy": {"model": str(ckpts["lm"]),
                                               "lora": {"r": 4, "alpha": 8}},
        "data": {"path": str(data), "max_length": 48},
        "preference_training": {"kind": kind, "head": head, "template": TEMPLATE},
        "training": {"steps": 2, "batch_size": 4, "lr": 1e-2},
        "output": {"checkpoint_every": 1},
    })  # fmt: skip
    JaxBackend().train(spec, tmp_path / "run")
    for d in ("checkpoints/step-1", "model"):
        path = tmp_path / "run" / d
        p_torch = np.asarray(load_pairwise_model(path).prob(PROMPTS, YS, YPS))
        unmerged = load_lora_checkpoint(path, ckpts["lm"], spec.policy.lora)
        assert_close(unmerged.prob(PROMPTS, YS, YPS), p_torch, what=d, scope="model")
        merged = load_preference_model(path)
        assert_close(merged.prob(PROMPTS, YS, YPS), p_torch, what=d, scope="model")
        assert np.ptp(p_torch) > 1e-4
    path = tmp_path / "run" / "model"
    if kind == "bradley_terry":  # the nash preference reads it as a BT reward model
        t, j = _both({"name": "bradley_terry_reward", "path": str(path)})
        p_torch = t.prob(PROMPTS, YS, YPS)
        assert_close(j.prob(PROMPTS, YS, YPS), p_torch, what="BT P", scope="model")
        return
    from nlhf_torch.preference.model import PreferenceConfig, build_preference_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    PeftModel = pytest.importorskip("peft").PeftModel

    cfg = PreferenceConfig(kind=kind, head=head, template=TEMPLATE, max_length=48)
    untrained = build_preference_model(ckpts["lm"], cfg).prob(PROMPTS, YS, YPS)
    assert np.abs(np.asarray(untrained) - p_torch).max() > 1e-4  # the adapter matters
    ids = AutoTokenizer.from_pretrained(path)(PROMPTS[3] + YS[3], return_tensors="pt").input_ids
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(ckpts["lm"])
        peft_logits = PeftModel.from_pretrained(base, path / "adapter")(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(path)(ids).logits
    assert_close(peft_logits.numpy(), merged_logits.numpy(), what="logits", scope="model")


# ---------------------------------------------------- Qwen2 tokenizers (transformers')
Q_PROMPTS = ["Count  to 123:", "Year 2024?", "Hello   world", "x=42", "Why not?"]
Q_YS = [" 1 2 3", "  It was 1999.", " hi", " 7  8", " It is unsafe."]
Q_YPS = [" one two", " 2024!!", "  12 34", " 99", " Mix 3 cups."]


def test_qwen2_directories_tokenize_differently_from_their_tokenizer_json(
    ckpts: dict[str, Path],
) -> None:
    """The premise of the Qwen2 cases below: transformers (what torch uses) and the raw
    ``tokenizer.json`` disagree on these texts, so only one tokenizer path can match."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    for name in ("qwen2", "qwen2-rm"):
        hf = AutoTokenizer.from_pretrained(ckpts[name])
        raw = Tokenizer.from_file(str(ckpts[name] / "tokenizer.json"))
        texts = [x + y for x, y in zip(Q_PROMPTS, Q_YS, strict=True)]
        assert sum(hf.encode(t) != raw.encode(t).ids for t in texts) >= 3, name


@pytest.mark.parametrize(
    "preference",
    [
        {"name": "pairwise_model", "path": "qwen2", "batch_size": 2},
        {"name": "pairwise_model", "path": "qwen2-rm"},
        {"name": "bradley_terry_reward", "path": "qwen2-rm", "max_length": 8, "batch_size": 3},
        {"name": "llm_judge", "model": "qwen2", "template": TEMPLATE, "answer_tokens": ["1", "2"]},
    ],
    ids=["pairwise-judge", "pairwise-bt", "bradley-terry", "llm-judge"],
)
def test_qwen2_preferences_match_torch(ckpts: dict[str, Path], preference: dict) -> None:
    """On Qwen2 directories (digits, runs of spaces) the jax preferences tokenize as
    transformers does and give torch's probabilities (model-scope tolerance)."""
    preference = {k: str(ckpts[v]) if k in ("path", "model") else v for k, v in preference.items()}
    t, j = _both(preference)
    p = j.prob(Q_PROMPTS, Q_YS, Q_YPS)
    assert_close(p, np.asarray(t.prob(Q_PROMPTS, Q_YS, Q_YPS)), what="P", scope="model")
    assert np.ptp(p) > 1e-4


CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tok(ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The judge LM's tokenizer with a chat template, as an instruct model's has."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpts["lm"])
    tok.chat_template = CHAT_TEMPLATE
    out = tmp_path_factory.mktemp("chat_tok")
    tok.save_pretrained(out)
    return out


def test_llm_judge_with_chat_template_and_multi_token_answers_matches_torch(
    ckpts: dict[str, Path], chat_tok: Path
) -> None:
    """An instruct judge (chat template) whose answers are several tokens each: both
    backends read the first differing token after the chat-formatted judge text and the
    answers' shared prefix, and agree."""
    from transformers import AutoTokenizer

    answers = [" Response 1", " Response 2"]
    tok = AutoTokenizer.from_pretrained(chat_tok)
    assert all(len(tok.encode(a, add_special_tokens=False)) > 1 for a in answers)
    base = {"name": "llm_judge", "model": str(ckpts["lm"]), "template": TEMPLATE}
    chat = {**base, "tokenizer": str(chat_tok), "answer_tokens": answers}
    t, j = _both(chat)
    p = j.prob(PROMPTS, YS, YPS)
    assert_close(p, t.prob(PROMPTS, YS, YPS), what="P", scope="model")
    assert_close(p + j.prob(PROMPTS, YPS, YS), 1.0, what="P(y≻y') + P(y'≻y)", scope="model")
    assert t.wrap is not None and j.wrap is not None
    assert t.wrap("x") == "<|user|>x\n<|assistant|>"
    # the chat template changes the judge's input, so its P
    t_plain, _ = _both({**chat, "chat_template": False})
    assert np.max(np.abs(t_plain.prob(PROMPTS, YS, YPS) - p)) > 1e-6
    bias = t.pop_metrics()["judge_position_bias"]
    assert -0.5 <= bias <= 0.5
