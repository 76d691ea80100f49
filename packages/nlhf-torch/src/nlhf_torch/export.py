"""The torch side of ``nlhf export`` (:mod:`nlhf.export`): a checkpoint's policy as one
transformers model directory. A peft LoRA adapter is loaded onto ``policy.model`` and folded
into its weights with peft's ``merge_and_unload`` (W + (α/r)·B·A, in float32); the model is
saved in ``policy.dtype`` as safetensors with the checkpoint's tokenizer (chat template
included). Checkpoints of the jax backend have the same layout and export the same way.
"""

from __future__ import annotations

from pathlib import Path

from nlhf.data.tokenizer import load_tokenizer
from nlhf.errors import InputError
from nlhf.spec.models import RunSpec

from nlhf_torch.models import load_causal_lm, peft_quietly, skip_deepspeed_probe, torch_dtype

ADAPTER_CONFIG = "adapter_config.json"


def export_model(model_dir: Path, dest: Path, spec: RunSpec) -> None:
    """Write the merged policy of checkpoint ``model_dir`` into ``dest``
    (:class:`nlhf.export.ModelExporter`)."""
    assert spec.policy is not None
    pol = spec.policy
    skip_deepspeed_probe()
    model_dir, dest = Path(model_dir), Path(dest)
    tokenizer = load_tokenizer(model_dir, "SOURCE (the checkpoint's tokenizer)")
    if (model_dir / ADAPTER_CONFIG).is_file():
        try:
            from peft import PeftModel
        except ImportError:
            raise InputError(
                f"SOURCE: {model_dir} holds a LoRA adapter; merging it needs peft: "
                "pip install 'nlhf-torch[peft]'"
            ) from None
        base = load_causal_lm(
            pol.model,
            "float32",
            f"policy.model (the base model of the adapter in {model_dir})",
            trust_remote_code=pol.trust_remote_code,
        )
        with peft_quietly():
            adapted = PeftModel.from_pretrained(base, str(model_dir))
        model = adapted.merge_and_unload()
    elif (model_dir / "config.json").is_file():
        model = load_causal_lm(
            str(model_dir), "float32", "SOURCE", trust_remote_code=pol.trust_remote_code
        )
    else:
        raise InputError(
            f"SOURCE: {model_dir} holds neither config.json nor {ADAPTER_CONFIG}; it is not a "
            "model checkpoint"
        )
    model = model.to(torch_dtype(pol.dtype))
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
