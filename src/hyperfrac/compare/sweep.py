"""Per-arm learning rates: a short sweep before the comparison picks each arm's rate.

With ``lr_sweep: [1e-3, 3e-3, 1e-2]`` (or ``hyperfrac compare --lr-sweep 1e-3,3e-3,1e-2``)
the driver first trains every arm at every rate on the comparison's **first seed** for
``lr_sweep_budget`` × the comparison's steps (warm-up, evaluation and checkpoint intervals
scaled alike, :meth:`CompareSpec.scaled`), in ``OUT/sweep/runs/<arm>-lr<rate>-seed<s>/``.
Each arm then trains every seed at its **argmin** of the sweep runs' final validation bpb
(the trainer's last evaluation on the fixed validation subset, ``eval.max_batches`` ×
``eval.batch_size`` windows; test accuracy, maximised, for a ViT). The selection uses the
validation split only, never the held-out or out-of-distribution text the report evaluates.
A sweep run that diverged (non-finite or missing value) is never chosen; an arm whose every
sweep run diverged is an error.

Sweep runs are ordinary compare runs (fingerprinted, resumed, skipped once finished), so an
interrupted sweep continues where it stopped, and re-running a finished comparison chooses
the same rates again. The chosen rate reaches the arm as an ``optim.lr=...`` override, so it
is part of every main run's fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from hyperfrac.compare.spec import Arm, CompareSpec

METRICS = {"lm": ("val_bpb", "min"), "vision": ("val_accuracy", "max")}
"""Task -> (``summary.json`` key the sweep selects on, whether lower or higher is better)."""


def lr_tag(lr: float) -> str:
    """A file-name-safe, exact-enough form of a rate: ``0.003`` -> ``3e-03``."""
    return f"{lr:.0e}" if float(f"{lr:.0e}") == lr else f"{lr:.3e}"


def sweep_arm_name(arm: str, lr: float) -> str:
    return f"{arm}-lr{lr_tag(lr)}"


def sweep_spec(spec: CompareSpec) -> CompareSpec:
    """The comparison of the sweep: every arm × rate, first seed, shortened base config."""
    if not spec.lr_sweep:
        raise ValueError(f"{spec.name}: no lr_sweep to run")
    base = dataclasses.replace(spec, lr_sweep=None).scaled(spec.lr_sweep_budget).base
    arms = [Arm(name=sweep_arm_name(a.name, lr), connection=dict(a.connection),
                overrides=[*a.overrides, f"optim.lr={lr!r}"],
                label=f"{a.display} lr {lr:g}")
            for a in spec.arms for lr in spec.lr_sweep]
    return CompareSpec(name=f"{spec.name}-lr-sweep", arms=arms, base=base,
                       seeds=[spec.seeds[0]], task=spec.task, analysis=dict(spec.analysis),
                       baseline=sweep_arm_name(spec.baseline, spec.lr_sweep[0]))


def _value(run_dir: Path, key: str) -> float | None:
    p = run_dir / "summary.json"
    if not p.is_file():
        return None
    try:
        v = json.loads(p.read_text()).get(key)
    except json.JSONDecodeError:
        return None
    return float(v) if v is not None and math.isfinite(float(v)) else None


def choose(spec: CompareSpec, runs_dir: Path) -> dict[str, Any]:
    """Read the finished sweep runs under ``runs_dir`` and pick each arm's rate.

    Returns ``{"lrs", "seed", "steps", "metric", "goal", "values": {arm: [value per rate]},
    "chosen": {arm: lr}}`` (a value is None where that run diverged).
    """
    key, goal = METRICS[spec.task]
    sign = 1.0 if goal == "min" else -1.0
    seed = spec.seeds[0]
    values: dict[str, list[float | None]] = {}
    chosen: dict[str, float] = {}
    for a in spec.arms:
        vals = [_value(runs_dir / f"{sweep_arm_name(a.name, lr)}-seed{seed}", key)
                for lr in spec.lr_sweep or []]
        values[a.name] = vals
        ok = [(sign * v, i) for i, v in enumerate(vals) if v is not None]
        if not ok:
            raise RuntimeError(f"lr sweep: every run of arm {a.name!r} diverged or has no "
                               f"{key}; try smaller learning rates")
        chosen[a.name] = (spec.lr_sweep or [])[min(ok)[1]]
    steps = sweep_spec(spec).base.get("train", {}).get("steps")
    return {"lrs": list(spec.lr_sweep or []), "seed": seed, "steps": steps,
            "budget": spec.lr_sweep_budget, "metric": key, "goal": goal, "values": values,
            "chosen": chosen}


def with_lrs(spec: CompareSpec, chosen: dict[str, float]) -> CompareSpec:
    """``spec`` whose every arm trains at its chosen rate (an ``optim.lr`` override)."""
    arms = [dataclasses.replace(a, overrides=[*a.overrides, f"optim.lr={chosen[a.name]!r}"])
            for a in spec.arms]
    return dataclasses.replace(spec, arms=arms, lr_sweep=None)
