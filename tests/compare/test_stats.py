"""The comparison's statistics against independent values: tabulated t quantiles, closed forms,
scipy.stats (when installed) to 1e-8, Holm by hand, and the convergence interpolation on
synthetic curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hyperfrac.compare.convergence import arm_convergence, first_crossing, run_convergence
from hyperfrac.compare.stats import (
    NO_DIFFERENCE,
    SINGLE_SEED,
    ZERO_SPREAD,
    betainc,
    claim_verdict,
    holm,
    log_ratio_interval,
    t_cdf,
    t_interval,
    t_ppf,
    t_two_sided_p,
    verdict,
    window_bootstrap,
)

# t(0.975, df) from standard tables (e.g. NIST/SEMATECH e-Handbook, Table 1.3.6.7.2)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042, 100: 1.984}


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantiles_match_the_table(df: int) -> None:
    assert t_ppf(0.975, df) == pytest.approx(T975[df], abs=6e-4)
    assert t_ppf(0.025, df) == pytest.approx(-T975[df], abs=6e-4)
    assert t_cdf(t_ppf(0.975, df), df) == pytest.approx(0.975, abs=1e-12)


def test_closed_forms_for_one_and_two_degrees_of_freedom() -> None:
    for q in (0.6, 0.9, 0.975, 0.999):
        assert t_ppf(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-12)
        assert t_ppf(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-12)
    for t in (0.0, 0.3, 1.92, 12.7, 300.0):
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, abs=1e-14)
        assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-14)
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-12)  # polynomial closed form
    with pytest.raises(ValueError, match="df > 0"):
        t_ppf(0.9, 0)


def test_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 7, 10, 30, 100, 1000, 2.5):
        for q in (1e-6, 0.01, 0.1, 0.3, 0.7, 0.9, 0.95, 0.975, 0.99, 0.999):
            assert t_ppf(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-8, abs=1e-12)
        for t in (0.05, 0.5, 1.0, 1.92, 3.2, 10.0, 100.0):
            assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-8,
                                                         abs=1e-15)
            assert t_cdf(-t, df) == pytest.approx(stats.t.cdf(-t, df), rel=1e-8, abs=1e-15)


# fixed paired differences with n = 2, 3 and 5 seeds
CASES = [[-0.0338, -0.0106], [-0.03, -0.02, -0.0142], [0.1, -0.3, 0.05, 0.2, -0.01]]


@pytest.mark.parametrize("values", CASES)
def test_interval_and_p_against_an_independent_computation(values: list[float]) -> None:
    res = t_interval(values)
    n = len(values)
    mean = sum(values) / n
    se = np.std(values, ddof=1) / math.sqrt(n)
    assert res["n"] == n and res["df"] == n - 1
    assert res["mean"] == pytest.approx(mean) and res["se"] == pytest.approx(se)
    half = T975[n - 1]  # tabulated: checked without scipy too
    assert res["ci95"][0] == pytest.approx(mean - half * se, abs=6e-4 * se)
    assert res["ci95"][1] == pytest.approx(mean + half * se, abs=6e-4 * se)
    stats = pytest.importorskip("scipy.stats")
    ref = stats.ttest_1samp(values, 0.0)
    lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(values))
    assert res["p"] == pytest.approx(ref.pvalue, rel=1e-8)
    assert res["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert res["ci95"] == pytest.approx([lo, hi], rel=1e-8)


def test_two_seeds_have_one_degree_of_freedom() -> None:
    # the default report: Δ −0.0222 ± 0.0115 over 2 seeds -> ±0.146, p ≈ 0.31
    res = t_interval([-0.0222 - 0.0115, -0.0222 + 0.0115])
    assert res["df"] == 1 and res["se"] == pytest.approx(0.0115)
    assert res["ci95"][1] - res["mean"] == pytest.approx(12.706 * 0.0115, rel=1e-4)
    assert res["p"] == pytest.approx(0.305, abs=0.002)
    assert verdict(res, higher_is_better=False) == NO_DIFFERENCE


def test_verdicts_follow_the_interval() -> None:
    one = t_interval([-0.5])
    assert one["se"] is None and one["ci95"] is None and one["p"] is None and one["df"] == 0
    assert verdict(one, higher_is_better=False) == SINGLE_SEED
    assert verdict(t_interval([]), higher_is_better=False) is None
    low = t_interval([-0.03, -0.02, -0.025])  # interval below 0
    assert low["ci95"][1] < 0
    assert verdict(low, higher_is_better=False) == "better"
    assert verdict(low, higher_is_better=True) == "worse"
    same = t_interval([0.1, 0.1])  # no spread: no interval, no p, and the verdict says why
    assert same["ci95"] is None and same["p"] is None and same["t"] is None
    assert same["sd"] == 0.0 and same["mean"] == pytest.approx(0.1)
    assert verdict(same, higher_is_better=True) == ZERO_SPREAD
    assert verdict(t_interval([0.0, 0.0]), higher_is_better=True) == NO_DIFFERENCE


def test_claim_verdicts() -> None:
    sig = {"mean": -0.02, "ci95": [-0.03, -0.01]}
    ns = {"mean": -0.02, "ci95": [-0.05, 0.01]}
    assert claim_verdict(-0.03, sig) == "agrees" and claim_verdict(0.01, sig) == "disagrees"
    assert claim_verdict(-0.03, ns) == "same sign, not significant"
    assert claim_verdict(0.03, ns) == "opposite sign, not significant"
    assert claim_verdict(-0.03, {"mean": -0.02, "ci95": None}) == SINGLE_SEED
    assert claim_verdict(None, sig) == "n/a"


def test_holm_by_hand() -> None:
    # sorted p 0.01, 0.02, 0.04 -> 3*0.01, max(.03, 2*.02), max(.04, 1*.04)
    assert holm([0.04, 0.01, None, 0.02]) == pytest.approx([0.04, 0.03, None, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_log_ratio_interval_is_symmetric_on_the_log_scale() -> None:
    res = log_ratio_interval([2.0, 0.5, 1.0])
    assert res["mean"] == pytest.approx(1.0) and res["ci95"][0] * res["ci95"][1] == pytest.approx(1)
    assert log_ratio_interval([1.5])["ci95"] is None


def test_window_bootstrap() -> None:
    rng = np.random.default_rng(0)
    nbytes = rng.integers(300, 500, 200).astype(float)
    base = [{"nll": list(nbytes * 0.7 * rng.uniform(0.8, 1.2, 200)), "bytes": list(nbytes)}
            for _ in range(3)]
    arm = [{"nll": list(np.asarray(b["nll"]) * 0.98), "bytes": list(nbytes)} for b in base]
    diff = window_bootstrap(arm, base, resamples=500)
    point = np.mean([np.sum(a["nll"]) / np.sum(nbytes) / math.log(2)
                     - np.sum(b["nll"]) / np.sum(nbytes) / math.log(2)
                     for a, b in zip(arm, base, strict=True)])
    assert diff["ci95"][0] < point < diff["ci95"][1] and 0 < diff["se"] < abs(point)
    assert window_bootstrap(arm, base, resamples=500) == diff  # seeded: reproducible
    own = window_bootstrap(arm, None, resamples=500)
    assert own["se"] > diff["se"]  # pairing removes most of the window-to-window variance
    assert window_bootstrap(arm, [{"nll": [1.0], "bytes": [1.0]}] * 3) is None


# ------------------------------------------------------------------------------ convergence


def test_first_crossing_on_synthetic_curves() -> None:
    x, y = [10, 20, 30, 40], [4.0, 3.0, 2.0, 1.5]
    assert first_crossing(x, y, 2.5) == pytest.approx(25.0)  # halfway between 20 and 30
    assert first_crossing(x, y, 2.0) == pytest.approx(30.0)
    assert first_crossing(x, y, 1.0) is None  # never reached
    assert first_crossing([0, 10], [1.0, 0.5], 2.0) == 0  # reached at step 0
    assert first_crossing(x, y, 5.0) == 10  # already there at the first evaluation
    assert first_crossing(x, [4.0, 2.0, 3.0, 1.0], 2.5) == pytest.approx(17.5)  # first crossing
    with pytest.raises(ValueError, match="x values"):
        first_crossing([1, 2], [1.0], 0.5)


def _analysis(tokens, bpb, rate):
    """An analyze_run-like dict: validation curve and training log at ``rate`` tokens/s."""
    train_tok = list(tokens)
    return {"curves": {
        "train": {"tokens": train_tok, "seconds": [t / rate for t in train_tok]},
        "val": {"step": list(range(1, len(tokens) + 1)), "tokens": list(tokens),
                "bpb": list(bpb), "loss": list(bpb)}}}


def test_convergence_speedups_and_equal_compute() -> None:
    toks = [100, 200, 300, 400]
    base = _analysis(toks, [4.0, 3.0, 2.5, 2.0], rate=10.0)  # 40 s in all
    fast = _analysis(toks, [3.5, 2.0, 1.8, 1.7], rate=5.0)  # per token faster, half the speed
    r = run_convergence(fast, base)
    assert r["target"] == 2.0 and r["tokens"] == pytest.approx(200) and r["base_tokens"] == 400
    assert r["seconds"] == pytest.approx(40.0) and r["base_seconds"] == pytest.approx(40.0)
    assert r["at_base_time"] == pytest.approx(2.0)  # at 40 s the arm is at token 200
    slow = _analysis(toks, [4.5, 3.5, 3.0, 2.6], rate=10.0)
    assert run_convergence(slow, base)["tokens"] is None
    conv = arm_convergence([fast, slow], [base, base])
    assert conv["tokens_to_baseline"][1] is None
    assert conv["speedup_tokens"]["not_reached"] == 1
    assert conv["speedup_tokens"]["values"] == pytest.approx([2.0])
    both = arm_convergence([fast, fast], [base, base])
    assert both["speedup_tokens"]["mean"] == pytest.approx(2.0)
    assert both["speedup_time"]["mean"] == pytest.approx(1.0)
    assert both["at_baseline_time"]["diff"]["mean"] == pytest.approx(0.0)
    quick = _analysis(toks, [3.5, 2.0, 1.8, 1.7], rate=20.0)  # finishes in 20 s
    q = run_convergence(quick, base)
    assert q["upper_bound"] and q["at_base_time"] == 1.7
