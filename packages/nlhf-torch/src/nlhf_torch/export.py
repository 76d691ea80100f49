"""The torch side of ``nlhf export`` (:mod:`nlhf.export`): a checkpoint's policy as one
transformers model directory. A peft LoRA adapter is loaded onto ``policy.model`` and folded
into its weights with peft's ``merge_and_unload`` (W + (α/r)·B·A, in float32); the model is
saved in ``policy.dtype`` as safetensors with the checkpoint's tokenizer (chat template
included). Checkpoints of the jax backend have the same layout and export the same way.
"""

from __future__ import annotations

from pathlib import Path

from nlhf.data.tokenizer import load_tokenizer
from nlhf.spec.models import RunSpec

from nlhf_torch.models import load_checkpoint_policy, skip_deepspeed_probe, torch_dtype


def export_model(model_dir: Path, dest: Path, spec: RunSpec) -> None:
    """Write the merged policy of checkpoint ``model_dir`` into ``dest``
    (:class:`nlhf.export.ModelExporter`)."""
    assert spec.policy is not None
    pol = spec.policy
    skip_deepspeed_probe()
    model_dir, dest = Path(model_dir), Path(dest)
    tokenizer = load_tokenizer(model_dir, "SOURCE (the checkpoint's tokenizer)")
    model = load_checkpoint_policy(
        model_dir, pol.model, "float32", "SOURCE", trust_remote_code=pol.trust_remote_code
    )
    model = model.to(torch_dtype(pol.dtype))
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
