"""Interleaved-round bookkeeping shared by the benchmarks: neighbour load and paired ratios.

Every benchmark times all its variants once per *round* (so a slow drift of the machine hits
them alike). A ratio to the baseline is therefore formed **within each round** — variant time
of round r over baseline time of round r — and summarised over rounds (median, range, and a
95 % t-interval of the geometric mean on the log scale). A ratio of two medians taken over
separately filtered rounds would pair a fast round of one arm with a slow round of the other.
The interval is distribution free: order statistics of the per-round ratios around their
median, with the coverage the binomial distribution gives them (:func:`median_interval`).

Neighbour load: :class:`OtherLoad` reads, around a timed segment, the CPU time all *other*
processes used (Linux ``/proc/stat`` minus this process's own CPU time) as a share of the
machine. A segment where neighbours used more than :data:`CONTENDED` is *dirty*; a round is
left out of a ratio when either of its two segments is dirty (unless no round is clean, which
the report then says).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

CONTENDED = 0.1
"""Share of the machine's CPUs used by other processes above which a timing is discarded."""


def dirty(others: float | None) -> bool:
    """Whether a segment ran while neighbours used more than :data:`CONTENDED` of the CPUs."""
    return others is not None and others > CONTENDED


def busy_seconds() -> float | None:
    """CPU-seconds all processes spent busy (Linux /proc/stat), or None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """Context manager: ``with OtherLoad() as load: ...`` then ``load.wall`` (seconds) and
    ``load.share`` (share of the machine's CPUs other processes kept busy; None where
    unknown). /proc/stat counts 10 ms ticks, so on segments of a few ms the share is coarse;
    it is clamped to [0, 1]."""

    wall: float = 0.0
    share: float | None = None

    def __enter__(self) -> OtherLoad:
        self._busy, self._cpu = busy_seconds(), time.process_time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._t0
        busy, cpu = busy_seconds(), time.process_time()
        if self._busy is None or busy is None or self.wall <= 0:
            return
        others = max((busy - self._busy) - (cpu - self._cpu), 0.0)
        self.share = min(others / (self.wall * (os.cpu_count() or 1)), 1.0)


def paired_ratios(
    values: Sequence[float],
    base: Sequence[float],
    others: Sequence[float | None] | None = None,
    base_others: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """Per-round ratios ``values[r] / base[r]`` and their summary over the clean rounds.

    ``others``/``base_others``: each segment's neighbour share (None: unknown = clean). A round
    counts when both its segments are clean; if none is, all rounds are used and
    ``clean_rounds`` is 0. Returns ``{"median", "min", "max", "ci95", "ci_level", "rounds",
    "clean_rounds", "used"}``, where ``rounds`` holds every round's ratio, ``used`` marks the
    ones summarised and ``ci95`` is :func:`median_interval` of them (None with < 6 rounds).
    """
    if len(values) != len(base) or not values:
        raise ValueError(
            f"paired ratios need the same positive number of rounds, got {len(values)} and "
            f"{len(base)}"
        )
    n = len(values)
    others = list(others) if others is not None else [None] * n
    base_others = list(base_others) if base_others is not None else [None] * n
    ratios = [v / b for v, b in zip(values, base, strict=True)]
    clean = [not (dirty(o) or dirty(bo)) for o, bo in zip(others, base_others, strict=True)]
    used = clean if any(clean) else [True] * n
    chosen = [r for r, u in zip(ratios, used, strict=True) if u]
    ci, level = median_interval(chosen)
    return {
        "median": statistics.median(chosen),
        "min": min(chosen),
        "max": max(chosen),
        "ci95": ci,
        "ci_level": level,
        "rounds": ratios,
        "clean_rounds": sum(clean),
        "used": used,
    }


def median_interval(values: Sequence[float], level: float = 0.95):
    """Distribution-free interval for the median: ``[x_(k), x_(n+1-k)]`` of the sorted values
    with the largest k whose coverage ``1 - 2 P(Bin(n, 1/2) < k)`` is still >= ``level``.
    Returns (interval, its exact coverage), or (None, None) when even [min, max] covers less
    (n < 6 at 95 %)."""
    xs, n = sorted(values), len(values)
    best = None
    for k in range(1, n // 2 + 1):
        tail = sum(math.comb(n, i) for i in range(k)) / 2**n  # P(Bin(n, 1/2) < k)
        if 1 - 2 * tail < level:
            break
        best = (k, 1 - 2 * tail)
    if best is None:
        return None, None
    k, coverage = best
    return [xs[k - 1], xs[n - k]], coverage


def spread(stats: dict[str, Any], digits: int = 2) -> str:
    """``1.31 [1.28–1.35]``: the median and the range over the rounds used."""
    return (
        f"{stats['median']:.{digits}f} [{stats['min']:.{digits}f}–{stats['max']:.{digits}f}]"
    )
