"""DeepSpeed configuration for torch runs (docs/distributed.md): spec -> DeepSpeed JSON,
launch helpers.

The ``distributed`` section (:class:`nlhf.spec.models.DeepSpeedSpec`) is the single source
of truth. :func:`build_deepspeed_config` derives the batch, accumulation, ZeRO, offload,
clipping and precision keys from the spec and merges a user's own DeepSpeed JSON
(``distributed.config``) into them: ``"auto"`` values are filled, keys that disagree with
the spec are all reported in one error, never silently merged.

CPU recipe (CI, laptops; docs/distributed.md)::

    DS_BUILD_OPS=0 pip install 'nlhf-torch[deepspeed]'
    nlhf run spec.yaml --backend torch --nproc 2      # sets DS_ACCELERATOR=cpu without CUDA
    DS_ACCELERATOR=cpu torchrun --nproc_per_node=2 -m nlhf_torch.launch spec.yaml
    nlhf run spec.yaml --nnodes 2 --node-rank R --master-addr HOST --nproc 8   # on each node

Processes join with ``deepspeed.init_distributed(dist_backend="gloo")`` (see
:func:`dist_backend`), the optimizer is a torch optimizer passed to
``deepspeed.initialize`` (DeepSpeed's own compiles ops for ~75 s), sampling runs under
``torch.no_grad()`` (not ``inference_mode``), and scripts accept the launcher's
``--local_rank=N`` (:func:`parse_local_rank`). :func:`init_engine` and :class:`Engine`
(shared by the Nash and preference-model trainers) import DeepSpeed when called.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlhf.errors import InputError, NLHFError
from nlhf.multinode import Nodes
from nlhf.runio import atomic_directory
from nlhf.spec import RunSpec
from nlhf.spec.models import DeepSpeedSpec

__all__ = [
    "DEEPSPEED_MISSING",
    "Engine",
    "build_deepspeed_config",
    "describe_run",
    "dist_backend",
    "env_rank",
    "init_engine",
    "launch_command",
    "launch_env",
    "load_user_config",
    "parse_local_rank",
    "require_deepspeed",
    "single_process_env",
    "world_size_from_env",
]

DEEPSPEED_MISSING = (
    "DeepSpeed is not installed; install it with: pip install nlhf-torch[deepspeed] "
    "(quote the brackets in zsh; on CPU set DS_BUILD_OPS=0 for the install and "
    "DS_ACCELERATOR=cpu to run)"
)

# Sections nlhf builds itself from `training`; DeepSpeed refuses a JSON optimizer when a
# client optimizer is passed, and a JSON scheduler would fight nlhf's lr schedule.
_OWNED_SECTIONS = {
    "optimizer": "training.optimizer",
    "scheduler": "training.lr_schedule",
}
_OFFLOAD_NONE = "none"


def require_deepspeed() -> Any:
    """Import and return :mod:`deepspeed`; :class:`NLHFError` with the install hint when
    it is missing or cannot be imported."""
    if importlib.util.find_spec("deepspeed") is None:
        raise NLHFError(DEEPSPEED_MISSING)
    try:
        import deepspeed
    except ImportError as err:
        raise NLHFError(f"{DEEPSPEED_MISSING}; importing it failed: {err}") from None
    return deepspeed


# ------------------------------------------------------------------------- user JSON
def load_user_config(
    config: str | os.PathLike[str] | Mapping[str, Any] | None, base_dir: Path | None = None
) -> dict[str, Any]:
    """The user's DeepSpeed JSON (``distributed.config``) as a dict: a mapping is copied, a
    path (relative to ``base_dir``, default the working directory) is read and parsed."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    path = Path(config)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise InputError(
            f"distributed.config: DeepSpeed JSON file {str(path)!r} does not exist; "
            "give the path of an existing .json file or an inline mapping"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(
            f"distributed.config: {str(path)!r} is not valid JSON: {err.msg} at line "
            f"{err.lineno}, column {err.colno}; fix the file"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"distributed.config: cannot read {str(path)!r}: {err}") from None
    if not isinstance(data, dict):
        raise InputError(
            f"distributed.config: {str(path)!r} holds a JSON {type(data).__name__}; "
            "a DeepSpeed config is a JSON object ({...})"
        )
    return data


# ---------------------------------------------------------------------------- config
def _batch_layout(spec: RunSpec, ds: DeepSpeedSpec, world_size: int) -> tuple[int, int, int]:
    """(global batch, accumulation steps, micro batch per process), checked."""
    if world_size < 1:
        raise InputError(f"world size must be >= 1, got {world_size}")
    batch, accum = spec.training.batch_size, spec.training.grad_accum
    per_micro_step = world_size * accum
    if ds.micro_batch_size is None:
        if batch % per_micro_step:
            multiple = per_micro_step * max(1, -(-batch // per_micro_step))
            raise InputError(
                f"training.batch_size = {batch} is not divisible by world size {world_size} "
                f"× training.grad_accum {accum} = {per_micro_step}; set training.batch_size "
                f"to a multiple of {per_micro_step} (e.g. {multiple}), or change the "
                "number of processes (--nproc) or training.grad_accum"
            )
        return batch, accum, batch // per_micro_step
    micro = ds.micro_batch_size
    if micro * per_micro_step != batch:
        raise InputError(
            f"distributed.micro_batch_size = {micro} × world size {world_size} × "
            f"training.grad_accum {accum} = {micro * per_micro_step}, but "
            f"training.batch_size = {batch}; they must be equal: remove "
            "distributed.micro_batch_size (it is then derived) or change one of the numbers"
        )
    return batch, accum, micro


def _derived(spec: RunSpec, ds: DeepSpeedSpec, world_size: int) -> dict[str, tuple[Any, str]]:
    """Flat ``dotted.path -> (value, "spec.field = value")`` for every key nlhf derives."""
    if spec.policy is None:
        raise InputError(
            "distributed.engine: deepspeed applies to torch LLM runs with a `policy`; "
            "remove the `distributed` section"
        )
    batch, accum, micro = _batch_layout(spec, ds, world_size)
    dtype = spec.policy.dtype
    if dtype == "float64":
        raise InputError(
            "policy.dtype: DeepSpeed trains float32, bfloat16 or float16 models, not "
            "float64; change policy.dtype or remove the `distributed` section"
        )
    if ds.offload_params and ds.zero_stage != 3:
        raise InputError(
            f"distributed.offload_params: parameter offload needs ZeRO stage 3 "
            f"(distributed.zero_stage = {ds.zero_stage}); set zero_stage: 3 or "
            "offload_params: false"
        )
    if ds.offload_optimizer and ds.zero_stage == 0:
        raise InputError(
            "distributed.offload_optimizer: optimizer offload needs ZeRO stage 1, 2 or 3 "
            "(distributed.zero_stage = 0); raise zero_stage or set offload_optimizer: false"
        )
    micro_src = (
        f"distributed.micro_batch_size = {micro}"
        if ds.micro_batch_size is not None
        else f"training.batch_size / (world size × training.grad_accum) = "
        f"{batch} / ({world_size} × {accum}) = {micro}"
    )
    clip = spec.training.max_grad_norm
    derived: dict[str, tuple[Any, str]] = {
        "train_batch_size": (batch, f"training.batch_size = {batch}"),
        "gradient_accumulation_steps": (accum, f"training.grad_accum = {accum}"),
        "train_micro_batch_size_per_gpu": (micro, micro_src),
        "zero_optimization.stage": (ds.zero_stage, f"distributed.zero_stage = {ds.zero_stage}"),
        "zero_optimization.offload_optimizer.device": (
            "cpu" if ds.offload_optimizer else _OFFLOAD_NONE,
            f"distributed.offload_optimizer = {str(ds.offload_optimizer).lower()}",
        ),
        "gradient_clipping": (
            0.0 if clip is None else clip,
            f"training.max_grad_norm = {'null' if clip is None else clip}",
        ),
        "bf16.enabled": (dtype == "bfloat16", f"policy.dtype = {dtype}"),
        "fp16.enabled": (dtype == "float16", f"policy.dtype = {dtype}"),
    }
    if ds.zero_stage == 3:
        derived["zero_optimization.offload_param.device"] = (
            "cpu" if ds.offload_params else _OFFLOAD_NONE,
            f"distributed.offload_params = {str(ds.offload_params).lower()}",
        )
    return derived


def _get(tree: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _same(user: Any, ours: Any) -> bool:
    if isinstance(ours, bool) or isinstance(user, bool):
        return isinstance(user, bool) and user == ours
    if isinstance(ours, int | float) and isinstance(user, int | float):
        return float(user) == float(ours)
    return bool(user == ours)


def _fill_auto(node: Any, path: str, fills: Mapping[str, Any]) -> Any:
    """Replace ``"auto"`` leaves by ``fills[path]``; drop the ones nlhf cannot fill (so
    DeepSpeed uses its default)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if value == "auto" and sub not in fills:
                continue
            out[key] = _fill_auto(value, sub, fills)
        return out
    if node == "auto":
        return fills[path]
    return node


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def build_deepspeed_config(
    spec: RunSpec,
    world_size: int,
    *,
    hidden_size: int | None = None,
    base_dir: Path | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config dict for ``spec`` on ``world_size`` processes.

    ``train_batch_size`` is ``training.batch_size`` (prompts per optimiser step, global),
    ``gradient_accumulation_steps`` is ``training.grad_accum`` and the micro batch is
    ``distributed.micro_batch_size`` or ``batch_size / (world_size × grad_accum)``. The
    user's JSON (``distributed.config``) is merged on top: ``"auto"`` values are filled
    (bucket sizes from ``hidden_size`` when given, else left to DeepSpeed), and every
    key that disagrees with the spec is reported in one :class:`InputError`.
    """
    ds = spec.distributed
    if not isinstance(ds, DeepSpeedSpec):
        raise InputError(
            f"distributed.engine: {ds.engine!r} is not DeepSpeed; set "
            "`distributed: {engine: deepspeed}` to build a DeepSpeed config"
        )
    derived = _derived(spec, ds, world_size)
    user = load_user_config(ds.config, base_dir)
    where = (
        f"distributed.config ({ds.config})"
        if isinstance(ds.config, str)
        else ("distributed.config")
    )

    problems: list[str] = []
    bad_parents: set[str] = set()
    for section, field in _OWNED_SECTIONS.items():
        if section in user:
            problems.append(
                f"distributed.config.{section} conflicts with {field} (nlhf builds the "
                f"{section} from the spec and passes it to DeepSpeed); remove `{section}` "
                "from the JSON"
            )
    for dotted, (ours, source) in derived.items():
        present, value = _get(user, dotted)
        if not present:
            parent = dotted.rpartition(".")[0]
            while parent:
                ok, node = _get(user, parent)
                if ok and not isinstance(node, Mapping):
                    if parent not in bad_parents:
                        bad_parents.add(parent)
                        problems.append(
                            f"distributed.config.{parent} = {json.dumps(node)} must be a "
                            f"JSON object (it holds {dotted.rpartition('.')[2]}, derived "
                            f"from {source}); fix the JSON"
                        )
                    break
                parent = parent.rpartition(".")[0]
            continue
        if value == "auto" or _same(value, ours):
            continue
        if dotted.endswith(".device") and ours != _OFFLOAD_NONE and value in ("cpu", "nvme"):
            continue  # the spec says whether to offload; the JSON may choose cpu or nvme
        problems.append(
            f"distributed.config.{dotted} = {json.dumps(value)} conflicts with {source}; "
            "remove it from the JSON or change the spec"
        )
    if problems:
        raise InputError(
            f"{where}: {len(problems)} setting(s) conflict with the spec:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )

    fills: dict[str, Any] = {path: value for path, (value, _) in derived.items()}
    if hidden_size is not None:
        # The Hugging Face Trainer's choices for these ZeRO "auto" values.
        fills["zero_optimization.reduce_bucket_size"] = hidden_size * hidden_size
        fills["zero_optimization.stage3_prefetch_bucket_size"] = int(
            0.9 * hidden_size * hidden_size
        )
        fills["zero_optimization.stage3_param_persistence_threshold"] = 10 * hidden_size

    config: dict[str, Any] = {}
    for dotted, (value, _) in derived.items():
        _set(config, dotted, value)
    if ds.offload_optimizer:
        # nlhf passes a torch optimizer; DeepSpeed refuses it under offload unless told.
        config["zero_force_ds_cpu_optimizer"] = False
    return _merge(config, _fill_auto(user, "", fills))


# ---------------------------------------------------------------------------- launch
def parse_local_rank(argv: Sequence[str]) -> tuple[int | None, list[str]]:
    """Strip the launcher's ``--local_rank=N`` / ``--local_rank N`` (or ``--local-rank``)
    from ``argv``; returns ``(rank or None, remaining args)``. Falls back to ``LOCAL_RANK``."""
    rank: int | None = None
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in ("--local_rank", "--local-rank"):
            if not eq:
                if i + 1 >= len(args):
                    raise InputError(f"{name} needs a value, e.g. {name}=0")
                value = args[i + 1]
                i += 1
            try:
                rank = int(value)
            except ValueError:
                raise InputError(
                    f"{name}: expected a non-negative integer, got {value!r}"
                ) from None
            if rank < 0:
                raise InputError(f"{name}: expected a non-negative integer, got {rank}")
        else:
            rest.append(arg)
        i += 1
    if rank is None and os.environ.get("LOCAL_RANK", "").isdigit():
        rank = int(os.environ["LOCAL_RANK"])
    return rank, rest


def world_size_from_env() -> int:
    """``WORLD_SIZE`` as set by torchrun / the deepspeed launcher (1 when unset)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(raw)
    except ValueError:
        raise InputError(f"WORLD_SIZE={raw!r} is not an integer; unset it or fix it") from None
    if size < 1:
        raise InputError(f"WORLD_SIZE={size} must be >= 1")
    return size


def launch_env(cpu: bool = True) -> dict[str, str]:
    """Environment variables for a DeepSpeed launch (``DS_ACCELERATOR=cpu`` on CPU)."""
    return {"DS_ACCELERATOR": "cpu"} if cpu else {}


def dist_backend() -> str:
    """``gloo`` on CPU (``DS_ACCELERATOR=cpu`` or no CUDA), ``nccl`` otherwise."""
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        return "gloo"
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def launch_command(
    spec_path: str, nproc: int, extra: Sequence[str] = (), nodes: Nodes | None = None
) -> list[str]:
    """The command line that runs ``spec_path`` on ``nproc`` processes of this machine:
    torch's elastic launcher (``torchrun``) starting :mod:`nlhf_torch.launch` in each;
    ``extra`` (``--set``, ``--output``, ``--resume``) is passed on to every process.

    One machine: ``--standalone`` (a local rendezvous on a free port). With ``nodes``
    (``nlhf run --nnodes N --node-rank R --master-addr H --master-port P``): the static
    rendezvous, ``--rdzv-backend=static``, at ``H:P``. Static, not c10d, because it gives
    node R the global ranks R·nproc … R·nproc + nproc − 1 (c10d ignores ``--node-rank``
    and numbers the nodes in the order they arrive), so global rank 0, the only writer,
    runs on node 0, the node that claimed the output directory; the price is a fixed
    node count (no elastic scaling, which a DeepSpeed run cannot use anyway)."""
    if nproc < 1:
        raise InputError(f"--nproc must be >= 1, got {nproc}")
    if nodes is None or not nodes.explicit:
        where = ["--standalone", f"--nproc_per_node={nproc}"]
    else:
        where = [
            f"--nnodes={nodes.count}",
            f"--node-rank={nodes.rank}",
            f"--nproc-per-node={nproc}",
            "--rdzv-backend=static",
            f"--master-addr={nodes.master_addr}",
            f"--master-port={nodes.master_port}",
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        "-m",
        "nlhf_torch.launch",
        spec_path,
        *extra,
    ]


def single_process_env() -> None:
    """Rendezvous variables for a lone DeepSpeed process started without a launcher
    (``nlhf run`` with ``--nproc 1``), so ``init_distributed`` needs no MPI discovery."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }.items():
        os.environ.setdefault(key, value)


# ---------------------------------------------------------------------------- engine
@dataclass
class Engine:
    """A DeepSpeed engine with what the trainers need of it (:func:`init_engine`)."""

    engine: Any
    optimizer: Any
    scheduler: Any
    rank: int
    world_size: int
    zero_stage: int

    @property
    def module(self) -> Any:
        return self.engine.module

    def describe(self) -> dict[str, Any]:
        return {"engine": "deepspeed", "zero_stage": self.zero_stage, "world_size": self.world_size}

    def gathered(self, params: Sequence[Any] | None = None) -> Any:
        """Context in which ``params`` (default: all of the module's) are whole on every rank
        (ZeRO-3; a no-op otherwise). Collective: every rank must enter it."""
        import deepspeed

        return deepspeed.zero.GatheredParameters(
            list(self.module.parameters()) if params is None else list(params),
            modifier_rank=None,
            enabled=self.zero_stage == 3,
        )

    def all_reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        """Sum (or max) of ``values`` over the ranks, in float64."""
        import torch

        t = torch.tensor(list(values), dtype=torch.float64)
        reduce_op = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}
        torch.distributed.all_reduce(t, op=reduce_op[op])
        return t.tolist()

    def save(self, final: Path, write: Callable[[Path], None], tag: str) -> None:
        """Write the checkpoint directory ``final`` atomically: rank 0 makes the temp dir,
        every rank writes its DeepSpeed shards to ``deepspeed/<tag>`` in it, rank 0 calls
        ``write(tmp)`` with the parameters gathered (consolidated weights, trainer state),
        then renames it into place once every rank is done."""
        import torch

        from nlhf_torch.checkpoint import DEEPSPEED_DIR

        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_directory(final)) if self.rank == 0 else None
            shared: list[Any] = [None if tmp is None else str(tmp)]
            torch.distributed.broadcast_object_list(shared, src=0)
            self.engine.save_checkpoint(str(Path(shared[0]) / DEEPSPEED_DIR), tag=tag)
            with self.gathered():
                if tmp is not None:
                    write(tmp)
            torch.distributed.barrier()  # every rank's shards are on disk before the rename
        torch.distributed.barrier()

    def load(self, saved: Mapping[str, Any] | None, path: Path) -> None:
        """``engine.load_checkpoint`` of checkpoint ``path`` (``saved``: the ``distributed``
        entry of its trainer state) after checking the ZeRO stage and world size match."""
        from nlhf_torch.checkpoint import DEEPSPEED_DIR

        if saved is None:
            raise NLHFError(
                f"--resume: checkpoint {path} was written by a single-process run and holds "
                "no DeepSpeed state; resume it without the `distributed` section (or start a "
                "new DeepSpeed run from its weights)"
            )
        now = self.describe()
        if any(saved.get(k) != now[k] for k in ("zero_stage", "world_size")):
            raise NLHFError(
                f"--resume: checkpoint {path} was written by {describe_run(saved)} but this "
                f"run is {describe_run(now)}; resume with distributed.zero_stage = "
                f"{saved.get('zero_stage')} on {saved.get('world_size')} processes (--nproc)"
            )
        tag = str(saved.get("tag"))
        ds_dir = Path(path) / DEEPSPEED_DIR
        if not (ds_dir / tag).is_dir():
            raise NLHFError(
                f"--resume: checkpoint {path} has no DeepSpeed state {ds_dir / tag}; it is "
                "incomplete: delete it to resume from an earlier checkpoint"
            )
        loaded, _ = self.engine.load_checkpoint(
            str(ds_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if loaded is None:
            raise NLHFError(f"--resume: DeepSpeed could not load {ds_dir / tag}")


def describe_run(saved: Mapping[str, Any] | None) -> str:
    """``"DeepSpeed ZeRO-2 on 2 processes"`` (or ``"a single process"``)."""
    if not saved:
        return "a single process"
    return f"DeepSpeed ZeRO-{saved.get('zero_stage')} on {saved.get('world_size')} processes"


def env_rank() -> int:
    """This process's global rank from the launcher's ``RANK`` (0 when unset)."""
    raw = os.environ.get("RANK", "0")
    return int(raw) if raw.isdigit() else 0


def init_engine(
    spec: RunSpec, model: Any, params: Sequence[Any], optimizer: Any, scheduler: Any
) -> Engine:
    """Join the process group (gloo on CPU) and wrap ``model``, the torch ``optimizer``
    and the LR ``scheduler`` in a DeepSpeed engine configured by
    :func:`build_deepspeed_config` (ZeRO stage from ``distributed.zero_stage``; a given
    ``distributed.micro_batch_size`` must equal batch_size / (world size × grad_accum))."""
    deepspeed = require_deepspeed()
    single_process_env()
    import torch

    ds = spec.distributed
    if not isinstance(ds, DeepSpeedSpec):
        raise InputError(f"distributed.engine: {ds.engine!r} is not DeepSpeed")
    world = world_size_from_env()
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    config = build_deepspeed_config(spec, world, hidden_size=hidden)
    # torch SGD/Adam/AdamW update element-wise, so ZeRO may shard any of them
    config.setdefault("zero_allow_untested_optimizer", True)
    deepspeed.init_distributed(dist_backend=dist_backend())
    rank, size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if size != world:
        raise NLHFError(f"WORLD_SIZE={world} but the process group has {size}")
    engine, ds_optimizer, _, ds_scheduler = deepspeed.initialize(
        model=model,
        model_parameters=list(params),
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=config,
    )
    return Engine(
        engine=engine,
        optimizer=ds_optimizer,
        scheduler=ds_scheduler if ds_scheduler is not None else scheduler,
        rank=rank,
        world_size=size,
        zero_stage=ds.zero_stage,
    )
