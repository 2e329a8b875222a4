"""Typed run configuration: dataclasses, YAML round trip, dotted command-line overrides.

A run is described by one :class:`RunConfig` (sections ``model``, ``data``, ``optim``,
``train``, ``eval``, ``checkpoint``, ``log``). It is read from YAML, then ``key.sub=value``
overrides are applied (values parsed as YAML, so ``optim.lr=3e-4``, ``train.compile=true`` and
``model.connection={kind: dhc, n_streams: 4}`` all work), then every value is checked against
the field's type. ``model: {preset: cpu-6x256, ...}`` starts from a named preset of
:mod:`hyperfrac.models.presets` and replaces the listed fields. The resolved config (no preset
key, every field explicit) is what ``--dry-run`` prints and what every run folder and
checkpoint stores.

Field docstrings (the string under each field) are the reference documentation.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hyperfrac.models.lm import LMConfig, MoEConfig
from hyperfrac.models.presets import preset_config
from hyperfrac.models.vit import ViTConfig
from hyperfrac.precision import PRECISIONS

IMAGE_KINDS = ("fashion_mnist", "mnist5k")


@dataclass
class DataConfig:
    kind: str = "text"
    """text (token streams of a prepared corpus, decoder LM) | fashion_mnist | mnist5k (images,
    ViT: ``model`` then holds :class:`hyperfrac.models.ViTConfig` fields)."""
    corpus: str = "shakespeare"
    """Prepared corpus name (``hyperfrac data prepare --corpus``): shakespeare | lit | lit+docs |
    textdir."""
    vocab_size: int = 8192
    """BPE vocabulary of the prepared dataset (its folder is ``<corpus>-bpe<vocab_size>``)."""
    path: str | None = None
    """Prepared dataset folder; None = ``$HYPERFRAC_CACHE/datasets/<corpus>-bpe<vocab_size>``."""
    seq_len: int = 256
    """Tokens per training sequence."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (none on static connection params, norms, scales)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 = no clipping (the norm is still logged)."""
    schedule: str = "cosine"
    """cosine | wsd (warmup-stable-decay) | constant; all with linear warmup."""
    warmup_steps: int = 100
    """Linear warmup from 0 to ``lr`` over this many steps."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr`` (cosine and wsd)."""
    decay_fraction: float = 0.2
    """wsd: fraction of the steps spent in the final linear decay."""


@dataclass
class TrainConfig:
    steps: int = 1000
    """Optimizer steps of the full run (the schedule spans these)."""
    stop_at: int | None = None
    """Stop (and checkpoint) after this step although ``steps`` is larger; resume later."""
    batch_size: int = 16
    """Sequences per micro-batch per rank."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (tokens/step = batch_size*seq_len*grad_accum*ranks)."""
    precision: str = "fp32"
    """fp32 | bf16 (autocast; fp32 master weights and optimizer state)."""
    compile: bool = False
    """torch.compile the model (inductor)."""
    parallel: str = "ddp"
    """How several processes (``torchrun --nproc_per_node=N``) share the work: ddp (each rank
    holds the whole model, gradients all-reduced) | fsdp (FSDP2: ``fully_shard`` on every block
    and on the root, so parameters, gradients and optimizer state are sharded over the ranks).
    Ignored in a single process."""
    device: str = "auto"
    """auto (cuda if available, else cpu) | cpu | cuda | cuda:N."""
    threads: int | None = None
    """torch.set_num_threads on CPU; None keeps torch's default."""
    on_nonfinite: str = "skip"
    """On a NaN/inf loss or grad norm: skip (drop the update, log it) | raise (stop, error)."""
    max_skipped_steps: int = 10
    """Stop with an error after this many consecutive skipped steps."""
    spike_window: int = 128
    """Loss-spike monitor: number of recent losses in the rolling statistics."""
    spike_sigma: float = 6.0
    """A loss above mean + spike_sigma * std of the window is logged as a spike."""
    spike_min_history: int = 20
    """Losses needed before the spike monitor flags anything."""


@dataclass
class EvalConfig:
    interval: int = 200
    """Validate every this many steps (and at the end); 0 = only at the end."""
    batch_size: int = 16
    """Sequences per validation batch."""
    max_batches: int | None = None
    """Validation batches per evaluation (the first ``max_batches * batch_size`` windows or
    images, shared by the ranks); None = the whole validation split."""


@dataclass
class CheckpointConfig:
    interval: int = 500
    """Checkpoint every this many steps (and always at the end or at ``train.stop_at``)."""
    keep: int = 2
    """Keep the last k complete checkpoints."""
    resume: str = "auto"
    """auto (latest complete checkpoint of the run if any) | never | PATH of a checkpoint."""
    safetensors: bool = True
    """Also export the model weights as ``model.safetensors`` in every checkpoint (full format
    only; ``hyperfrac export`` makes safetensors from either format)."""
    format: str = "auto"
    """full (rank 0 writes whole ``torch.save`` files) | sharded (``torch.distributed.checkpoint``:
    every rank writes its shards; resumable on any number of processes, with or without FSDP) |
    auto (sharded when ``train.parallel=fsdp``, else full)."""


@dataclass
class LogConfig:
    interval: int = 10
    """Console line and metrics.jsonl record every this many steps."""
    progress: str = "auto"
    """Progress bar: auto (only on a terminal) | always | never."""
    tensorboard: bool = False
    """Also write TensorBoard events (needs the ``tensorboard`` package)."""


@dataclass
class RunConfig:
    name: str = "run"
    """Run name; the run folder is ``out_dir/name``."""
    out_dir: str = "runs"
    """Parent folder of run folders."""
    seed: int = 0
    """Seed for init and data order."""
    model: LMConfig | ViTConfig = field(default_factory=LMConfig)
    """Decoder LM (fields of :class:`hyperfrac.models.LMConfig`; ``preset:`` to start from one);
    with an image ``data.kind`` a ViT (fields of :class:`hyperfrac.models.ViTConfig`)."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def validate(self) -> None:
        choices = {
            ("optim", "schedule"): ("cosine", "wsd", "constant"),
            ("train", "precision"): PRECISIONS,
            ("train", "on_nonfinite"): ("skip", "raise"),
            ("train", "parallel"): ("ddp", "fsdp"),
            ("checkpoint", "format"): ("auto", "full", "sharded"),
            ("log", "progress"): ("auto", "always", "never"),
        }
        for (sec, key), allowed in choices.items():
            value = getattr(getattr(self, sec), key)
            if value not in allowed:
                raise ValueError(f"{sec}.{key}={value!r}; choose one of {allowed}")
        positive = {
            "train.steps": self.train.steps,
            "train.batch_size": self.train.batch_size,
            "train.grad_accum": self.train.grad_accum,
            "data.seq_len": self.data.seq_len,
            "log.interval": self.log.interval,
            "eval.batch_size": self.eval.batch_size,
        }
        for key, value in positive.items():
            if value < 1:
                raise ValueError(f"{key}={value} must be >= 1")
        image = self.data.kind in IMAGE_KINDS
        if self.data.kind not in ("text", *IMAGE_KINDS):
            raise ValueError(
                f"data.kind={self.data.kind!r}; choose one of {('text', *IMAGE_KINDS)}"
            )
        if image != isinstance(self.model, ViTConfig):
            raise ValueError(
                f"data.kind={self.data.kind!r} needs a "
                + ("ViT (ViTConfig) model" if image else "language model (LMConfig)")
            )
        if not image and self.data.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len="
                f"{self.model.max_seq_len}; raise model.max_seq_len"
            )
        self.model.validate()


# ---------------------------------------------------------------------------- dict <-> dataclass


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise TypeError(errors[0] if errors else f"{where}: got {value!r}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {value!r}")
        return copy.deepcopy(value)
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise TypeError(f"{where}: expected {len(args)} values, got {value!r}")
            return tuple(
                _coerce(v, a, f"{where}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) dict, type-checking every field."""
    data = dict(data)
    if cls in (LMConfig, ViTConfig) and "preset" in data:
        base = preset_config(data.pop("preset"))
        if not isinstance(base, cls):
            raise ValueError(
                f"{where}.preset names a {type(base).__name__} preset but this run needs a "
                f"{cls.__name__} (set data.kind: fashion_mnist for a ViT, text for an LM)"
            )
        merged = to_dict(base)
        merged.update(data)
        data = merged
    hints = typing.get_type_hints(cls)
    if cls is RunConfig:  # the model section is a ViT for image data, else a decoder LM
        kind = (data.get("data") or {}).get("kind", "text")
        if kind not in ("text", *IMAGE_KINDS):
            raise ValueError(f"data.kind={kind!r}; choose one of {('text', *IMAGE_KINDS)}")
        hints["model"] = ViTConfig if kind in IMAGE_KINDS else LMConfig
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise KeyError(
            f"unknown key(s) {unknown} in {where or cls.__name__}; valid keys: {sorted(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict of YAML-safe values (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict (values parsed as YAML)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key.sub=value")
        value = yaml.safe_load(raw) if raw.strip() else None
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """YAML file or shipped config name (or defaults when None) + dotted overrides ->
    validated :class:`RunConfig`."""
    data: dict[str, Any] = {}
    if path is not None:
        from hyperfrac.resources import run_config_path

        path = run_config_path(path)
        text = path.read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the top level must be a mapping of sections")
    data = apply_overrides(data, overrides or [])
    cfg = from_dict(RunConfig, data)
    cfg.validate()
    return cfg


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (loadable by :func:`load_config`)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "LMConfig",
    "LogConfig",
    "MoEConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "dump_config",
    "from_dict",
    "load_config",
    "to_dict",
]
