"""Typed run configuration: dataclasses, YAML round trip, dotted command-line overrides.

A run is described by one :class:`RunConfig` (sections ``model``, ``data``, ``optim``,
``train``, ``eval``, ``checkpoint``, ``log``). It is read from YAML, then ``key.sub=value``
overrides are applied (values parsed as YAML, so ``optim.lr=3e-4``, ``train.compile=true`` and
``model.connection={kind: dhc, n_streams: 4}`` all work), then every value is checked against
the field's type. ``model: {preset: cpu-6x256, ...}`` starts from a named preset of
:mod:`hyperfrac.models.presets` and replaces the listed fields. The resolved config (no preset
key, every field explicit) is what ``--dry-run`` prints and what every run folder and
checkpoint stores. Building a :class:`RunConfig` (:func:`from_dict`, so :func:`load_config` and
``--dry-run`` too) range-checks every value (:data:`RANGES`, :data:`CHOICES`, the connection
spec with :func:`hyperfrac.connections.validate_spec`): a config that loads never fails later on
a bad value. Field docstrings (the string under each field) are the documentation, ranges included.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from hyperfrac.connections.functional import KERNEL_BACKENDS
from hyperfrac.data.prepare import CORPORA
from hyperfrac.models.lm import STREAM_HEADS, LMConfig, MoEConfig
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
    textdir (checked when it names the folder: text data without ``path``)."""
    vocab_size: int = 8192
    """BPE vocabulary of the dataset (its folder is ``<corpus>-bpe<vocab_size>``); >= 258."""
    path: str | None = None
    """Prepared dataset folder (not empty); None = ``<cache>/datasets/<corpus>-bpe<vocab_size>``."""
    seq_len: int = 256
    """Tokens per training sequence; >= 1 and <= ``model.max_seq_len`` (text)."""

    def validate(self) -> None:
        _check_values(self, "data")
        if self.path == "":
            raise ValueError("data.path='' is empty; give a prepared dataset folder or null")
        if self.kind == "text" and self.path is None:
            _check_choice("data.corpus", self.corpus, CORPORA)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate; finite, > 0."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas; each in [0, 1)."""
    eps: float = 1e-8
    """AdamW epsilon; finite, > 0."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (not static connection params, norms, scales); >= 0."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value, >= 0; 0 = no clipping (norm still logged)."""
    schedule: str = "cosine"
    """cosine | wsd (warmup-stable-decay) | constant; all with linear warmup."""
    warmup_steps: int = 100
    """Linear warmup from 0 to ``lr`` over this many steps; >= 0 (a warmup as long as
    ``train.steps`` or longer is allowed: the run then ends before reaching ``lr``)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr`` (cosine and wsd); in [0, 1]."""
    decay_fraction: float = 0.2
    """wsd: fraction of the steps spent in the final linear decay; in [0, 1]."""

    def validate(self) -> None:
        _check_values(self, "optim")
        for i, b in enumerate(self.betas):
            Range(0, 1, hi_open=True).check(f"optim.betas[{i}]", b, "e.g. [0.9, 0.95]")


@dataclass
class TrainConfig:
    steps: int = 1000
    """Optimizer steps of the full run (the schedule spans these); >= 1."""
    stop_at: int | None = None
    """Stop (and checkpoint) after this step although ``steps`` is larger; resume later. None or
    >= 1 (a value >= ``steps`` has no effect)."""
    batch_size: int = 16
    """Sequences per micro-batch per rank; >= 1."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; >= 1. Tokens/step: batch_size*seq_len*grad_accum*ranks."""
    precision: str = "fp32"
    """fp32 | bf16 (autocast; fp32 master weights and optimizer state)."""
    compile: bool = False
    """torch.compile each transformer block (inductor)."""
    fp32_stream_state: bool = False
    """Keep the connections' stream state in fp32 under ``precision: bf16`` (by default it
    follows the training precision, as in DeepSeek-V4; coefficients and mixing are fp32
    either way): :func:`hyperfrac.connections.fp32_stream_state`."""
    connection_kernels: str = "eager"
    """eager (the connection kernels as eager torch ops) | compiled (the same kernels fused by
    inductor, each compiled once on first use, while the model stays eager:
    :func:`hyperfrac.connections.compiled_kernels`; no effect with ``compile``)."""
    activation_checkpointing: bool = False
    """Recompute every block in the backward pass instead of keeping its activations
    (``torch.utils.checkpoint``, per block; language models). Composes with a connection's own
    ``recompute``; gradients are those without it, at the cost of recomputing each block."""
    parallel: str = "ddp"
    """How several processes (``torchrun --nproc_per_node=N``) share the work: ddp (each rank
    holds the whole model, gradients all-reduced) | fsdp (FSDP2: ``fully_shard`` on every block
    and on the root, so parameters, gradients and optimizer state are sharded over the ranks).
    Ignored in a single process."""
    device: str = "auto"
    """auto (cuda if available, else cpu) | cpu | cuda | cuda:N (any device torch can parse)."""
    threads: int | None = None
    """torch.set_num_threads on CPU; None keeps torch's default; else >= 1."""
    on_nonfinite: str = "skip"
    """On a NaN/inf loss or grad norm: skip (drop the update, log it) | raise (stop, error)."""
    max_skipped_steps: int = 10
    """Stop with an error after more than this many consecutive skipped steps; >= 0."""
    spike_window: int = 128
    """Loss-spike monitor: number of recent losses in the rolling statistics; >= 2."""
    spike_sigma: float = 6.0
    """A loss above mean + spike_sigma * std of the window is logged as a spike; finite, > 0."""
    spike_min_history: int = 20
    """Losses needed before the spike monitor flags anything; in [2, spike_window]."""

    def validate(self) -> None:
        _check_values(self, "train")
        if self.spike_min_history > self.spike_window:
            raise ValueError(
                f"train.spike_min_history={self.spike_min_history} exceeds train.spike_window="
                f"{self.spike_window}, so no spike is ever flagged; lower one or raise the other"
            )
        try:
            self.device == "auto" or torch.device(self.device)
        except (RuntimeError, ValueError):
            msg = f"train.device={self.device!r} is no torch device; use auto, cpu, cuda or cuda:N"
            raise ValueError(msg) from None


@dataclass
class EvalConfig:
    interval: int = 200
    """Validate every this many steps (and at the end); 0 = only at the end; >= 0."""
    batch_size: int = 16
    """Sequences per validation batch; >= 1."""
    max_batches: int | None = None
    """Validation batches per evaluation (the first ``max_batches * batch_size`` windows or
    images, shared by the ranks); None = the whole validation split; else >= 1."""


@dataclass
class CheckpointConfig:
    interval: int = 500
    """Checkpoint every this many steps, >= 0 (and always at the end or at ``train.stop_at``)."""
    keep: int = 2
    """Keep the last k complete checkpoints; >= 1."""
    resume: str = "auto"
    """auto (latest complete checkpoint of the run if any) | never | PATH of a checkpoint."""
    safetensors: bool = True
    """Also export the model weights as ``model.safetensors`` in every checkpoint (full format
    only; ``hyperfrac export`` makes safetensors from either format)."""
    format: str = "auto"
    """full (rank 0 writes whole ``torch.save`` files) | sharded (``torch.distributed.checkpoint``:
    every rank writes its shards; resumable on any number of processes, with or without FSDP) |
    auto (sharded when ``train.parallel=fsdp``, else full)."""

    def validate(self) -> None:
        _check_values(self, "checkpoint")
        near = difflib.get_close_matches(self.resume, ("auto", "never"), n=1, cutoff=0.75)
        typo = near != [self.resume] and (near or not self.resume)  # and not a real path:
        if typo and not Path(self.resume).exists():
            raise ValueError(
                f"checkpoint.resume={self.resume!r} is neither auto, never nor an existing "
                "checkpoint folder; " + (f"did you mean {near[0]!r}?" if near else "give one")
            )


@dataclass
class LogConfig:
    interval: int = 10
    """Console line and metrics.jsonl record every this many steps; >= 1."""
    progress: str = "auto"
    """Progress bar: auto (only on a terminal) | always | never."""
    tensorboard: bool = False
    """Also write TensorBoard events (needs the ``tensorboard`` package)."""
    wandb: str = "disabled"
    """Also log to Weights & Biases (W&B's mode names): disabled | online | offline (writes
    ``run_dir/wandb``, no network; ``wandb sync`` uploads later). Needs
    ``pip install 'hyperfrac[wandb]'``. The W&B run is named after the run folder; the
    project is ``$WANDB_PROJECT``, else ``hyperfrac``."""


@dataclass
class RunConfig:
    name: str = "run"
    """Run name; the run folder is ``out_dir/name``, so one plain folder name (no ``/``, ``\\``,
    ``.`` or ``..``)."""
    out_dir: str = "runs"
    """Parent folder of run folders."""
    seed: int = 0
    """Seed for init and data order; in [0, 2**32)."""
    model: LMConfig | ViTConfig = field(default_factory=LMConfig)
    """Decoder LM (fields of :class:`hyperfrac.models.LMConfig`; ``preset:`` to start from one);
    with an image ``data.kind`` a ViT (fields of :class:`hyperfrac.models.ViTConfig`). Ranges in
    :data:`RANGES`; ``connection`` is checked by :func:`hyperfrac.connections.validate_spec`."""
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
        """Check every value (each section's ranges and choices, then what spans sections)."""
        _check_run_name(self.name)
        _check_choice("data.kind", self.data.kind, ("text", *IMAGE_KINDS))
        image = self.data.kind in IMAGE_KINDS
        if image != isinstance(self.model, ViTConfig):
            raise ValueError(
                f"data.kind={self.data.kind!r} needs a "
                + ("ViT (ViTConfig) model" if image else "language model (LMConfig)")
            )
        moe = None if image else self.model.moe
        for where, sec in (("", self), ("model", self.model), ("model.moe", moe),
                           ("eval", self.eval), ("log", self.log)):
            if sec is not None:
                _check_values(sec, where)
        for section in (self.data, self.optim, self.train, self.checkpoint):
            section.validate()
        if moe is not None and moe.top_k > moe.n_experts:
            raise ValueError(f"model.moe.top_k={moe.top_k} exceeds model.moe.n_experts="
                             f"{moe.n_experts}; choose top_k <= n_experts")
        if not image and self.data.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len="
                f"{self.model.max_seq_len}; raise model.max_seq_len or lower data.seq_len"
            )
        self.model.validate()  # shape rules, and model.connection by connections.validate_spec


# ------------------------------------------------------------------------------- value checks


@dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric field (None = unbounded); floats must also be finite."""

    lo: float | None = None
    hi: float | None = None
    hi_open: bool = False
    lo_open: bool = False

    def check(self, key: str, v: float, fix: str, null: str = "") -> None:
        """Raise a ValueError naming ``key``, the interval and ``fix`` unless ``v`` is inside."""
        lo_ok = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        hi_ok = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        if not (lo_ok and hi_ok and (not isinstance(v, float) or math.isfinite(v))):
            finite = "a finite number " if isinstance(v, float) else ""
            raise ValueError(f"{key}={v!r} must be {finite}{self.text()}{null}; {fix}")

    def text(self) -> str:
        """``in [0, 1)``, ``>= 1``, ``> 0``: the interval as the error messages spell it."""
        lo, hi = (f"{x:g}" if isinstance(x, float) else str(x) for x in (self.lo, self.hi))
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"in {left}{lo}, {hi}{right}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        return f"{'<' if self.hi_open else '<='} {hi}"


_GE0, _GE1, _GT0, _FRACTION = Range(0), Range(1), Range(0, lo_open=True), Range(0, 1)
RANGES: dict[type, dict[str, Range]] = {
    RunConfig: {"seed": Range(0, 2**32, hi_open=True)},
    DataConfig: {"vocab_size": Range(258), "seq_len": _GE1},
    OptimConfig: {"lr": _GT0, "eps": _GT0, "weight_decay": _GE0, "grad_clip": _GE0,
                  "warmup_steps": _GE0, "min_lr_ratio": _FRACTION, "decay_fraction": _FRACTION},
    TrainConfig: {"steps": _GE1, "stop_at": _GE1, "batch_size": _GE1, "grad_accum": _GE1,
                  "threads": _GE1, "max_skipped_steps": _GE0, "spike_window": Range(2),
                  "spike_sigma": _GT0, "spike_min_history": Range(2)},
    EvalConfig: {"interval": _GE0, "batch_size": _GE1, "max_batches": _GE1},
    CheckpointConfig: {"interval": _GE0, "keep": _GE1},
    LogConfig: {"interval": _GE1},
    LMConfig: {"vocab_size": _GE1, "dim": _GE1, "n_layers": _GE1, "n_heads": _GE1,
               "n_kv_heads": _GE1, "mlp_hidden": _GE1, "multiple_of": _GE1, "max_seq_len": _GE1,
               "rope_theta": _GT0, "norm_eps": _GT0, "final_norm_eps": _GT0, "init_std": _GE0},
    ViTConfig: {"image_size": _GE1, "patch_size": _GE1, "in_channels": _GE1, "num_classes": _GE1,
                "dim": _GE1, "n_layers": _GE1, "n_heads": _GE1, "mlp_hidden": _GE1,
                "norm_eps": _GT0, "init_std": _GE0},
    MoEConfig: {"n_experts": _GE1, "top_k": _GE1, "expert_hidden": _GE1,
                "capacity_factor": _GT0, "lb_loss_weight": _GE0, "z_loss_weight": _GE0},
}
"""Allowed range of every numeric field, by section class (None is always allowed)."""
CHOICES: dict[type, dict[str, tuple[str, ...]]] = {
    OptimConfig: {"schedule": ("cosine", "wsd", "constant")},
    TrainConfig: {"precision": PRECISIONS, "on_nonfinite": ("skip", "raise"),
                  "parallel": ("ddp", "fsdp"), "connection_kernels": KERNEL_BACKENDS},
    CheckpointConfig: {"format": ("auto", "full", "sharded")},
    LogConfig: {"progress": ("auto", "always", "never"),
                "wandb": ("disabled", "online", "offline")},
    LMConfig: {"stream_head": STREAM_HEADS},
}
"""Allowed words of every enumerated string field, by section class."""


def _did_you_mean(value: str, allowed: Any) -> str:
    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" — did you mean {near[0]!r}?" if near else ""


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r}; choose one of {allowed}{_did_you_mean(value, allowed)}")


def _check_values(obj: Any, where: str) -> None:
    """Range- and choice-check the fields of one section against :data:`RANGES`/:data:`CHOICES`;
    the fix an error suggests is the field's default."""
    defaults = {f.name: f.default for f in dataclasses.fields(obj)}
    hints, prefix = typing.get_type_hints(type(obj)), f"{where}." if where else ""
    for name, rng in RANGES.get(type(obj), {}).items():
        value, key = getattr(obj, name), prefix + name
        if value is not None:
            default = yaml.safe_dump(defaults[name], default_flow_style=True).split("\n")[0]
            null = " or null" if type(None) in typing.get_args(hints[name]) else ""
            rng.check(key, value, f"e.g. {key}={default} (the default)", null)
    for name, allowed in CHOICES.get(type(obj), {}).items():
        _check_choice(prefix + name, getattr(obj, name), allowed)


def _check_run_name(name: str) -> None:
    """A run name is one folder name inside ``out_dir``: it cannot be empty or climb out."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(
            f"name={name!r} must be one plain folder name (no '/', '\\\\', '.' or '..'), since "
            "the run folder is out_dir/name; put the parent folder in out_dir instead"
        )


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
    if tp is bool and not isinstance(value, bool):
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
    if tp is str and not isinstance(value, str):
        raise TypeError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) dict, type-checking every field; a
    :class:`RunConfig` is also range-checked (:meth:`RunConfig.validate`)."""
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
        _check_choice("data.kind", kind, ("text", *IMAGE_KINDS))
        hints["model"] = ViTConfig if kind in IMAGE_KINDS else LMConfig
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        hint = _did_you_mean(unknown[0], names) if len(unknown) == 1 else ""
        raise KeyError(
            f"unknown key(s) {unknown} in {where or cls.__name__}; valid keys: {sorted(names)}"
            + hint
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    obj = cls(**kwargs)
    if cls is RunConfig:  # the whole run: every value checked here, once
        obj.validate()
    return obj


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
    return from_dict(RunConfig, data)


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (loadable by :func:`load_config`)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


__all__ = [
    "CheckpointConfig", "DataConfig", "EvalConfig", "LMConfig", "LogConfig", "MoEConfig",
    "OptimConfig", "RunConfig", "TrainConfig", "apply_overrides", "dump_config", "from_dict",
    "load_config", "to_dict",
]
