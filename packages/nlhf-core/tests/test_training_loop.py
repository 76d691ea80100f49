"""The core Nash loop (nlhf.training.loop) on a NumPy toy stepper: what the loop itself
decides — prompt order, micro-batch and rank averaging, the rlhf_pg centring, records,
checkpoint cadence, rank-0 gating, the non-finite stop and the signal stop — checked
against hand computations, with no framework installed."""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nlhf.data.prompts import batch_indices
from nlhf.errors import InputError
from nlhf.runio import atomic_directory, list_checkpoints, read_metrics
from nlhf.spec import RunSpec
from nlhf.testing.tolerances import assert_close
from nlhf.training import NashLoop, NonFiniteError, Samples, TrainerState, Update
from nlhf.training.loop import RECORD_KEYS, SUMMARY_KEYS

PROMPTS = ["ab", "cde", "f", "ghij", "kl", "mno"]


class ByteTokenizer:
    """Token = byte value + 1 (0 is EOS and pad); enough of a tokenizer for the loop."""

    eos_token_id = 0
    pad_token_id = 0
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [b + 1 for b in text.encode()]}

    def batch_decode(self, rows: Sequence[Sequence[int]], skip_special_tokens: bool) -> list[str]:
        return [bytes(t - 1 for t in r if t != 0).decode() for r in rows]


class LengthPreference:
    """P(y≻y') = σ(len y − len y'); reward r(y) = len y."""

    def prob(self, prompts: list[str], ys: list[str], yps: list[str]) -> np.ndarray:
        return np.array(
            [1 / (1 + math.exp(-(len(a) - len(b)))) for a, b in zip(ys, yps, strict=True)]
        )

    def reward(self, prompts: list[str], ys: list[str]) -> np.ndarray:
        return np.array([float(len(y)) for y in ys])


class ToyStepper:
    """Completions are deterministic functions of (step, prompt): y = the prompt's first
    (step % 3) + 1 characters, y' = its reversed first two; the "loss" of a micro-batch is
    the mean preference handed in, so the loop's averaging is visible in the record."""

    device = "toy"
    decode_path = "toy: deterministic"
    uniforms = None

    def __init__(self, rank: int = 0, world_size: int = 1, loss: float | None = None) -> None:
        self.rank, self.world_size, self.fixed_loss = rank, world_size, loss
        self.tokenizer = ByteTokenizer()
        self.preference = LengthPreference()
        self.seen: list[tuple[int, int, list[list[int]], float]] = []
        self.prefs: list[np.ndarray] = []
        self.pref_log: list[np.ndarray] = []
        self.taus: list[float] = []
        self.ema_calls: list[float] = []
        self.reduced: list[tuple[list[float], str]] = []

    def sample(self, step: int, offset: int, prompt_ids: list[list[int]], beta: float) -> Samples:
        self.seen.append((step, offset, prompt_ids, beta))
        rows = list(range(len(prompt_ids)))
        if self.world_size > 1:  # this rank's contiguous share
            per = len(prompt_ids) // self.world_size
            rows = rows[self.rank * per : (self.rank + 1) * per]
        y = [[*prompt_ids[r][: step % 3 + 1], 0] for r in rows]
        yp = [[*prompt_ids[r][:2][::-1], 0] for r in rows]
        return Samples(rows, y, yp)

    def select(self, samples: Samples, start: int, stop: int) -> Samples:
        assert samples.y_prime is not None
        rows = list(range(stop - start))
        return Samples(rows, samples.y[start:stop], samples.y_prime[start:stop])

    def accumulate(self, samples: Samples, preference: np.ndarray, tau: float) -> None:
        self.prefs.append(preference)
        self.pref_log.append(preference)
        self.taus.append(tau)

    def apply(self) -> Update:
        fixed = self.fixed_loss
        losses = [fixed if fixed is not None else float(p.mean()) for p in self.prefs]
        metrics = [{"preference": float(p.mean()), "kl": 0.5} for p in self.prefs]
        self.prefs = []
        return Update(losses, metrics, grad_norm=1.0)

    def update_ema(self, decay: float) -> None:
        self.ema_calls.append(decay)

    def sampling_state(self) -> None:  # completions are pure functions of (step, prompt)
        return None

    def abandon_step(self, sampling_state: None) -> None:
        self.prefs = []

    def all_reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        self.reduced.append((list(values), op))
        # a second, identical rank: sums double, maxima stay
        k = self.world_size if op == "sum" else 1
        return [k * float(v) for v in values]

    def describe(self) -> dict[str, Any] | None:
        return None if self.world_size == 1 else {"engine": "toy", "world_size": 2}

    def save(self, final: Path, write_core: Callable[[Path], None]) -> None:
        with atomic_directory(final) as tmp:
            (tmp / "toy.json").write_text("{}")
            write_core(tmp)

    def sequence_logprobs(self, *a: Any, **k: Any) -> np.ndarray:
        raise NotImplementedError

    def sample_completions(self, *a: Any, **k: Any) -> list[list[int]]:
        raise NotImplementedError


def _spec(tmp_path: Path, **training: Any) -> RunSpec:
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    algorithm = training.pop("algorithm", {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1})
    output = training.pop("output", {})
    return RunSpec.model_validate(
        {
            "task": "nash",
            "seed": 5,
            "policy": {"model": str(tmp_path)},
            "preference": {"name": "oracle", "function": "unused"},
            "data": {"path": str(data)},
            "algorithm": algorithm,
            "training": {"steps": 3, "batch_size": 4, "grad_accum": 2, **training},
            "output": {"dir": str(tmp_path / "run"), **output},
        }
    )


def _loop(spec: RunSpec, stepper: ToyStepper, resume: bool = False) -> NashLoop:
    return NashLoop(spec, Path(spec.output.dir), lambda *a: stepper, backend="toy", resume=resume)


def test_one_step_follows_the_prompt_order_and_averages_micro_batches(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    stepper = ToyStepper()
    loop = _loop(spec, stepper)
    record = loop.step(1)
    idx = batch_indices(0, 4, len(PROMPTS), spec.seed, spec.data.shuffle)
    ids = [[b + 1 for b in PROMPTS[i].encode()] for i in idx]
    assert [s[2] for s in stepper.seen] == [ids[:2], ids[2:]]  # two micro-batches of 2
    assert [s[3] for s in stepper.seen] == [0.25, 0.25]
    # hand computation: y = first 2 chars (step 1), y' = first two reversed
    ys = [PROMPTS[i][:2] for i in idx]
    yps = [PROMPTS[i][:2][::-1] for i in idx]
    p = [1 / (1 + math.exp(-(len(a) - len(b)))) for a, b in zip(ys, yps, strict=True)]
    assert_close(record["loss"], (np.mean(p[:2]) + np.mean(p[2:])) / 2, "float64", "loss")
    assert_close(record["len_y"], np.mean([len(y) + 1 for y in ys]), "float64", "len_y")
    assert record["generated_tokens"] == sum(len(y) + 1 for y in ys + yps)
    assert set(RECORD_KEYS) | {"beta", "len_y_prime"} <= record.keys()
    assert record["lr"] == spec.training.lr and record["tau"] == 0.1 and record["world_size"] == 1


def test_rlhf_pg_centres_the_reward_over_the_whole_batch(tmp_path: Path) -> None:
    spec = _spec(tmp_path, algorithm={"name": "rlhf_pg", "tau": 0.1}, grad_accum=1)
    stepper = ToyStepper()
    record = _loop(spec, stepper).step(2)
    idx = batch_indices(4, 4, len(PROMPTS), spec.seed, spec.data.shuffle)
    r = np.array([float(len(PROMPTS[i][:3])) for i in idx])
    assert_close(stepper.pref_log[0], r - r.mean() + 0.5, "float64", "P := r - mean r + 1/2")
    assert_close(record["reward"], r.mean(), "float64", "reward")
    assert "preference" not in record and "beta" not in record  # P is synthetic there


def test_two_ranks_average_over_ranks_and_only_rank_0_writes(tmp_path: Path) -> None:
    spec = _spec(tmp_path, steps=2)
    main, worker = ToyStepper(rank=0, world_size=2), ToyStepper(rank=1, world_size=2)
    summary = _loop(spec, worker).run()
    assert summary == {} and not (tmp_path / "run" / "metrics.jsonl").exists()
    record = _loop(spec, main).step(1)
    # the toy all_reduce doubles sums: the mean over 2 ranks × 2 micro-batches is the mean
    assert_close(record["kl"], 0.5, "float64", "kl averaged over ranks and micro-batches")
    assert record["world_size"] == 2


def test_run_writes_logs_checkpoints_and_summary(tmp_path: Path) -> None:
    spec = _spec(tmp_path, steps=5, log_every=2, output={"checkpoint_every": 2, "keep_last": 2})
    summary = _loop(spec, ToyStepper()).run()
    out = tmp_path / "run"
    assert [r["step"] for r in read_metrics(out)] == [2, 4, 5]  # every 2 steps and the last
    assert [s for s, _ in list_checkpoints(out)] == [4, 5]  # keep_last 2 (2 pruned, 5 final)
    state = TrainerState.read(out / "checkpoints" / "step-5")
    assert (state.step, state.position, state.backend) == (5, 20, "toy")
    assert state.spec["training"]["steps"] == 5
    assert set(summary) == set(SUMMARY_KEYS)
    assert json.loads((out / "summary.json").read_text())["steps"] == 5


def test_ema_is_updated_after_each_step_for_nash_ema_pg(tmp_path: Path) -> None:
    spec = _spec(tmp_path, algorithm={"name": "nash_ema_pg", "ema_decay": 0.8, "tau": 0.1})
    stepper = ToyStepper()
    _loop(spec, stepper).run()
    assert stepper.ema_calls == [0.8, 0.8, 0.8]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_stops_before_any_checkpoint(tmp_path: Path, bad: float) -> None:
    spec = _spec(tmp_path, output={"checkpoint_every": 1})
    with pytest.raises(NonFiniteError, match=r"step 1: non-finite loss .*training\.lr"):
        _loop(spec, ToyStepper(loss=bad)).run()
    assert list_checkpoints(tmp_path / "run") == []


def test_sigterm_finishes_the_step_checkpoints_and_exits_143(tmp_path: Path) -> None:
    spec = _spec(tmp_path, steps=5)
    stepper = ToyStepper()
    original = stepper.apply

    def apply_then_signal() -> Update:
        update = original()
        if len(stepper.taus) == 4:  # during step 2 (two micro-batches per step)
            os.kill(os.getpid(), signal.SIGTERM)
        return update

    stepper.apply = apply_then_signal  # type: ignore[method-assign]
    with pytest.raises(SystemExit) as info:
        _loop(spec, stepper).run()
    assert info.value.code == 128 + signal.SIGTERM
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_resume_continues_from_the_checkpoint(tmp_path: Path) -> None:
    spec = _spec(tmp_path, steps=2)
    _loop(spec, ToyStepper()).run()
    longer = _spec(tmp_path, steps=4)
    stepper = ToyStepper()
    loop = _loop(longer, stepper, resume=True)
    assert loop.start_step == 2
    summary = loop.run()
    assert summary["resumed_from"] == 2
    assert [s[0] for s in stepper.seen] == [3, 3, 4, 4]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]


def test_resume_without_a_checkpoint_and_a_changed_algorithm_are_clear_errors(
    tmp_path: Path,
) -> None:
    spec = _spec(tmp_path)
    with pytest.raises(InputError, match="--resume: no checkpoint under"):
        _loop(spec, ToyStepper(), resume=True)
    _loop(spec, ToyStepper()).run()
    other = _spec(tmp_path, algorithm={"name": "self_play", "tau": 0.1}, steps=4)
    with pytest.raises(InputError, match=r"algorithm\.name: \"nash_md_pg\" → \"self_play\""):
        _loop(other, ToyStepper(), resume=True)


def test_resume_refuses_a_changed_spec_and_a_checkpoint_past_the_steps(tmp_path: Path) -> None:
    from nlhf.errors import RunDirError

    _loop(_spec(tmp_path, steps=3), ToyStepper()).run()
    with pytest.raises(RunDirError, match=r"training\.lr: 1e-05 → 0\.5"):
        _loop(_spec(tmp_path, steps=4, lr=0.5), ToyStepper(), resume=True)
    with pytest.raises(RunDirError, match=r"past training\.steps = 2"):
        _loop(_spec(tmp_path, steps=2), ToyStepper(), resume=True)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [3]  # nothing touched


def test_progress_counts_steps_and_draws_only_where_asked() -> None:
    from nlhf.training.progress import Progress

    with Progress(7, "pairwise", done=3) as bar:  # pytest captures stderr: not a terminal
        assert not bar.enabled and bar._bar is None
        bar.update(5, loss=0.5)
        bar.advance(loss=0.25)
        assert bar.done == 6
    with Progress(4, "forced", enabled=True) as shown:
        shown.advance(2, loss=0.5, gap="1e-3")
        task = shown._bar.tasks[0]
        assert (task.total, task.completed, task.fields["info"]) == (4, 2, "loss 0.5000 gap 1e-3")


def test_one_generation_call_feeds_several_micro_batches(tmp_path: Path) -> None:
    """generation.batch_size = the whole batch: one sampling call of 4 prompts, the loss in
    2 micro-batches of 2; the record equals the one of per-micro-batch generation."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    per_micro = ToyStepper()
    want = _loop(_spec(tmp_path / "a"), per_micro).step(1)
    one_call = ToyStepper()
    spec = _spec(tmp_path / "b", generation={"batch_size": 4})
    got = _loop(spec, one_call).step(1)
    assert [len(s[2]) for s in one_call.seen] == [4] and one_call.seen[0][1] == 0
    assert [len(s[2]) for s in per_micro.seen] == [2, 2]
    assert [s[1] for s in per_micro.seen] == [0, 2]  # row offsets in the step's batch
    assert len(one_call.taus) == 2  # two micro-batches reached the loss
    for key in ("loss", "len_y", "len_y_prime", "preference", "generated_tokens"):
        assert_close(got[key], want[key], "float64", key)


def test_generation_batch_size_must_hold_whole_micro_batches(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"generation\.batch_size: 3 is not a multiple"):
        _spec(tmp_path, generation={"batch_size": 3})


def test_a_preference_s_own_metrics_reach_the_record(tmp_path: Path) -> None:
    """A judge reports its position bias through ``pop_metrics``; the loop averages it
    over the micro-batches like every other metric."""

    class BiasedJudge(LengthPreference):
        calls = 0

        def pop_metrics(self) -> dict[str, float]:
            BiasedJudge.calls += 1
            return {"judge_position_bias": 0.1 * BiasedJudge.calls}

    stepper = ToyStepper()
    stepper.preference = BiasedJudge()
    record = _loop(_spec(tmp_path), stepper).step(1)
    assert_close(record["judge_position_bias"], (0.1 + 0.2) / 2, "float64", "bias")


class OtherRankDown(ToyStepper):
    """Rank 0 of two whose own preference answers, while the other rank's fails in step 3:
    the failure flag comes back as 1 from the max-reduction there."""

    step_now = 0

    def sample(self, step: int, offset: int, prompt_ids: list[list[int]], beta: float) -> Samples:
        self.step_now = step
        return super().sample(step, offset, prompt_ids, beta)

    def all_reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        out = super().all_reduce(values, op)
        if op == "max" and values == [0.0] and self.step_now == 3 and self.prefs:
            return [1.0]  # the flag after step 3's second generation call
        return out


def test_a_preference_outage_on_another_rank_stops_every_rank_after_a_checkpoint(
    tmp_path: Path,
) -> None:
    from nlhf.errors import PreferenceUnavailableError

    spec = _spec(tmp_path, steps=4)
    stepper = OtherRankDown(rank=0, world_size=2)
    with pytest.raises(PreferenceUnavailableError) as err:
        _loop(spec, stepper).run()
    message = str(err.value)
    assert "another process" in message and "step 3 was abandoned" in message
    assert "holds step 2" in message
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [2]
    assert stepper.prefs == []  # abandon_step dropped step 3's first micro-batch
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]
