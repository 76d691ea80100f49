"""Policy, reference and tokenizer of a ``task: nash`` run.

- policy: ``AutoModelForCausalLM.from_pretrained(policy.model, dtype=policy.dtype)``;
- reference μ: ``reference.model`` when given, else a frozen copy of the *initial* policy
  (also on resume: μ never moves);
- LoRA (``policy.lora``, needs ``peft``): the reference is the same module with the
  adapter disabled (``with policy.disable_adapter()``), never ``get_base_model()``, which
  still runs the adapter layers (TRL #2781).

Errors are :class:`nlhf.errors.InputError` naming the field and the fix: missing model
path, unloadable model, tokenizer larger than the model's vocabulary, policy/reference
vocabulary mismatch.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from nlhf.data.tokenizer import check_model_path, load_tokenizer
from nlhf.errors import InputError

from nlhf_torch import kernels
from nlhf_torch.generation import sequence_hidden

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise InputError(f"dtype: unknown dtype {name!r}; use one of {', '.join(DTYPES)}") from None


def load_causal_lm(name: str, dtype: str, field: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoModelForCausalLM

    check_model_path(name, field)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise InputError(
            f"{field}: could not load a causal LM from {name} "
            f"({type(exc).__name__}: {exc}); it must be loadable by AutoModelForCausalLM"
        ) from exc
    return own_storage(model)


@torch.no_grad()
def own_storage(model: Any) -> Any:
    """Copy every parameter and buffer into freshly allocated memory.

    Weights read from safetensors may live in memory-mapped, arbitrarily aligned
    storage, and CPU GEMM kernels can round differently depending on alignment; owning
    (64-byte aligned) copies makes a run and its resumed continuation bit-identical.
    """
    for module in model.modules():
        for _name, param in list(module.named_parameters(recurse=False)):
            param.data = param.data.clone()
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None:
                module._buffers[name] = buf.clone()
    return model


def output_vocab_size(model: Any) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def check_vocab(tokenizer: Any, model: Any, *, tokenizer_field: str, model_field: str) -> None:
    """Every token id the tokenizer can produce must index the model's vocabulary
    (models may pad their vocabulary beyond the tokenizer, never the reverse)."""
    n_tok, n_model = len(tokenizer), output_vocab_size(model)
    if n_tok > n_model:
        raise InputError(
            f"{tokenizer_field}: the tokenizer has {n_tok} tokens but the model of "
            f"{model_field} has a vocabulary of {n_model}; use the tokenizer the model was "
            f"trained with"
        )


CHUNKED_LOGPROB_MODEL_TYPES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
)
"""Model types whose logits are ``lm_head(decoder(x))`` (Gemma 2/3 then soft-capped), the
form :func:`nlhf_torch.kernels.chunked_token_logprobs` computes in chunks."""


def logprob_head(model: Any) -> tuple[torch.nn.Module, float | None] | str:
    """(LM head module, final-logit soft-cap c or None) of a causal LM in
    :data:`CHUNKED_LOGPROB_MODEL_TYPES` — tied embeddings and a LoRA-adapted head are the
    module as it is — or why its logits are not known to take that form."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in CHUNKED_LOGPROB_MODEL_TYPES:
        return (
            f"model_type {model_type!r} is not known to compute its logits as lm_head(final "
            f"hidden state) (chunked log-probs cover {', '.join(CHUNKED_LOGPROB_MODEL_TYPES)})"
        )
    softcap = getattr(config, "final_logit_softcapping", None)
    return model.get_output_embeddings(), (float(softcap) if softcap else None)


class AdapterDisabled(torch.nn.Module):
    """μ of a LoRA policy: calls the policy with its adapter disabled (TRL #2781: not
    ``get_base_model()``, whose layers still run the adapter)."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self._policy = [policy]  # a list, so the policy is not registered as a submodule
        self.config = policy.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        policy = self._policy[0]
        with policy.disable_adapter(), torch.no_grad():
            return policy(*args, **kwargs)


def chunk_head(
    model: Any, logprob_chunk: int | str, field: str = ""
) -> tuple[torch.nn.Module, float | None] | None:
    """``model``'s :func:`logprob_head` for ``training.logprob_chunk`` (μ of a LoRA policy,
    an :class:`AdapterDisabled`, reads its policy's head), or None where the setting is
    ``off`` or the head is not known; an explicit chunk size refuses a model whose head is
    not known (``field``: where the spec names it, e.g. ``"reference.model: "``)."""
    if logprob_chunk == "off":
        return None
    if isinstance(model, AdapterDisabled):
        model = model._policy[0]
    head = logprob_head(model)
    if isinstance(head, str):
        if isinstance(logprob_chunk, int):
            raise InputError(f"training.logprob_chunk: {field}{head}; set logprob_chunk: off")
        return None
    return head


def chunked_model_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    comp: torch.Tensor,
    cmask: torch.Tensor,
    temperature: float,
    chunk: int,
) -> torch.Tensor:
    """log π(y|x) (B,) of ``model`` from its final hidden states through its LM head
    ``chunk`` completion positions at a time (:func:`nlhf_torch.kernels.chunked_sequence_logprobs`),
    so no B×T×V logits; an :class:`AdapterDisabled` μ runs as its policy with the adapter
    off. Gradients flow as the caller's mode allows."""
    lora = isinstance(model, AdapterDisabled)
    net = model._policy[0] if lora else model
    with net.disable_adapter() if lora else contextlib.nullcontext():
        head, softcap = logprob_head(net)
        hidden = sequence_hidden(net, input_ids, attention_mask, comp, cmask)
        return kernels.chunked_sequence_logprobs(
            hidden, head, comp, cmask, temperature, chunk, softcap=softcap
        )


@dataclass
class Models:
    """The trained policy, the frozen reference μ and the policy's tokenizer."""

    policy: Any
    reference: Any
    tokenizer: Any
    lora: bool = False


def _apply_lora(model: Any, lora: Any) -> Any:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise InputError(
            "policy.lora: LoRA policies need the `peft` package: pip install 'nlhf-torch[peft]'"
        ) from exc
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    with peft_quietly():
        return get_peft_model(model, config)


def skip_deepspeed_probe() -> None:
    """Keep ``save_pretrained`` from importing DeepSpeed in runs that do not use it.

    transformers' ``unwrap_model`` calls accelerate's ``extract_model_from_parallel``, which
    imports ``deepspeed`` whenever it is installed, only to test ``isinstance(model,
    DeepSpeedEngine)``; the import costs seconds and DeepSpeed's accelerator probe logs
    "Setting accelerator to CPU". No DeepSpeed engine can exist before ``deepspeed`` is
    imported, so the test is skipped exactly then (a DeepSpeed run has imported it already,
    and is unchanged). Idempotent; patches only that accelerate module's name."""
    try:
        from accelerate.utils import other
    except ImportError:  # transformers then unwraps without accelerate
        return
    check = other.is_deepspeed_available
    if getattr(check, "_nlhf_skips_unimported", False):
        return

    def is_deepspeed_available() -> bool:
        return "deepspeed" in sys.modules and check()

    is_deepspeed_available._nlhf_skips_unimported = True  # type: ignore[attr-defined]
    other.is_deepspeed_available = is_deepspeed_available


@contextmanager
def peft_quietly() -> Iterator[None]:
    """peft 0.21 reads transformers' deprecated ``model.is_gradient_checkpointing``
    (``PeftModel.__init__``), which warns ``is_gradient_checkpointing is deprecated``
    inside peft on every adapter load; only that warning is filtered, nlhf's own code
    uses ``is_activation_checkpointing``."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def load_checkpoint_policy(
    directory: str | Path,
    base_model: str | None,
    dtype: str,
    field: str,
    *,
    trust_remote_code: bool = False,
) -> Any:
    """The policy of a checkpoint directory: its full weights (``config.json``), or a peft
    LoRA adapter (``adapter_config.json``) loaded onto ``base_model`` and folded in with
    peft's ``merge_and_unload`` (W + (α/r)·B·A, in float32); returned in ``dtype``."""
    directory = Path(directory)
    if (directory / "adapter_config.json").is_file():
        try:
            from peft import PeftModel
        except ImportError:
            raise InputError(
                f"{field}: {directory} holds a LoRA adapter; loading it needs peft: "
                "pip install 'nlhf-torch[peft]'"
            ) from None
        if base_model is None:
            raise InputError(f"{field}: {directory} is a LoRA adapter; give its base model")
        base = load_causal_lm(
            base_model,
            "float32",
            f"{field} (the base model of the adapter in {directory})",
            trust_remote_code=trust_remote_code,
        )
        with peft_quietly():
            model = PeftModel.from_pretrained(base, str(directory)).merge_and_unload()
        return own_storage(model.to(torch_dtype(dtype)))
    if (directory / "config.json").is_file():
        return load_causal_lm(str(directory), dtype, field, trust_remote_code=trust_remote_code)
    raise InputError(
        f"{field}: {directory} holds neither config.json nor adapter_config.json; it is not a "
        "model checkpoint"
    )


def load_models(spec: Any, *, policy_path: str | Path | None = None) -> Models:
    """Load policy, reference and tokenizer for ``spec`` (a :class:`nlhf.spec.RunSpec`).

    ``policy_path`` (a checkpoint directory) overrides where the policy weights come
    from; the reference still comes from ``reference.model`` or the initial policy.
    """
    pol = spec.policy
    tokenizer = load_tokenizer(
        pol.tokenizer or pol.model,
        "policy.tokenizer" if pol.tokenizer else "policy.model",
        trust_remote_code=pol.trust_remote_code,
    )
    initial = load_causal_lm(
        pol.model, pol.dtype, "policy.model", trust_remote_code=pol.trust_remote_code
    )
    check_vocab(
        tokenizer,
        initial,
        tokenizer_field="policy.tokenizer" if pol.tokenizer else "policy.model",
        model_field="policy.model",
    )
    lora = pol.lora is not None
    if lora:
        if spec.reference.model is not None:
            raise InputError(
                "reference.model: with policy.lora the reference is the policy with its "
                "adapter disabled; remove reference.model"
            )
        if policy_path is not None:
            from peft import PeftModel

            with peft_quietly():
                adapted = PeftModel.from_pretrained(initial, str(policy_path), is_trainable=True)
            policy = own_storage(adapted)
        else:
            torch.manual_seed(spec.seed)  # LoRA's A matrices are drawn from the seed
            policy = own_storage(_apply_lora(initial, pol.lora))
        policy.train()
        return Models(
            policy=policy, reference=AdapterDisabled(policy), tokenizer=tokenizer, lora=True
        )

    if spec.reference.model is not None:
        reference = load_causal_lm(
            spec.reference.model,
            spec.reference.dtype or pol.dtype,
            "reference.model",
            trust_remote_code=pol.trust_remote_code,
        )
        if output_vocab_size(reference) != output_vocab_size(initial):
            raise InputError(
                f"reference.model: vocabulary of {output_vocab_size(reference)} differs from "
                f"the policy's {output_vocab_size(initial)}; policy and reference must share "
                f"a tokenizer"
            )
    else:
        reference = initial if policy_path is not None else copy.deepcopy(initial)
        if spec.reference.dtype is not None and spec.reference.dtype != pol.dtype:
            reference = reference.to(torch_dtype(spec.reference.dtype))
    reference.eval()
    reference.requires_grad_(False)

    if policy_path is not None:
        policy = load_causal_lm(
            str(policy_path), pol.dtype, "checkpoint", trust_remote_code=pol.trust_remote_code
        )
    else:
        policy = initial
    policy.train()
    return Models(policy=policy, reference=reference, tokenizer=tokenizer)


skip_deepspeed_probe()
