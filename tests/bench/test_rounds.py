"""Paired per-round ratios and the distribution-free interval of their median."""

import math
import statistics

import pytest

from hyperfrac.bench.rounds import CONTENDED, OtherLoad, median_interval, paired_ratios


def test_ratios_are_paired_within_rounds() -> None:
    # a machine drifting slower: each round's ratio is exactly 1.5, the ratio of the two
    # medians of separately sorted rounds would not be
    base = [100.0, 200.0, 400.0, 800.0, 1600.0]
    arm = [150.0, 300.0, 600.0, 1200.0, 2400.0]
    stats = paired_ratios(arm, base)
    assert stats["rounds"] == pytest.approx([1.5] * 5)
    assert stats["median"] == pytest.approx(1.5) and stats["min"] == stats["max"]
    assert stats["clean_rounds"] == 5


def test_dirty_rounds_are_left_out_on_either_side() -> None:
    base, arm = [10.0, 10.0, 10.0, 10.0], [20.0, 30.0, 40.0, 50.0]
    busy = CONTENDED + 0.05
    stats = paired_ratios(arm, base, [None, busy, 0.0, 0.0], [0.0, 0.0, busy, None])
    assert stats["used"] == [True, False, False, True] and stats["clean_rounds"] == 2
    assert stats["median"] == pytest.approx(3.5)  # rounds 1 and 4: ratios 2 and 5
    assert (stats["min"], stats["max"]) == (pytest.approx(2.0), pytest.approx(5.0))
    # no clean round: all are used and the report says none was clean
    stats = paired_ratios(arm, base, [busy] * 4, [0.0] * 4)
    assert stats["clean_rounds"] == 0 and stats["median"] == pytest.approx(3.5)


def test_round_counts_must_match() -> None:
    with pytest.raises(ValueError, match="same positive number of rounds"):
        paired_ratios([1.0, 2.0], [1.0])


@pytest.mark.parametrize("n", [6, 7, 9, 15, 20])
def test_median_interval_coverage_is_the_binomial_one(n: int) -> None:
    values = [float(v) for v in range(n)][::-1]
    (lo, hi), coverage = median_interval(values)
    k = int(lo) + 1  # the k-th smallest value is k - 1
    assert hi == n - k and lo <= statistics.median(values) <= hi
    tail = sum(math.comb(n, i) for i in range(k)) / 2**n
    assert coverage == pytest.approx(1 - 2 * tail) and coverage >= 0.95
    # one order statistic further in would cover less than 95 %
    tail_in = tail + math.comb(n, k) / 2**n
    assert 1 - 2 * tail_in < 0.95


def test_median_interval_needs_six_rounds_at_95_percent() -> None:
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) == (None, None)  # [min, max]: 93.75 %
    (lo, hi), coverage = median_interval([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert (lo, hi) == (1.0, 6.0) and coverage == pytest.approx(1 - 2 / 64)


def test_other_load_measures_wall_time() -> None:
    with OtherLoad() as load:
        sum(range(10_000))
    assert load.wall > 0
    assert load.share is None or 0.0 <= load.share <= 1.0
