"""Statistics of a comparison: paired t-intervals over seeds, p-values, verdicts, Holm's
correction across arms, and a bootstrap over validation windows.

Everything here is plain Python / numpy (no scipy at run time). The Student-t distribution is
computed from the regularised incomplete beta function,

    P(|T| > t) = I_x(df / 2, 1 / 2),  x = df / (df + t^2),

evaluated with the Lentz continued fraction (Numerical Recipes §6.4); quantiles are found by
bisection on the CDF to machine precision. ``tests/compare/test_stats.py`` checks both against
scipy.stats to 1e-8 and against tabulated quantiles.

Conventions (also stated in the report):

* a paired difference is arm − baseline of the same seed (same data order and initial weights);
  its 95 % interval is ``mean ± t_{0.975, n-1} · SE`` with ``SE = sd / √n`` and ``n - 1`` degrees
  of freedom; ``p`` is the two-sided paired t-test p-value of "mean difference = 0";
* the verdict follows from the interval alone: ``better`` / ``worse`` when it excludes 0 in that
  direction, ``no detectable difference`` otherwise, ``single seed — no uncertainty`` with one
  seed (no interval can be computed);
* across the arms of one comparison the primary metric's p-values are also Holm-adjusted
  (family-wise error 5 %), shown next to the per-arm verdict;
* the evaluation set's own sampling error is a bootstrap over validation windows with the
  seeds held fixed (the same resampled windows for every run, so pairs stay paired).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

LEVEL = 0.95
SINGLE_SEED = "single seed — no uncertainty"
ZERO_SPREAD = "identical across seeds — no uncertainty estimate"
NO_DIFFERENCE = "no detectable difference"
BETTER, WORSE = "better", "worse"


# ------------------------------------------------------------------------ the t distribution


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, "
                          f"x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a > 0 and b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def _check_df(df: float) -> None:
    if not df > 0:
        raise ValueError(f"the t distribution needs df > 0, got df={df}")


def _central(t: float, df: float) -> float:
    """P(|T| < |t|), accurate for small |t|: I_y(1/2, df/2) with y = t^2 / (df + t^2)."""
    if t * t < df:
        return betainc(0.5, df / 2.0, t * t / (df + t * t))
    return 1.0 - betainc(df / 2.0, 0.5, df / (df + t * t))


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (accurate in both tails)."""
    _check_df(df)
    if math.isinf(t):
        return 0.0
    if t * t < df:
        return 1.0 - betainc(0.5, df / 2.0, t * t / (df + t * t))
    return min(1.0, betainc(df / 2.0, 0.5, df / (df + t * t)))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    half = 0.5 * t_two_sided_p(t, df)
    return 1.0 - half if t > 0 else half


def t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (0 < q < 1), by
    bisection to machine precision (on P(|T| < t) near the centre, on the tail beyond)."""
    _check_df(df)
    if not 0.0 < q < 1.0:
        raise ValueError(f"a quantile needs 0 < q < 1, got q={q}")
    if q == 0.5:
        return 0.0
    sign = 1.0 if q > 0.5 else -1.0
    if 0.25 < q < 0.75:
        target = abs(2.0 * q - 1.0)

        def too_small(t: float) -> bool:
            return _central(t, df) < target
    else:
        target = 2.0 * min(q, 1.0 - q)  # the two-sided tail beyond |t|

        def too_small(t: float) -> bool:
            return t_two_sided_p(t, df) > target
    lo, hi = 0.0, 1.0
    while too_small(hi):
        lo, hi = hi, 2.0 * hi
        if hi > 1e300:
            raise ArithmeticError(f"no t quantile found for q={q}, df={df}")
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if too_small(mid) else (lo, mid)
    return sign * 0.5 * (lo + hi)


# ------------------------------------------------------------------------- paired statistics


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def t_interval(values: Sequence[float | None], level: float = LEVEL) -> dict[str, Any]:
    """Mean, SE, a two-sided t-interval and the p-value of "mean = 0" of ``values``.

    Returns ``{"mean", "se", "sd", "n", "df", "t", "ci95", "p", "values"}``; with n < 2 the
    spread, interval and p are None (nothing can be said about uncertainty from one value).
    With zero spread (every seed gives the same difference, as a discrete accuracy on few seeds
    easily does) the t-interval would be the point itself and p = 0, a certainty the data do
    not carry: interval and p are None and the verdict says so.
    """
    vals = _finite(values)
    n = len(vals)
    out: dict[str, Any] = {"mean": None, "se": None, "sd": None, "n": n, "df": max(n - 1, 0),
                           "t": None, "ci95": None, "p": None, "values": vals}
    if n == 0:
        return out
    mean = sum(vals) / n
    out["mean"] = mean
    if n < 2:
        return out
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    se = sd / math.sqrt(n)
    out.update(sd=sd, se=se)
    if se == 0.0:
        return out
    half = t_ppf(0.5 + level / 2.0, n - 1) * se
    t = mean / se
    out.update(t=t, ci95=[mean - half, mean + half], p=t_two_sided_p(t, n - 1))
    return out


def verdict(stat: dict[str, Any] | None, *, higher_is_better: bool) -> str | None:
    """``better`` / ``worse`` / ``no detectable difference`` from a paired interval, or
    ``single seed — no uncertainty``; None without data."""
    if not stat or not stat.get("n"):
        return None
    if stat.get("ci95") is None:
        return _no_uncertainty(stat)
    lo, hi = stat["ci95"]
    if lo > 0:
        return BETTER if higher_is_better else WORSE
    if hi < 0:
        return WORSE if higher_is_better else BETTER
    return NO_DIFFERENCE


def _no_uncertainty(stat: dict[str, Any]) -> str:
    """The verdict of a statistic without an interval: one seed, or seeds that all agree (the
    same nonzero difference every time; exactly zero every time is no difference)."""
    if stat.get("n", 1) < 2:
        return SINGLE_SEED
    return NO_DIFFERENCE if stat.get("mean") == 0.0 else ZERO_SPREAD


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values (None entries are skipped and stay None)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    order = sorted(idx, key=lambda i: pvalues[i])
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def log_ratio_interval(ratios: Sequence[float | None], level: float = LEVEL) -> dict[str, Any]:
    """Geometric mean of positive ratios with a t-interval computed on the log scale
    (speed-ups are multiplicative); ``p`` tests "ratio = 1"."""
    vals = [v for v in _finite(ratios) if v > 0]
    logs = t_interval([math.log(v) for v in vals], level)
    return {
        "mean": None if logs["mean"] is None else math.exp(logs["mean"]),
        "ci95": None if logs["ci95"] is None else [math.exp(c) for c in logs["ci95"]],
        "p": logs["p"], "df": logs["df"], "n": logs["n"], "values": vals,
    }


# ------------------------------------------------------------ bootstrap over evaluation windows


def window_bootstrap(arm: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]] | None, *,
                     resamples: int = 2000, seed: int = 0) -> dict[str, Any] | None:
    """Sampling error of the evaluation set: resample validation windows with replacement.

    ``arm`` (and ``base``, paired by position = seed) hold each run's per-window sums
    ``{"nll": [...], "bytes": [...]}`` over the same windows. Every resample draws one set of
    windows used for all runs; the statistic is the mean over seeds of the bits per byte (or,
    with ``base``, of the paired difference). Returns ``{"se", "ci95", "resamples"}`` (the
    percentile interval) or None when the runs do not share the same windows.
    """
    runs = list(arm) + list(base or [])
    if not runs or any(not r or not r.get("nll") for r in runs):
        return None
    W = len(runs[0]["nll"])
    if any(len(r["nll"]) != W or len(r["bytes"]) != W for r in runs) or W < 2:
        return None
    if base is not None and len(base) != len(arm):
        return None
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(W, np.full(W, 1.0 / W), size=resamples).astype(np.float64)  # (B, W)
    nll = np.array([r["nll"] for r in runs], dtype=np.float64)  # (R, W)
    nbytes = np.array([r["bytes"] for r in runs], dtype=np.float64)  # (R, W)
    bpb = (counts @ nll.T) / (counts @ nbytes.T) / math.log(2)  # (B, R)
    k = len(arm)
    stat = bpb[:, :k] - bpb[:, k:] if base is not None else bpb[:, :k]
    stat = stat.mean(axis=1)  # (B,)
    lo, hi = np.percentile(stat, [50 * (1 - LEVEL), 100 - 50 * (1 - LEVEL)])
    return {"se": float(stat.std(ddof=1)), "ci95": [float(lo), float(hi)],
            "resamples": int(resamples)}


# ------------------------------------------------------------------------ claims and metrics


def direction(metric: str) -> bool | None:
    """True when higher is better for ``metric`` (a key of the per-arm stats), False when lower
    is better, None when the metric has no better side (speed, memory, parameters...)."""
    if metric in ("val_acc",) or metric.startswith("mc:"):
        return True
    if metric in ("val_bpb", "val_loss", "final_train_loss") or metric.startswith("heldout_"):
        return False
    return None


def claim_verdict(paper_delta: float | None, ours: dict[str, Any] | None) -> str:
    """Our paired interval against the sign of a paper's difference to its baseline.

    ``agrees`` only when our 95 % interval excludes 0 on the paper's side, ``disagrees`` when
    it excludes 0 on the other side, otherwise ``same sign, not significant`` / ``opposite
    sign, not significant`` (``single seed — no uncertainty`` with one seed)."""
    if paper_delta is None or paper_delta == 0 or not ours or ours.get("mean") is None:
        return "n/a"
    if ours.get("ci95") is None:
        return _no_uncertainty(ours)
    lo, hi = ours["ci95"]
    if (lo > 0 and paper_delta > 0) or (hi < 0 and paper_delta < 0):
        return "agrees"
    if lo > 0 or hi < 0:
        return "disagrees"
    same = (ours["mean"] > 0) == (paper_delta > 0) and ours["mean"] != 0
    return "same sign, not significant" if same else "opposite sign, not significant"
