"""The run spec (docs/spec.md): one pydantic v2 model tree, ``spec_version: 1``.

Unknown keys are errors (``extra="forbid"``); tagged sections are discriminated
unions on ``name`` (``preference``, ``algorithm``) or ``engine`` (``distributed``).
Loading with file/line/column error reports lives in :mod:`nlhf.spec.load`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from nlhf.algorithms.params import (
    LLM_ALGORITHMS,
    OFFLINE_ALGORITHMS,
    TABULAR_ALGORITHMS,
    AlgorithmSpec,
    llm_problems,
)
from nlhf.fields import (
    Float,
    Fraction,
    Int,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
)

Dtype = Literal["float32", "float64", "bfloat16", "float16"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ----------------------------------------------------------------------------- models
class LoraSpec(Section):
    """PEFT LoRA adapter on the policy; the reference is the same model with the adapter
    disabled (never ``get_base_model()``, see TRL #2781)."""

    r: PositiveInt = 8
    alpha: PositiveFloat = 16.0
    dropout: Fraction = 0.0
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class PolicySpec(Section):
    """The trained policy: a local directory or hub id that ``AutoModelForCausalLM`` loads."""

    model: str
    """Directory or hub id; a packaged model as ``runs/models/<name>``
    (``smollm2-135m-instruct``; ``all-minilm-l6-v2`` as a ``task: preference_model``
    backbone), built on first use (docs/real-models.md)."""
    tokenizer: str | None = None
    """Tokenizer path or id (default: ``model``)."""
    dtype: Dtype = "float32"
    chat_template: bool | None = None
    """Wrap prompts with the tokenizer's chat template (default: when it has one)."""
    trust_remote_code: bool = False
    lora: LoraSpec | None = None


class ReferenceSpec(Section):
    """The reference policy μ. LLM runs: ``model`` (default: a frozen copy of the initial
    policy). Tabular runs: ``probs`` over the responses (default: uniform)."""

    model: str | None = None
    """A causal LM like ``policy.model`` (packaged models included)."""
    dtype: Dtype | None = None
    probs: list[NonNegativeFloat] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ReferenceSpec:
        if self.model is not None and self.probs is not None:
            raise ValueError("give either `model` (LLM runs) or `probs` (tabular runs), not both")
        if self.probs is not None:
            total = sum(self.probs)
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"`probs` must sum to 1 (got {total:.6g}); normalise it")
            if any(p == 0 for p in self.probs):
                raise ValueError("`probs` must be > 0 everywhere (KL to μ is infinite otherwise)")
        return self


# ------------------------------------------------------------------------ preference
class TabularPreference(Section):
    """A preference matrix: ``matrix[i][j] = P(y_i ≻ y_j)`` or a built-in ``game``."""

    name: Literal["tabular"] = "tabular"
    matrix: list[list[Float]] | None = None
    game: Literal["bt3", "dice", "rps", "population", "random"] | None = None
    size: Annotated[Int, Field(gt=1)] | None = None
    """Number of responses for ``game: random``."""
    seed: Seed | None = None
    """Seed for ``game: random`` (default: the run's seed)."""

    @model_validator(mode="after")
    def _one_source(self) -> TabularPreference:
        if (self.matrix is None) == (self.game is None):
            raise ValueError("give exactly one of `matrix` or `game`")
        if self.size is not None and self.game != "random":
            raise ValueError("`size` applies only to `game: random`")
        if self.seed is not None and self.game != "random":
            raise ValueError(f"seed: applies only to `game: random` (game is {self.game})")
        if self.matrix is not None:
            from nlhf.tabular.matrix import matrix_problem

            problem = matrix_problem(self.matrix)
            if problem is not None:
                entry, detail = problem
                if entry:
                    where = ".".join(map(str, entry))
                    index = "".join(f"[{k}]" for k in entry)
                    raise ValueError(f"matrix.{where}: matrix{index}{detail}")
                raise ValueError(f"matrix: {detail.removeprefix(': ')}")
        return self

    def num_responses(self) -> int:
        """Number of responses of the (valid) matrix or built-in game."""
        if self.matrix is not None:
            return len(self.matrix)
        from nlhf.tabular.games import DEFAULT_RANDOM_SIZE, GAMES

        if self.game == "random":
            return self.size or DEFAULT_RANDOM_SIZE
        return GAMES[str(self.game)]().size


class PairwiseModelPreference(Section):
    """A trained pairwise preference model P_θ(y≻y'|x) (task ``preference_model`` output)."""

    name: Literal["pairwise_model"] = "pairwise_model"
    path: str
    batch_size: PositiveInt = 16
    max_length: PositiveInt = 1024
    dtype: Dtype = "float32"


class BradleyTerryPreference(Section):
    """A scalar reward model r(x, y) (sequence classification, 1 label); P = σ(r − r')."""

    name: Literal["bradley_terry_reward"] = "bradley_terry_reward"
    path: str
    tokenizer: str | None = None
    batch_size: PositiveInt = 16
    max_length: PositiveInt = 1024
    dtype: Dtype = "float32"


DEFAULT_JUDGE_TEMPLATE = (
    "Given the prompt and two responses, which response is better, 1 or 2?\n\n"
    "Prompt: {prompt}\n\nResponse 1: {response_1}\n\nResponse 2: {response_2}\n\n"
    "The better response is"
)


class LLMJudgePreference(Section):
    """A causal LM prompted "which is better, 1 or 2?"; P from the logits of the two
    answers' first differing tokens, averaged over both presentation orders (antisymmetric
    by construction); ``judge_position_bias`` in the metrics is how much it favours the
    response shown first (docs/real-models.md)."""

    name: Literal["llm_judge"] = "llm_judge"
    model: str
    """Causal LM directory or hub id; a packaged model as ``runs/models/<name>``
    (docs/real-models.md), built on first use."""
    tokenizer: str | None = None
    template: str = DEFAULT_JUDGE_TEMPLATE
    """Judge text with ``{prompt}``, ``{response_1}``, ``{response_2}``."""
    chat_template: bool | None = None
    """Send the filled template as the user turn of the judge tokenizer's chat template,
    followed by the assistant prompt (default: when the tokenizer has one, as for
    instruct models such as SmolLM2)."""
    answer_tokens: tuple[str, str] = (" 1", " 2")
    """The two answers; any number of tokens each. v = ℓ(a₁ᵏ) − ℓ(a₂ᵏ) at their first
    differing token k, read after the judge text and their shared prefix (refused when one
    answer is a prefix of the other)."""
    batch_size: PositiveInt = 8
    max_length: PositiveInt = 2048
    dtype: Dtype = "float32"

    @model_validator(mode="after")
    def _judge(self) -> LLMJudgePreference:
        missing = [
            f for f in ("{prompt}", "{response_1}", "{response_2}") if f not in self.template
        ]
        if missing:
            raise ValueError(
                f"template: missing placeholder(s) {', '.join(missing)}; the judge text shows "
                "the prompt and both responses"
            )
        if self.answer_tokens[0] == self.answer_tokens[1]:
            raise ValueError("answer_tokens: the two answers must differ")
        return self


def _http_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    return value.rstrip("/")


class RemotePreference(Section):
    """A preference model served by ``nlhf serve`` (docs/serving.md): P(y≻y'|x) from
    ``POST {url}/v1/preference``, r(x, y) from ``/v1/reward`` when the served model is a
    Bradley–Terry reward model. Failed requests (connection errors, timeouts, 429, 5xx,
    malformed answers) are retried ``retries`` times with exponential backoff."""

    name: Literal["remote"] = "remote"
    url: str
    """Base URL of the server, e.g. ``http://127.0.0.1:8000``."""
    token_env: str | None = None
    """Environment variable holding the server's access token (never written to outputs)."""
    timeout: PositiveFloat = 60.0
    """Seconds one request may take."""
    retries: NonNegativeInt = 4
    backoff: PositiveFloat = 0.5
    """Seconds before the first retry; doubled each retry (a Retry-After header wins)."""
    batch_size: PositiveInt = 64
    """Comparisons per request, at most the server's ``max_request`` (the server batches
    across clients)."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)


class OpenAIJudgePreference(Section):
    """An LLM judge behind any OpenAI-compatible ``/chat/completions`` endpoint (vLLM,
    SGLang, llama.cpp server, ``nlhf serve``, a hosted API; docs/serving.md). The judge
    sees ``template`` with y as response 1 and y' as response 2, then swapped; with
    p(1|y,y') the probability of answering ``answers[0]`` (from the logprobs of the two
    answer tokens when the server returns them: p = σ(ℓ₁ − ℓ₂); else 1, 0 or ½ from the
    verdict text), P(y≻y'|x) = ½·(p(1|y,y') + 1 − p(1|y',y)). Answers are cached on disk
    keyed by (model, template, prompt, responses), so a resumed run asks again for
    nothing."""

    name: Literal["openai_judge"] = "openai_judge"
    base_url: str
    """The API root, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is added)."""
    model: str
    api_key_env: str | None = None
    """Environment variable holding the API key, sent as ``Authorization: Bearer`` (the
    key itself is never written to outputs)."""
    template: str = DEFAULT_JUDGE_TEMPLATE
    system: str | None = None
    """An optional system message."""
    answers: tuple[str, str] = ("1", "2")
    """The verdict for response 1 and for response 2 (tokens compared after stripping
    white space)."""
    logprobs: bool = True
    """Ask for ``top_logprobs`` (servers that ignore it are parsed from the text)."""
    top_logprobs: Annotated[Int, Field(ge=0, le=20)] = 5
    max_tokens: PositiveInt = 1
    temperature: NonNegativeFloat = 0.0
    concurrency: PositiveInt = 8
    """Requests in flight at once."""
    timeout: PositiveFloat = 60.0
    retries: NonNegativeInt = 5
    backoff: PositiveFloat = 1.0
    """Seconds before the first retry on 429/5xx/timeouts; doubled each retry."""
    cache_dir: str | None = None
    """Directory of the answer cache (default ``$NLHF_CACHE_DIR/openai_judge`` or
    ``~/.cache/nlhf/openai_judge``)."""
    cache: bool = True

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _answers(self) -> OpenAIJudgePreference:
        missing = [
            f for f in ("{prompt}", "{response_1}", "{response_2}") if f not in self.template
        ]
        if missing:
            raise ValueError(f"template: missing placeholder(s) {', '.join(missing)}")
        if self.answers[0].strip() == self.answers[1].strip() or not all(
            a.strip() for a in self.answers
        ):
            raise ValueError("answers: give two different, non-blank verdicts")
        return self


class PreferenceTrainingSpec(Section):
    """``task: preference_model``: which preference model to train (docs/architecture.md §5).

    - ``kind: pairwise`` — P_θ(y≻y'|x) = σ(v_θ(x,y,y') − v_θ(x,y',y)), antisymmetric by
      construction. ``head: lm``: v = logit(answer_tokens[0]) − logit(answer_tokens[1]) of
      the causal LM ``policy.model`` at the last position of ``template`` (a prompted
      judge, usable zero-shot before training); ``head: classification``: v = a scalar
      sequence-classification head on the same ``template`` text.
    - ``kind: bradley_terry`` — a reward r_θ(x,y) (sequence classification, 1 label) on
      ``prompt + response``; P = σ(r(x,y) − r(x,y')) (``head`` must be ``classification``).

    Both are trained by cross-entropy on ``z = v_fwd − v_bwd`` (both presentation orders).
    ``compare_baseline: true`` (with ``kind: pairwise``) also trains a Bradley–Terry model
    with the same data, split and budget, and reports both on the same held-out pairs.
    Omitting the section means ``kind: pairwise, head: lm``.
    """

    kind: Literal["pairwise", "bradley_terry"] = "pairwise"
    head: Literal["lm", "classification"] | None = None
    """Default: ``lm`` for ``pairwise``, ``classification`` for ``bradley_terry``."""
    template: str = DEFAULT_JUDGE_TEMPLATE
    """Judge prompt with ``{prompt}``, ``{response_1}``, ``{response_2}`` (pairwise only)."""
    answer_tokens: tuple[str, str] = (" 1", " 2")
    """Continuations whose first differing tokens give v (``head: lm`` only)."""
    pooling: Literal["model", "mean"] = "model"
    """``head: classification`` only: what the score head reads, ``model`` (the
    architecture's own read-out: BERT's pooled ``[CLS]``, a decoder's last non-pad token)
    or ``mean`` (the masked mean of the last hidden states, how sentence encoders such as
    all-MiniLM-L6-v2 are trained)."""
    frozen_layers: NonNegativeInt = 0
    """The backbone's embeddings and its first ``frozen_layers`` transformer blocks stay
    fixed; only the blocks above and the head train (0: every parameter trains)."""
    compare_baseline: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> PreferenceTrainingSpec:
        if self.head is None:
            self.head = "lm" if self.kind == "pairwise" else "classification"
        if self.kind == "bradley_terry" and self.head != "classification":
            raise ValueError("head: a `bradley_terry` reward model needs `head: classification`")
        if self.pooling == "mean" and self.head != "classification":
            raise ValueError("pooling: `mean` applies to `head: classification` only")
        if self.kind == "bradley_terry" and self.compare_baseline:
            raise ValueError("compare_baseline: applies to `kind: pairwise` (BT is the baseline)")
        if self.kind == "pairwise":
            missing = [
                f for f in ("{prompt}", "{response_1}", "{response_2}") if f not in self.template
            ]
            if missing:
                raise ValueError(f"template: missing placeholder(s) {', '.join(missing)}")
        if self.answer_tokens[0] == self.answer_tokens[1]:
            raise ValueError("answer_tokens: the two answers must differ")
        return self


class OraclePreference(Section):
    """A preference function registered by a plugin (``nlhf_register_oracles``)."""

    name: Literal["oracle"] = "oracle"
    function: str
    options: dict[str, Any] = Field(default_factory=dict)


class PluginPreference(BaseModel):
    """A preference model contributed by a plugin; its own parameters are validated
    against the plugin's ``params_model`` when the run starts."""

    model_config = ConfigDict(extra="allow")
    name: str


BUILTIN_PREFERENCES = (
    "tabular",
    "pairwise_model",
    "bradley_terry_reward",
    "llm_judge",
    "oracle",
    "remote",
    "openai_judge",
)


def _preference_tag(value: Any) -> str:
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    return name if name in BUILTIN_PREFERENCES else "plugin"


PreferenceSpec = Annotated[
    Annotated[TabularPreference, Tag("tabular")]
    | Annotated[PairwiseModelPreference, Tag("pairwise_model")]
    | Annotated[BradleyTerryPreference, Tag("bradley_terry_reward")]
    | Annotated[LLMJudgePreference, Tag("llm_judge")]
    | Annotated[OraclePreference, Tag("oracle")]
    | Annotated[RemotePreference, Tag("remote")]
    | Annotated[OpenAIJudgePreference, Tag("openai_judge")]
    | Annotated[PluginPreference, Tag("plugin")],
    Discriminator(_preference_tag),
]


# ------------------------------------------------------------------------------ data
class DataSpec(Section):
    """A ``datasets`` source: a local json/jsonl/parquet/csv file or directory, or a hub name.

    Formats: ``prompt`` (a prompt column; for ``task: nash``), ``preference``
    (TRL's prompt/chosen/rejected), ``hh_rlhf`` (full ``chosen``/``rejected`` dialogues
    whose shared prefix becomes the prompt), ``auto`` (detected from the columns) or a
    plugin's format name.
    """

    path: str
    format: str = "auto"
    split: str = "train"
    columns: dict[str, str] = Field(default_factory=dict)
    """Map nlhf's names (prompt, chosen, rejected, label) to the dataset's column names."""
    eval_split: str | None = None
    eval_fraction: Fraction = 0.0
    limit: PositiveInt | None = None
    max_prompt_length: PositiveInt = 256
    max_length: PositiveInt = 512
    truncation: Literal["left", "right", "drop", "error"] = "left"
    """Over-long examples: cut the prompt's left (``left``) or the response's right
    (``right``), drop the example (``drop``) or stop with an error (``error``)."""
    shuffle: bool = True


# -------------------------------------------------------------------------- training
class OptimizerSpec(Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    """Adam's (β₁, β₂), each in [0, 1)."""
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0


class GenerationSpec(Section):
    max_new_tokens: PositiveInt = 64
    temperature: PositiveFloat = 1.0
    """Applied to the (mixed) logits when sampling *and* to the log-probs in the loss."""
    top_k: NonNegativeInt = 0
    """0 = full vocabulary (required for exact Nash-MD-PG gradients)."""
    batch_size: PositiveInt | None = None
    """Prompts per generation call of ``task: nash`` (default: the micro-batch,
    ``batch_size / grad_accum``): size it for decoding throughput; each call's pairs then
    reach the loss in micro-batches sized for memory. A multiple of the micro-batch size
    (single process; DeepSpeed ranks generate micro-batches)."""


AUTO_CHUNK_MIN_VOCAB = 32768
"""``logprob_chunk: auto`` chunks vocabularies at least this large (Llama 3: 128256,
Qwen2: 151936, Gemma: 256000, SmolLM2: 49152)."""
AUTO_CHUNK_LOGITS = 2**22
"""Logits per chunk under ``logprob_chunk: auto`` (16 MiB of float32)."""


class TrainingSpec(Section):
    steps: PositiveInt = 100
    batch_size: PositiveInt = 8
    """Prompts per optimiser step (global, across processes)."""
    grad_accum: PositiveInt = 1
    lr: PositiveFloat = 1e-5
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: NonNegativeInt = 0
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    max_grad_norm: PositiveFloat | None = 1.0
    epochs: PositiveInt = 1
    """Preference-model training: passes over the data (``steps`` caps the total)."""
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    log_every: PositiveInt = 1
    eval_every: PositiveInt | None = None
    gradient_checkpointing: bool = False
    """Recompute each decoder block's activations during the backward pass instead of
    storing them (torch: transformers' ``gradient_checkpointing_enable``, non-reentrant;
    jax: ``nnx.remat`` around each block): activation memory of one block for about one
    more forward of the loss."""
    precision: Literal["pure", "bf16-mixed"] = "pure"
    """``pure``: the loss's forward and backward run in the parameters' own dtype
    (``policy.dtype``). ``bf16-mixed``: they run in bfloat16 (torch: ``torch.autocast``;
    jax: a bfloat16 copy of the parameters per forward) while the parameters (master
    weights), their gradients and the optimizer state stay float32; needs ``policy.dtype:
    float32``. Sampling runs in ``policy.dtype`` either way. Under DeepSpeed write
    ``policy.dtype: bfloat16`` instead: its engine already keeps float32 master weights."""
    logprob_chunk: PositiveInt | Literal["auto", "off"] = "auto"
    """Completion positions per chunk of the loss's log-softmax: hidden states go through
    the LM head ``logprob_chunk`` positions at a time and each chunk's logits are
    recomputed in the backward pass, so B×T×V logits are never held at once
    (:meth:`logprob_chunk_size`). The reference's log-probabilities (no gradient) run in
    the same chunks: its forward of y′ (and of sppo's responses), the log-softmax of the
    decode's reference logits of y, and ``task: offline``'s pair log-probs of policy and
    reference; those decode logits themselves (B×T×V float32, kept for the KL term) are
    the one such array left. ``off``: one full-logits forward. ``auto``: chunks of about
    2²² logits for vocabularies of at least 32768 tokens, else ``off``."""

    def grad_accum_problem(self) -> str | None:
        """Why ``batch_size / grad_accum`` is not a whole micro-batch size, or None."""
        if self.batch_size % self.grad_accum:
            return (
                f"training.grad_accum: batch_size {self.batch_size} is not divisible by "
                f"grad_accum {self.grad_accum}; each optimiser step takes batch_size prompts in "
                f"grad_accum equal micro-batches"
            )
        return None

    def generation_batch_problem(self) -> str | None:
        """Why ``generation.batch_size`` cannot hold whole micro-batches, or None."""
        size = self.generation.batch_size
        if size is None or self.grad_accum_problem() is not None:
            return None
        micro = self.batch_size // self.grad_accum
        if size % micro:
            return (
                f"training.generation.batch_size: {size} is not a multiple of the "
                f"micro-batch size {micro} (batch_size / grad_accum); each generation call "
                "must hold whole micro-batches"
            )
        return None

    def generation_batch_size(self) -> int:
        """Prompts per generation call: ``generation.batch_size`` (capped at the step's
        batch), or the micro-batch size."""
        micro = self.micro_batch_size()
        size = self.generation.batch_size
        return micro if size is None else min(size, self.batch_size)

    def logprob_chunk_size(self, rows: int, positions: int, vocab: int) -> int | None:
        """Positions per log-softmax chunk for ``rows`` × ``positions`` completion tokens
        over ``vocab`` logits, or None for the full-logits path (``logprob_chunk``)."""
        setting = self.logprob_chunk
        if setting == "off":
            return None
        if setting == "auto":
            if vocab < AUTO_CHUNK_MIN_VOCAB:
                return None
            setting = max(1, AUTO_CHUNK_LOGITS // (rows * vocab))
        return None if setting >= positions else int(setting)

    def memory_problems(self, policy: PolicySpec | None, engine: str) -> list[str]:
        """What ``precision`` and ``logprob_chunk`` cannot do with this policy and engine."""
        problems = []
        dtype = policy.dtype if policy is not None else "float32"
        if self.precision == "bf16-mixed" and dtype != "float32":
            problems.append(
                f"training.precision: bf16-mixed keeps float32 master weights, so it needs "
                f"policy.dtype: float32 (got {dtype}); set policy.dtype: float32, or "
                f"precision: pure to train in {dtype} throughout"
            )
        if engine == "deepspeed" and self.precision == "bf16-mixed":
            problems.append(
                "training.precision: under DeepSpeed, bf16 compute with float32 master "
                "weights is the engine's own bf16 mode: set policy.dtype: bfloat16 (the "
                "engine keeps float32 master weights and optimizer state) and precision: pure"
            )
        if engine == "deepspeed" and isinstance(self.logprob_chunk, int):
            problems.append(
                "training.logprob_chunk: the chunked log-probs run on the model's decoder "
                "outside the DeepSpeed engine's forward; set logprob_chunk: off (or auto, "
                "which is off under DeepSpeed)"
            )
        return problems

    def micro_batch_size(self) -> int:
        """Prompts per micro-batch of a ``task: nash`` step: ``batch_size / grad_accum``,
        which must divide exactly (every micro-batch the same size, so the mean of the
        micro-batch losses is the batch loss). ``nlhf validate`` checks the same rule."""
        problem = self.grad_accum_problem()
        if problem is not None:
            from nlhf.errors import InputError

            raise InputError(problem)
        return self.batch_size // self.grad_accum


# ----------------------------------------------------------------------- distributed
class NoDistributed(Section):
    engine: Literal["none"] = "none"


class DeepSpeedSpec(Section):
    """torch: DeepSpeed ZeRO. ``config`` is a user's own DeepSpeed JSON (path or mapping);
    keys that conflict with the fields here are reported, never silently merged."""

    engine: Literal["deepspeed"] = "deepspeed"
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    micro_batch_size: PositiveInt | None = None
    config: str | dict[str, Any] | None = None


class JaxMeshSpec(Section):
    """jax: a device mesh, e.g. ``mesh: {data: 2, fsdp: 2, tensor: 1}``; parameters are
    sharded by ``rules`` (parameter-path regex -> partition spec axes). Several hosts:
    ``coordinator_address``, ``num_processes`` and ``process_id`` (all three, or none)
    join this process to the others with ``jax.distributed.initialize`` before the mesh
    is built; the mesh then spans every process's devices (docs/distributed.md)."""

    engine: Literal["jax"] = "jax"
    mesh: dict[str, PositiveInt] = Field(default_factory=lambda: {"data": 1})
    rules: list[tuple[str, list[str | None]]] = Field(default_factory=list)
    coordinator_address: str | None = None
    """``HOST:PORT`` of process 0, reachable from every process (its coordinator service
    listens on PORT)."""
    num_processes: PositiveInt | None = None
    """jax processes in the run (usually one per host)."""
    process_id: NonNegativeInt | None = None
    """This process, 0 .. num_processes − 1; process 0 writes the outputs. Give it per
    host with ``--set distributed.process_id=$SLURM_NODEID``."""
    initialization_timeout: PositiveInt = 300
    """Seconds to wait for every process to join (jax's default)."""

    @property
    def multihost(self) -> bool:
        """The spec joins several processes (``jax.distributed.initialize``)."""
        return self.coordinator_address is not None

    @model_validator(mode="after")
    def _hosts(self) -> JaxMeshSpec:
        given = {
            "coordinator_address": self.coordinator_address,
            "num_processes": self.num_processes,
            "process_id": self.process_id,
        }
        missing = [name for name, value in given.items() if value is None]
        if len(missing) not in (0, 3):
            have = ", ".join(name for name in given if name not in missing)
            raise ValueError(
                "; ".join(
                    f"{name}: needed with {have} (a multi-host run gives coordinator_address, "
                    "num_processes and process_id; a one-process run none of them)"
                    for name in missing
                )
            )
        problems: list[str] = []
        if self.coordinator_address is not None:
            problem = coordinator_problem(self.coordinator_address)
            if problem is not None:
                problems.append(f"coordinator_address: {problem}")
        n, rank = self.num_processes, self.process_id
        if n is not None and rank is not None and rank >= n:
            problems.append(
                f"process_id: {rank} is out of range for num_processes {n}; give 0 .. {n - 1}"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


def coordinator_problem(address: str) -> str | None:
    """Why ``address`` is not ``HOST:PORT`` (``[IPv6]:PORT``) with PORT in 1..65535, or None."""
    host, sep, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    bare_ipv6 = ":" in host and not bracketed
    if not sep or not host or bare_ipv6 or any(c.isspace() for c in host):
        return (
            f"{address!r} is not HOST:PORT; give process 0's address and a free port, e.g. "
            "10.0.0.1:1234 (an IPv6 address in brackets: [fd00::1]:1234)"
        )
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port {port!r} of {address!r} is not an integer in 1..65535, e.g. 10.0.0.1:1234"
    return None


DistributedSpec = Annotated[
    NoDistributed | DeepSpeedSpec | JaxMeshSpec, Field(discriminator="engine")
]


# ---------------------------------------------------------------------------- output
class OutputSpec(Section):
    dir: str = "runs/nlhf"
    """Output directory (created; checked before any model loads: not a file, writable,
    with free space)."""
    checkpoint_every: PositiveInt | None = None
    keep_last: PositiveInt | None = None
    plots: bool = True
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)
    """Experiment trackers that also receive the metrics, the resolved spec, the summary
    and the plots (docs/tracking.md): TensorBoard event files under ``DIR/tensorboard``,
    an offline W&B run under ``DIR/wandb``, an MLflow file store under ``DIR/mlruns``.
    Each needs its library: ``pip install 'nlhf-core[tensorboard]'`` (or ``[wandb]``,
    ``[mlflow]``)."""

    @field_validator("dir")
    @classmethod
    def _dir(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a directory, e.g. runs/my-run; got an empty path")
        return value


class EvalSpec(Section):
    """``task: evaluate`` (and end-of-run evaluation): win-rates between policies."""

    policies: list[str] = Field(default_factory=list)
    samples_per_prompt: PositiveInt = 1
    num_prompts: PositiveInt | None = None
    confidence: Annotated[Float, Field(gt=0, lt=1)] = 0.95


# ------------------------------------------------------------------------------ root
class RunSpec(Section):
    """Root of a run spec (``spec_version: 1``)."""

    spec_version: Literal[1] = 1
    task: Literal["nash", "preference_model", "evaluate", "offline"] = "nash"
    """``nash``: a Nash run (LLM or tabular); ``preference_model``: train P(y≻y'|x) on
    pairs; ``evaluate``: win-rates between policies; ``offline``: DPO / IPO on pairs
    (docs/algorithms.md)."""
    seed: Seed = 0
    policy: PolicySpec | None = None
    reference: ReferenceSpec = Field(default_factory=ReferenceSpec)
    preference: PreferenceSpec | None = None
    data: DataSpec | None = None
    preference_training: PreferenceTrainingSpec | None = None
    """``task: preference_model`` only: pairwise vs Bradley–Terry, head, judge template."""
    algorithm: AlgorithmSpec | None = None
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    distributed: DistributedSpec = Field(default_factory=NoDistributed)
    output: OutputSpec = Field(default_factory=OutputSpec)
    eval: EvalSpec | None = None

    @property
    def is_tabular(self) -> bool:
        return isinstance(self.preference, TabularPreference)

    @model_validator(mode="after")
    def _consistent(self) -> RunSpec:
        """Cross-section rules; each message names the field to change."""
        problems: list[str] = []
        if self.task == "nash":
            if self.preference is None:
                problems.append("preference: a `task: nash` spec needs a `preference` section")
            if self.algorithm is None:
                problems.append("algorithm: a `task: nash` spec needs an `algorithm` section")
        if self.is_tabular and self.reference.probs is not None:
            n = self.preference.num_responses()  # type: ignore[union-attr]
            if len(self.reference.probs) != n:
                problems.append(
                    f"reference.probs: has {len(self.reference.probs)} entries but the "
                    f"preference has {n} responses; give one probability per response"
                )
        if self.algorithm is not None and self.algorithm.name in OFFLINE_ALGORITHMS:
            if self.task != "offline":
                problems.append(
                    f"algorithm.name: {self.algorithm.name!r} trains offline on preference pairs; "
                    "use `task: offline` (with the pairs in `data`)"
                )
        elif self.task == "offline" and self.algorithm is not None:
            problems.append(
                f"algorithm.name: `task: offline` trains {' or '.join(OFFLINE_ALGORITHMS)} on "
                f"preference pairs, not {self.algorithm.name!r}"
            )
        if self.task == "offline":
            if self.algorithm is None:
                problems.append(
                    "algorithm: a `task: offline` spec needs an `algorithm` section, e.g. "
                    "{name: dpo, tau: 0.1}"
                )
            if self.policy is None:
                problems.append("policy: `task: offline` needs `policy.model` (the LM to train)")
            if self.data is None:
                problems.append(
                    "data: `task: offline` needs preference pairs (prompt, chosen, rejected) "
                    "in `data`"
                )
            if self.preference is not None:
                problems.append(
                    "preference: `task: offline` learns from the pairs' labels, not a preference "
                    "model; remove `preference`"
                )
            if self.reference.probs is not None:
                problems.append("reference.probs: only tabular runs take `probs`")
            if self.training.eval_every is not None:
                problems.append(
                    "training.eval_every: `task: offline` scores its held-out pairs once, after "
                    "the last step (summary.json `eval`); remove eval_every"
                )
            grad_accum = self.training.grad_accum_problem()
            if grad_accum is not None:
                problems.append(grad_accum)
        if self.task != "offline" and self.is_tabular and self.algorithm is not None:
            if self.algorithm.name not in (*TABULAR_ALGORITHMS, *OFFLINE_ALGORITHMS):
                problems.append(
                    f"algorithm.name: {self.algorithm.name!r} is an LLM algorithm; with a tabular "
                    f"preference use one of {', '.join(TABULAR_ALGORITHMS)}"
                )
            if self.policy is not None:
                problems.append("policy: tabular runs have no policy model; remove `policy`")
            if self.reference.model is not None:
                problems.append("reference.model: tabular runs take `reference.probs`")
        elif self.task == "nash" and self.preference is not None and self.algorithm is not None:
            if self.algorithm.name not in (*LLM_ALGORITHMS, *OFFLINE_ALGORITHMS):
                problems.append(
                    f"algorithm.name: {self.algorithm.name!r} is tabular; with preference "
                    f"{self.preference.name!r} use one of {', '.join(LLM_ALGORITHMS)}"
                )
            if getattr(self.algorithm, "steps", None) is not None:
                problems.append("algorithm.steps: LLM runs count steps in `training.steps`")
            problems.extend(llm_problems(self.algorithm, self.distributed.engine))
            if self.policy is None:
                problems.append("policy: an LLM `task: nash` run needs `policy.model`")
            if self.data is None:
                problems.append("data: an LLM `task: nash` run needs a prompt dataset in `data`")
            if self.reference.probs is not None:
                problems.append("reference.probs: only tabular runs take `probs`")
            grad_accum = self.training.grad_accum_problem()
            if grad_accum is not None:
                problems.append(grad_accum)
            generation = self.training.generation_batch_problem()
            if generation is not None:
                problems.append(generation)
            problems += self.training.memory_problems(self.policy, self.distributed.engine)
        if self.task == "preference_model":
            if self.policy is None:
                problems.append(
                    "policy: `task: preference_model` needs `policy.model` (the LM to start from)"
                )
            if self.data is None:
                problems.append("data: `task: preference_model` needs pairwise data in `data`")
        elif self.preference_training is not None:
            problems.append(
                "preference_training: applies only to `task: preference_model`; remove it"
            )
        if self.task == "evaluate" and (self.eval is None or not self.eval.policies):
            problems.append("eval.policies: `task: evaluate` needs a list of policies")
        if problems:
            raise ValueError("; ".join(problems))
        return self
