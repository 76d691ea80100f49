"""LoRA adapters on the Flax NNX decoder, with peft's conventions and file format.

A target linear layer y = W x + b becomes (peft ``tuners/lora/layer.py``)

    y = W x + b + s · B A dropout(x),   s = α / r   (α / √r with ``use_rslora``)

with A (r × in) drawn like peft's ``kaiming_uniform_(a=√5)``, i.e. U(−1/√in, 1/√in), and
B (out × r) = 0, so a fresh adapter leaves the model unchanged. In our (in, out) kernel
layout the adapter is Flax's :class:`flax.nnx.LoRA` (``lora_a`` = Aᵀ (in, r), ``lora_b`` =
Bᵀ (r, out), both :class:`flax.nnx.LoRAParam`), computed in the adapter's dtype (float32)
and added before casting back to the activations' dtype, as peft does. nnx's own
``LoRALinear`` is not used because it lacks the scaling s, the input dropout and a way to
switch the adapter off; :class:`LoraLinear` adds them around ``nnx.LoRA`` while keeping the
base layer's ``kernel``/``bias`` (and so the base parameter paths) unchanged.

Targets follow peft's ``check_target_module_exists``: a list matches a module path ``k``
when ``k == t`` or ``k`` ends with ``"." + t``; a string is a regular expression that must
match the whole path; ``"all-linear"`` takes every linear layer of the decoder stack (not
``lm_head`` / ``score``).

The reference μ is the same module with the adapter off (:func:`without_adapter`, a view
sharing the arrays; :func:`adapter_disabled`, a context manager), never a second copy
(TRL #2781). The trainable parameters are :data:`LORA_FILTER` (``nnx.LoRAParam``); note that
``nnx.Param`` also matches them, :data:`BASE_FILTER` is the base weights alone.

Dropout (training only, on the adapter's input): off by default, so sampling and
evaluation are deterministic; :func:`with_lora_dropout` returns a copy with it on whose
masks are a function of the key given (each layer's stream restarts from it).

Files are peft's: ``adapter_config.json`` and ``adapter_model.safetensors`` with tensors
``base_model.model.<module path>.lora_A.weight`` (r, in) and ``….lora_B.weight`` (out, r),
which ``peft.PeftModel.from_pretrained`` loads onto the transformers model.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from nlhf.errors import InputError

from nlhf_jax.models.decoder import Linear

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
ALL_LINEAR = "all-linear"

LORA_FILTER = nnx.LoRAParam
"""The trainable LoRA parameters: ``nnx.split(model, LORA_FILTER, ...)``."""
BASE_FILTER = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))
"""The frozen base parameters (``nnx.Param`` alone would include the LoRA ones)."""

_HEADS = ("lm_head", "score")  # output layers that "all-linear" leaves alone (as peft)


@dataclass(frozen=True)
class LoraConfig:
    """What an adapter is: rank r, α, dropout p, targets, and whether s = α/√r (rsLoRA)."""

    r: int
    alpha: float
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = ALL_LINEAR
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        """s = α / r, or α / √r with ``use_rslora``."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @classmethod
    def of(cls, spec: Any) -> LoraConfig:
        """From a :class:`nlhf.spec.models.LoraSpec` (``r, alpha, dropout,
        target_modules``) or a ``LoraConfig``."""
        if isinstance(spec, LoraConfig):
            return spec
        tm = spec.target_modules
        return cls(
            r=int(spec.r),
            alpha=float(spec.alpha),
            dropout=float(spec.dropout),
            target_modules=tm if isinstance(tm, str) else tuple(tm),
        )


def _peft_a_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """peft's A init, ``kaiming_uniform_(a=√5)`` on the (r, in) weight: gain √(2/(1+5)),
    bound = gain·√(3/in) = 1/√in; here on Aᵀ of shape (in, r)."""
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, tuple(shape), dtype, -bound, bound)


class LoraLinear(Linear):
    """y = x·kernel + bias + s · (dropout(x)·lora_a)·lora_b, or x·kernel + bias when
    ``lora_enabled`` is False. Holds the wrapped layer's own ``kernel``/``bias`` Variables."""

    def __init__(
        self,
        base: Linear,
        config: LoraConfig,
        *,
        rngs: nnx.Rngs,
        lora_dtype: Any = jnp.float32,
    ) -> None:
        # The base Variables are taken over as they are (no re-allocation, same paths).
        self.kernel = base.kernel
        self.bias = base.bias
        d_in, d_out = base.kernel.shape
        self.lora = nnx.LoRA(
            d_in, config.r, d_out, param_dtype=lora_dtype, a_initializer=_peft_a_init,
            b_initializer=nnx.initializers.zeros, rngs=rngs,
        )  # fmt: skip
        self.lora_dropout = (
            nnx.Dropout(config.dropout, deterministic=True, rngs=rngs)
            if config.dropout > 0
            else None
        )
        self.scaling = config.scaling
        self.lora_rank = config.r
        self.lora_alpha = config.alpha
        self.lora_enabled = True

    def set_view(self, lora_enabled: bool | None = None) -> None:
        """``nnx.view(model, lora_enabled=False)`` switches the adapter off in a view."""
        if lora_enabled is not None:
            self.lora_enabled = lora_enabled

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        if not self.lora_enabled:
            return y
        h = x if self.lora_dropout is None else self.lora_dropout(x)
        delta = self.lora(h) * self.scaling
        return (y.astype(delta.dtype) + delta).astype(y.dtype)

    def merged_kernel(self) -> jax.Array:
        """W' = kernel + s · lora_a·lora_b, in the kernel's dtype."""
        k = self.kernel[...]
        acc = jnp.promote_types(k.dtype, jnp.float32)  # ≥ float32
        ab = self.lora.lora_a[...].astype(acc) @ self.lora.lora_b[...].astype(acc)
        return (k.astype(acc) + self.scaling * ab).astype(k.dtype)


# ----------------------------------------------------------------------------- targets
def _key(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def _linear_paths(model: nnx.Module) -> list[tuple[tuple[Any, ...], Linear]]:
    return [(tuple(p), m) for p, m in nnx.iter_modules(model) if isinstance(m, Linear) and p]


def is_target(key: str, target_modules: str | Sequence[str]) -> bool:
    """peft's rule: a string is a full-match regex; a list matches ``key == t`` or
    ``key.endswith("." + t)``; ``"all-linear"`` matches every linear layer but the heads."""
    if isinstance(target_modules, str):
        if target_modules.lower() == ALL_LINEAR:
            return key.split(".")[0] not in _HEADS
        return re.fullmatch(target_modules, key) is not None
    return any(key == t or key.endswith("." + t) for t in target_modules)


def lora_layers(model: nnx.Module) -> dict[str, LoraLinear]:
    """The LoRA layers of ``model`` by module path (e.g. ``model.layers.0.self_attn.q_proj``)."""
    return {_key(p): m for p, m in nnx.iter_modules(model) if isinstance(m, LoraLinear)}


def _set_child(model: nnx.Module, path: tuple[Any, ...], value: nnx.Module) -> None:
    parent: Any = model
    for p in path[:-1]:
        parent = parent[p] if isinstance(p, int) else getattr(parent, p)
    if isinstance(path[-1], int):
        parent[path[-1]] = value
    else:
        setattr(parent, path[-1], value)


def apply_lora(
    model: nnx.Module, lora_spec: Any, *, seed: int, lora_dtype: Any = jnp.float32
) -> nnx.Module:
    """Wrap the target linear layers of ``model`` in :class:`LoraLinear`, in place (and
    return it). ``lora_spec``: a ``LoraSpec`` (``policy.lora``) or :class:`LoraConfig`.

    A of the k-th target (module-path order) is drawn from ``nnx.Rngs(params=fold_in(
    key(seed), k))``; B = 0. Dropout, when p > 0, is off until :func:`with_lora_dropout`.
    """
    cfg = LoraConfig.of(lora_spec)
    if lora_layers(model):
        raise InputError("the model already has LoRA layers")
    targets = [(p, m) for p, m in _linear_paths(model) if is_target(_key(p), cfg.target_modules)]
    if not targets:
        raise InputError(
            f"lora.target_modules: {cfg.target_modules!r} matches no linear layer of the model "
            f"(e.g. {', '.join(_key(p) for p, _ in _linear_paths(model)[:3])})"
        )
    root = jax.random.key(seed)
    for k, (path, base) in enumerate(targets):
        key = jax.random.fold_in(root, k)
        rngs = nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1))
        _set_child(model, path, LoraLinear(base, cfg, rngs=rngs, lora_dtype=lora_dtype))
    return model


# ----------------------------------------------------------------------------- modes
def without_adapter(model: nnx.Module) -> nnx.Module:
    """The reference μ: a view of ``model`` (same arrays) with every adapter off, so its
    outputs are exactly the base model's. Safe inside ``jax.jit``."""
    if not lora_layers(model):
        return model
    return nnx.view(model, only=LoraLinear, lora_enabled=False)


@contextlib.contextmanager
def adapter_disabled(model: nnx.Module) -> Iterator[nnx.Module]:
    """``with adapter_disabled(model): ...`` runs ``model`` itself with the adapters off
    (peft's ``disable_adapter()``), for eager code; under ``jax.jit`` use
    :func:`without_adapter`."""
    layers = list(lora_layers(model).values())
    before = [m.lora_enabled for m in layers]
    for m in layers:
        m.lora_enabled = False
    try:
        yield model
    finally:
        for m, b in zip(layers, before, strict=True):
            m.lora_enabled = b


def with_lora_dropout(model: nnx.Module, key: jax.Array | None) -> nnx.Module:
    """A copy of ``model`` (sharing its parameter arrays) with LoRA dropout on, for the
    training forward: the dropout stream of the j-th layer (state order) starts from
    ``Rngs(dropout=key)``'s j-th key, so the masks are a function of ``key`` alone. Pure:
    ``model``'s own RNG state is untouched (so it works on a model merged inside
    ``jax.grad`` from closed-over state). Returns ``model`` itself when no layer has
    dropout or ``key`` is None."""
    if key is None or not any(m.lora_dropout is not None for m in lora_layers(model).values()):
        return model
    view = nnx.view(model, only=nnx.PathContains("lora_dropout"), deterministic=False)
    graphdef, state = nnx.split(view)
    keys = nnx.Rngs(dropout=key)
    flat = []
    for path, var in nnx.to_flat_state(state):
        if "lora_dropout" in path and isinstance(var, nnx.RngKey):
            var = var.replace(keys.dropout())
        elif "lora_dropout" in path and isinstance(var, nnx.RngCount):
            var = var.replace(jnp.zeros_like(var[...]))
        flat.append((path, var))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


# ----------------------------------------------------------------------------- tensors
def adapter_state_dict(model_or_state: nnx.Module | nnx.State) -> dict[str, np.ndarray]:
    """LoRA parameters (or a same-shaped State, e.g. their gradients) under peft's names:
    ``base_model.model.<path>.lora_A.weight`` (r, in) and ``….lora_B.weight`` (out, r)."""
    state = (
        model_or_state
        if isinstance(model_or_state, nnx.State)
        else nnx.state(model_or_state, LORA_FILTER)
    )
    out = {}
    for path, var in nnx.to_flat_state(state):
        parts = [str(p) for p in path]
        if len(parts) < 2 or parts[-2] != "lora" or parts[-1] not in ("lora_a", "lora_b"):
            continue
        name = "lora_A" if parts[-1] == "lora_a" else "lora_B"
        value = np.asarray(var.get_value() if hasattr(var, "get_value") else var)
        out[f"{PEFT_PREFIX}{'.'.join(parts[:-2])}.{name}.weight"] = np.ascontiguousarray(value.T)
    return out


def _adapter_config(cfg: LoraConfig, model: nnx.Module, base_model_path: str | None) -> dict:
    layers = lora_layers(model)
    tm: str | list[str]
    if isinstance(cfg.target_modules, str):
        # peft saves "all-linear" expanded to the module paths it adapted
        tm = sorted(layers) if cfg.target_modules.lower() == ALL_LINEAR else cfg.target_modules
    else:
        tm = list(cfg.target_modules)
    alpha = int(cfg.alpha) if float(cfg.alpha).is_integer() else cfg.alpha
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_path,
        "revision": None,
        "inference_mode": True,
        "r": cfg.r,
        "lora_alpha": alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": tm,
        "exclude_modules": None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": cfg.use_rslora,
        "use_dora": False,
        "lora_bias": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def save_adapter(
    model: nnx.Module,
    directory: str | Path,
    lora_spec: Any,
    base_model_path: str | Path | None = None,
) -> Path:
    """Write peft's ``adapter_config.json`` + ``adapter_model.safetensors`` into
    ``directory`` (``PeftModel.from_pretrained(base, directory)`` loads them)."""
    from safetensors.numpy import save_file

    cfg = LoraConfig.of(lora_spec)
    layers = lora_layers(model)
    if not layers:
        raise InputError("save_adapter: the model has no LoRA layers (apply_lora first)")
    for name, m in layers.items():
        if m.lora_rank != cfg.r or not math.isclose(m.scaling, cfg.scaling):
            raise InputError(
                f"save_adapter: {name} has r={m.lora_rank}, scaling={m.scaling}; lora_spec "
                f"says r={cfg.r}, scaling={cfg.scaling}"
            )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = _adapter_config(cfg, model, None if base_model_path is None else str(base_model_path))
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(adapter_state_dict(model), directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    return directory


_UNSUPPORTED = {  # adapter_config.json fields whose non-default values we cannot honour
    "use_dora": False, "lora_bias": False, "modules_to_save": None, "layers_to_transform": None,
    "rank_pattern": {}, "alpha_pattern": {}, "exclude_modules": None, "target_parameters": None,
    "trainable_token_indices": None, "layer_replication": None, "use_qalora": False,
    "alora_invocation_tokens": None, "arrow_config": None, "use_bdlora": None,
    "velora_config": None, "monteclora_config": None, "kasa_config": None,
}  # fmt: skip


def read_adapter_config(directory: str | Path) -> LoraConfig:
    """The :class:`LoraConfig` of a peft LoRA adapter directory (errors on features the
    jax backend does not implement: DoRA, per-layer ranks, bias training, …)."""
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise InputError(f"no {ADAPTER_CONFIG} in {directory} (expected a peft adapter)")
    d = json.loads(path.read_text(encoding="utf-8"))
    if d.get("peft_type") != "LORA":
        raise InputError(f"{path}: peft_type {d.get('peft_type')!r} is not LORA")
    bad = [k for k, v in _UNSUPPORTED.items() if d.get(k, v) not in (v, None, [], {}, False)]
    if d.get("bias", "none") != "none":
        bad.append("bias")
    if bad:
        raise InputError(f"{path}: unsupported LoRA options for the jax backend: {bad}")
    tm = d.get("target_modules")
    if tm is None:
        raise InputError(f"{path}: target_modules is missing")
    return LoraConfig(
        r=int(d["r"]),
        alpha=float(d.get("lora_alpha", 8)),
        dropout=float(d.get("lora_dropout", 0.0)),
        target_modules=tm if isinstance(tm, str) else tuple(tm),
        use_rslora=bool(d.get("use_rslora", False)),
    )


def load_adapter(
    model: nnx.Module, directory: str | Path, *, seed: int = 0, lora_dtype: Any = jnp.float32
) -> nnx.Module:
    """Load a peft LoRA adapter into ``model`` (in place; returned): applies LoRA from
    ``adapter_config.json`` (A, B in ``lora_dtype``) when the model has none yet, then sets
    every A and B (every adapter tensor must match a LoRA layer and vice versa)."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    cfg = read_adapter_config(directory)
    if not lora_layers(model):
        apply_lora(model, cfg, seed=seed, lora_dtype=lora_dtype)
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise InputError(f"no {ADAPTER_WEIGHTS} in {directory}")
    tensors = load_file(weights)
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise InputError(
            f"{weights}: adapter tensors do not fit the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    for name, m in lora_layers(model).items():
        if not math.isclose(m.scaling, cfg.scaling):
            raise InputError(f"{name}: scaling {m.scaling} != adapter's {cfg.scaling}")
        for attr, peft_name in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
            var = getattr(m.lora, attr)
            value = tensors[f"{PEFT_PREFIX}{name}.{peft_name}.weight"].T
            if value.shape != var.shape:
                raise InputError(f"{name}.{peft_name}: shape {value.T.shape} != {var.shape[::-1]}")
            var[...] = jnp.asarray(value, var.dtype)
    return model


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Fold every adapter into its base layer, W' = W + s·B A, and drop the LoRA layers
    (in place; returned), so :func:`nlhf_jax.models.save_model` writes a plain checkpoint."""
    for name, m in lora_layers(model).items():
        d_in, d_out = m.kernel.shape
        plain = Linear(d_in, d_out, bias=m.bias is not None, dtype=m.kernel.dtype)
        plain.kernel[...] = m.merged_kernel()
        if m.bias is not None:
            plain.bias = m.bias
        path = tuple(int(p) if p.isdigit() else p for p in name.split("."))
        _set_child(model, path, plain)
    return model


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "BASE_FILTER",
    "LORA_FILTER",
    "LoraConfig",
    "LoraLinear",
    "adapter_disabled",
    "adapter_state_dict",
    "apply_lora",
    "is_target",
    "load_adapter",
    "lora_layers",
    "merge_lora",
    "read_adapter_config",
    "save_adapter",
    "with_lora_dropout",
    "without_adapter",
]
