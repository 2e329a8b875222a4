"""What a comparison trains: arms, seeds, the shared base run config, and the papers' numbers.

A :class:`CompareSpec` is read from a preset (``configs/compare/<name>.yaml``) or built from
command-line arm strings. Every arm is the same :class:`~hyperfrac.train.RunConfig` (``base``)
with a different ``model.connection`` (plus optional per-arm overrides, e.g. a learning rate
for a stability arm), so an arm differs from the residual baseline by one config key, as in
the papers' ablations (HC §4, FC §5, mHC §5). Every arm of one seed shares data order and
initial branch weights (see :mod:`hyperfrac.compare.driver`).

Arm strings on the command line: ``[NAME=]KIND[,option=value...]`` with values parsed as YAML,
e.g. ``residual``, ``dhc4=dhc,n_streams=4``, ``dfc,n_fracs=2,tanh=false``.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hyperfrac.resources import compare_preset_names, compare_preset_path

_NAME_OK = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass
class Arm:
    """One trained variant: a connection spec and optional extra dotted overrides."""

    name: str
    """Short name used in tables and file names (letters, digits, ``_ . + -``)."""
    connection: dict[str, Any]
    """``{kind: ..., **options}`` of :func:`hyperfrac.connections.build`."""
    overrides: list[str] = field(default_factory=list)
    """Dotted overrides applied to this arm only (``optim.lr=6e-3``)."""
    label: str | None = None
    """Display name in tables and figures (default: ``name``)."""

    def __post_init__(self) -> None:
        # the one connection-spec check, when the arm is parsed (not after the first arm ran)
        from hyperfrac.connections import ConnectionSpecError, validate_spec

        try:
            self.connection = validate_spec(self.connection)
        except ConnectionSpecError as e:
            raise ConnectionSpecError(f"arm {self.name!r}: {e}") from None

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass
class PaperRef:
    """Numbers a paper reports for (some of) the arms, shown beside ours, never mixed in."""

    source: str
    """Paper, table and setting, e.g. ``HC Table 1 (OLMo-1B, 500B tokens)``."""
    metric: str
    """What the numbers are, e.g. ``V2 loss``."""
    values: dict[str, float] = field(default_factory=dict)
    """Arm name -> the paper's number."""
    deltas: bool = False
    """The values are already differences to the paper's baseline (e.g. "training loss
    -0.014"), not absolute numbers."""
    ours: str = "val_bpb"
    """Which of our metrics to show beside them (a key of the results' per-arm stats, e.g.
    val_bpb, final_train_loss, max_composite_gain, loss_spikes)."""
    notes: str = ""


@dataclass
class CompareSpec:
    """A full comparison: ``base`` run config x ``arms`` x ``seeds``."""

    name: str
    arms: list[Arm]
    base: dict[str, Any]
    """A RunConfig dict (sections model, data, optim, train, eval, checkpoint, log); ``name``,
    ``out_dir``, ``seed`` and ``model.connection`` are set per arm and seed."""
    seeds: list[int] = field(default_factory=lambda: [0])
    baseline: str | None = None
    """Arm the differences and ratios refer to (default: the first residual arm, else the
    first arm)."""
    description: str = ""
    target_minutes: float | None = None
    """The wall time the preset is sized for on a 2-core CPU (announced up front; a design
    target, not a measurement; the calibrated estimate is printed next to it)."""
    task: str = "lm"
    """lm | vision."""
    analysis: dict[str, Any] = field(default_factory=lambda: {"windows": 4, "max_tokens": 512})
    """Probe settings: validation windows fed through the model, tokens kept per layer."""
    paper: list[PaperRef] = field(default_factory=list)
    lr_sweep: list[float] | None = None
    """Learning rates to try per arm before the comparison (``--lr-sweep 1e-3,3e-3,1e-2``): one
    short run per arm and rate on the first seed; every seed of the arm then trains at the
    rate with the lowest validation bpb (:mod:`hyperfrac.compare.sweep`). None = every arm
    trains at ``base.optim.lr`` (or its own override)."""
    lr_sweep_budget: float = 0.25
    """Length of a sweep run as a fraction of the comparison's steps, in (0, 1]."""
    caveats: str = ""
    """What this comparison can and cannot show at its size; printed at the top of the
    report, before any number."""

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError("a comparison needs at least one arm")
        if self.lr_sweep is not None:
            self.lr_sweep = check_lr_sweep(self.lr_sweep)
            for a in self.arms:
                if any(o.split("=", 1)[0].strip() == "optim.lr" for o in a.overrides):
                    raise ValueError(f"arm {a.name!r} sets optim.lr itself; drop that override "
                                     "or the learning-rate sweep")
        b = self.lr_sweep_budget
        if not (isinstance(b, int | float) and 0 < b <= 1):
            raise ValueError(f"lr_sweep_budget={b!r} must be in (0, 1] (a fraction of the "
                             "comparison's steps)")
        names = [a.name for a in self.arms]
        for n in names:
            if not _NAME_OK.match(n):
                raise ValueError(f"arm name {n!r}: use letters, digits and _ . + - only")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate arm names {dup}; give each arm its own NAME=")
        if not self.seeds:
            raise ValueError("need at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"duplicate seeds {self.seeds}")
        if self.baseline is None:
            res = [a.name for a in self.arms if a.connection["kind"] == "residual"]
            self.baseline = res[0] if res else self.arms[0].name
        if self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not an arm; arms: {names}")
        if self.task not in ("lm", "vision"):
            raise ValueError(f"task={self.task!r}; choose lm or vision")

    # ------------------------------------------------------------------------------ helpers

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"no arm {name!r}; arms: {[a.name for a in self.arms]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def scaled(self, budget: float) -> CompareSpec:
        """Scale the training length by ``budget`` (steps, warmup, eval/checkpoint intervals).

        ``budget=0.5`` halves every arm's steps, ``4`` quadruples them; everything else (model,
        batch, learning rate) stays, so the arms stay comparable within one budget.
        """
        if not (budget > 0 and math.isfinite(budget)):
            raise ValueError(f"budget={budget} must be a positive number (1 = the preset)")
        out = copy.deepcopy(self)
        if budget == 1:
            return out
        tr = out.base.setdefault("train", {})
        steps = int(tr.get("steps", 1000))
        tr["steps"] = max(2, round(steps * budget))
        op = out.base.setdefault("optim", {})
        if "warmup_steps" in op:
            op["warmup_steps"] = max(1, min(round(op["warmup_steps"] * budget), tr["steps"] // 2))
        for sec in ("eval", "checkpoint"):
            s = out.base.get(sec, {})
            if s.get("interval"):
                s["interval"] = max(1, round(s["interval"] * budget))
        return out


def check_lr_sweep(lrs: Any) -> list[float]:
    """A validated list of at least two distinct positive finite learning rates."""
    try:
        vals = [float(x) for x in lrs]
    except (TypeError, ValueError):
        raise ValueError(f"lr_sweep={lrs!r}: give a list of learning rates, e.g. "
                         "1e-3,3e-3,1e-2") from None
    bad = [v for v in vals if not (v > 0 and math.isfinite(v))]
    if bad:
        raise ValueError(f"lr_sweep: learning rates must be positive and finite, got {bad}")
    if len(set(vals)) < 2 or len(set(vals)) != len(vals):
        raise ValueError(f"lr_sweep={vals}: give at least two distinct learning rates, no "
                         "repeats")
    return vals


def parse_lr_sweep(text: str) -> list[float]:
    """``"1e-3,3e-3,1e-2"`` -> ``[0.001, 0.003, 0.01]`` (validated)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--lr-sweep {text!r}: comma-separated numbers, e.g. "
                         "1e-3,3e-3,1e-2") from None
    return check_lr_sweep(vals)


def arm_hash(config_yaml: str) -> str:
    """Fingerprint of an arm's resolved config (decides whether a finished arm is reusable)."""
    return hashlib.sha256(config_yaml.encode()).hexdigest()[:16]


def parse_arm(text: str) -> Arm:
    """``[NAME=]KIND[,option=value...]`` -> :class:`Arm` (values parsed as YAML)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty arm string; expected [NAME=]KIND[,option=value...]")
    head, opts = parts[0], parts[1:]
    name, sep, kind = head.partition("=")
    if not sep:
        name, kind = "", head
    conn: dict[str, Any] = {"kind": kind}
    for o in opts:
        k, sep, v = o.partition("=")
        if not sep or not k:
            raise ValueError(f"arm {text!r}: option {o!r} is not option=value")
        conn[k] = yaml.safe_load(v)
    if not name:
        name = kind + "".join(f"-{k}{v}" for k, v in conn.items() if k != "kind")
        name = re.sub(r"[^A-Za-z0-9_.+-]", "", name)
    return Arm(name=name, connection=conn)


def _arm_from_dict(d: dict[str, Any]) -> Arm:
    d = dict(d)
    unknown = set(d) - {"name", "connection", "overrides", "label"}
    if unknown:
        raise KeyError(f"unknown arm key(s) {sorted(unknown)}; valid: name, connection, "
                       "overrides, label")
    return Arm(name=str(d["name"]), connection=dict(d["connection"]),
               overrides=list(d.get("overrides", [])), label=d.get("label"))


def spec_from_dict(data: dict[str, Any]) -> CompareSpec:
    """Build a spec from a preset's YAML mapping (unknown keys are errors)."""
    data = dict(data)
    valid = {"name", "arms", "base", "seeds", "baseline", "description", "target_minutes",
             "task", "analysis", "paper", "lr_sweep", "lr_sweep_budget", "caveats"}
    unknown = set(data) - valid
    if unknown:
        raise KeyError(f"unknown compare key(s) {sorted(unknown)}; valid: {sorted(valid)}")
    arms = [_arm_from_dict(a) if isinstance(a, dict) else parse_arm(str(a))
            for a in data.pop("arms", [])]
    paper = [PaperRef(**p) for p in data.pop("paper", []) or []]
    return CompareSpec(arms=arms, paper=paper, base=data.pop("base", {}) or {}, **data)


def available_presets() -> list[str]:
    return compare_preset_names()


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(
            out.get(k), dict) else copy.deepcopy(v)
    return out


def _read_preset(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = compare_preset_path(name_or_path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping")
    data.setdefault("name", path.stem)
    parent = data.pop("extends", None)
    if parent is not None:
        if str(parent) in seen:
            raise ValueError(f"{path}: 'extends' cycle through {parent!r}")
        # a sibling file of that name first (a user's own preset family), else a shipped one
        sibling = path.parent / f"{parent}.yaml"
        base = _read_preset(sibling if sibling.is_file() else parent, (*seen, str(parent)))
        # inherit the parent's base config (deep-merged) and analysis; nothing else
        data["base"] = _deep_merge(base.get("base", {}), data.get("base", {}) or {})
        data.setdefault("analysis", base.get("analysis", {"windows": 4, "max_tokens": 512}))
    return data


def load_spec(name_or_path: str | Path) -> CompareSpec:
    """A preset name (``default``, ``hc-table1`` ...) or a path to a compare YAML.

    ``extends: PRESET`` inherits that preset's ``base`` run config (deep-merged with this
    file's ``base``) and ``analysis``; arms, seeds and paper numbers are this file's own.
    """
    return spec_from_dict(_read_preset(name_or_path))

