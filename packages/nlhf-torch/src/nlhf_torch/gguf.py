"""GGUF model files -> transformers directories (the builder of packaged GGUF models,
:data:`nlhf.packaged.SMOLLM2`).

transformers 5 reads a GGUF file with ``from_pretrained(dir, gguf_file=name)``: it maps
the GGUF tensors and metadata to the transformers architecture and dequantises them to
float32, so the weights are the quantised approximation of the released model. The model
it returns is marked as quantised (``hf_quantizer``, ``config.quantization_config``), and
``save_pretrained`` and training refuse it; the weights are plain float32 tensors by then,
so the markers are dropped before saving (docs/real-models.md). Library progress bars
follow transformers' switch, which ``nlhf run`` turns off unless ``--verbose``.
"""

from __future__ import annotations

from pathlib import Path

from nlhf.errors import InputError
from nlhf.packaged import check_gguf


def convert_gguf(source: str | Path, out: str | Path) -> None:
    """Write the causal LM of GGUF file ``source`` to ``out`` as a transformers directory
    (``config.json``, float32 ``model.safetensors``, tokenizer with its chat template)."""
    import functools

    import torch
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from nlhf_torch.models import skip_deepspeed_probe

    skip_deepspeed_probe()  # save_pretrained would import DeepSpeed otherwise
    source = Path(source)
    architecture = check_gguf(source)
    # transformers' GGUF reader uses tqdm directly ("Converting and de-quantizing GGUF
    # tensors"), not its logging switch; follow the switch (nlhf run --verbose turns it on)
    plain_tqdm = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(
        plain_tqdm, disable=not hf_logging.is_progress_bar_enabled()
    )
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(source.parent), gguf_file=source.name, dtype=torch.float32
            )
        except Exception as exc:  # transformers raises several types for unusable files
            raise InputError(
                f"{source}: transformers cannot load this GGUF {architecture!r} model as a "
                f"causal LM ({type(exc).__name__}: {exc})"
            ) from None
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    finally:
        gguf_utils.tqdm = plain_tqdm
