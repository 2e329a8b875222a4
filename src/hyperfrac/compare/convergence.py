"""Convergence speed and the equal-compute view of a comparison (HC's "1.8× faster").

Both read the periodic validation curve of each run (``eval.interval`` evaluations on the
fixed ``eval.max_batches`` subset, see the presets) and the training seconds along it
(:func:`hyperfrac.analysis.analyze.curves_and_events`: logged tokens / tokens per second,
evaluation and checkpoint pauses excluded).

* **tokens to the baseline's loss**: for every seed the first point where the arm's
  validation curve reaches the *same seed's* baseline final value, linearly interpolated
  between the two evaluations around the crossing; ``None`` (shown as "not reached") when the
  arm never gets there; a curve already at or below the target at its first point counts from
  that point (an upper bound: evaluations start at ``eval.interval``). The baseline's own
  tokens follow the same rule (usually its last evaluation).
* **speed-up** = baseline tokens ÷ arm tokens per seed (> 1: faster), summarised by the
  geometric mean with a t-interval on the log scale; the same in training seconds.
* **equal compute**: the arm's validation value at the baseline's total training time of the
  same seed (interpolated); an arm that finished sooner shows its final value, flagged as an
  upper bound (it would have trained on).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hyperfrac.analysis.analyze import curve_seconds
from hyperfrac.compare.stats import log_ratio_interval, t_interval


def curve_key(curve: dict[str, Any]) -> str | None:
    """The validation quantity the convergence numbers use: ``bpb`` for a language model,
    ``loss`` (nats) otherwise; None when the curve is empty."""
    if not curve.get("step"):
        return None
    bpb = curve.get("bpb") or []
    return "bpb" if bpb and all(v is not None for v in bpb) else "loss"


def first_crossing(x: list[float], y: list[float], target: float) -> float | None:
    """The first x where the piecewise-linear curve (x, y) reaches ``y <= target``.

    Returns x[0] when the first point is already at or below the target, None when no point
    is (never reached).
    """
    if len(x) != len(y):
        raise ValueError(f"curve has {len(x)} x values but {len(y)} y values")
    for i, v in enumerate(y):
        if v <= target:
            if i == 0:
                return float(x[0])
            x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
            return float(x0 + (x1 - x0) * (y0 - target) / (y0 - y1))
    return None


def _point(curve: dict[str, Any], key: str, at: float, xs: list[float]) -> float:
    return float(np.interp(at, xs, curve[key]))


def run_convergence(arm: dict[str, Any], base: dict[str, Any]) -> dict[str, Any] | None:
    """Per-seed numbers of one arm run against the same seed's baseline run (analysis dicts)."""
    va, vb = arm["curves"].get("val"), base["curves"].get("val")
    if not va or not vb:
        return None
    key = curve_key(va)
    if key is None or curve_key(vb) != key:
        return None
    target = vb[key][-1]
    out: dict[str, Any] = {
        "metric": key, "target": target, "points": len(va["step"]),
        "tokens": first_crossing(va["tokens"], va[key], target),
        "base_tokens": first_crossing(vb["tokens"], vb[key], target),
        "seconds": None, "base_seconds": None, "at_base_time": None, "upper_bound": False,
    }
    sa, sb = curve_seconds(arm["curves"]), curve_seconds(base["curves"])
    if sa is None or sb is None:
        return out
    out["seconds"] = first_crossing(sa, va[key], target)
    out["base_seconds"] = first_crossing(sb, vb[key], target)
    t_base = sb[-1]
    if t_base >= sa[-1]:
        out.update(at_base_time=va[key][-1], upper_bound=t_base > sa[-1])
    elif t_base >= sa[0]:
        out["at_base_time"] = _point(va, key, t_base, sa)
    out["base_time"] = t_base
    return out


def _ratios(per_seed: list[dict[str, Any] | None], num: str, den: str) -> list[float | None]:
    out: list[float | None] = []
    for r in per_seed:
        if r is None or r.get(num) is None or r.get(den) is None or r[den] <= 0:
            out.append(None)
        else:
            out.append(r[num] / r[den])
    return out


def arm_convergence(arm_runs: list[dict[str, Any]], base_runs: list[dict[str, Any]]
                    ) -> dict[str, Any] | None:
    """``arms[i].convergence`` of results.json from seed-paired analysis dicts.

    ``tokens_to_baseline`` (per seed, None = not reached), ``speedup_tokens`` and
    ``speedup_time`` (``{mean, ci95, p, df, n, values, not_reached}``, geometric mean and
    log-scale interval), ``seconds_to_baseline``, and ``at_baseline_time`` (the validation
    value at the baseline's training time, its paired difference to the baseline's final
    value with interval, and which seeds are upper bounds).
    """
    per = [run_convergence(a, b) for a, b in zip(arm_runs, base_runs, strict=True)]
    if not per or all(p is None for p in per):
        return None
    sp_tok = _ratios(per, "base_tokens", "tokens")
    sp_time = _ratios(per, "base_seconds", "seconds")
    values = [None if p is None else p["at_base_time"] for p in per]
    targets = [None if p is None else p["target"] for p in per]
    diffs = [v - t if v is not None and t is not None else None
             for v, t in zip(values, targets, strict=True)]
    key = next(p["metric"] for p in per if p is not None)
    return {
        "metric": key,
        "points": [None if p is None else p["points"] for p in per],
        "target": targets,
        "tokens_to_baseline": [None if p is None else p["tokens"] for p in per],
        "seconds_to_baseline": [None if p is None else p["seconds"] for p in per],
        "speedup_tokens": {**log_ratio_interval(sp_tok),
                           "not_reached": sum(1 for p in per if p and p["tokens"] is None)},
        "speedup_time": {**log_ratio_interval(sp_time),
                         "not_reached": sum(1 for p in per if p and p["seconds"] is None)},
        "at_baseline_time": {
            "values": values,
            "upper_bound": [bool(p and p["upper_bound"]) for p in per],
            "base_time_s": [None if p is None else p.get("base_time") for p in per],
            "diff": t_interval(diffs),
        },
    }
