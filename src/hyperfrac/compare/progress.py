"""Progress across a whole ``hyperfrac compare``: runs done / total, steps, elapsed and ETA.

On a terminal (stderr is a TTY) one status line is redrawn in place, about once a second::

    [compare] ████████░░░░░░░░ 5/12 runs | dhc4 seed 1 step 240/400 | 6:10 elapsed, ETA 8:40

and the workers' own log lines go to ``RUN/train.log`` instead of the screen (the tail is
printed if a worker fails). Elsewhere (a log file, CI) there is no bar: the workers' lines
stream as before and a plain ``[compare] 5/12 runs done, ... ETA 8:40`` line follows each
finished run.

Steps are read from each run's ``metrics.jsonl`` (the last record's ``step``), so the same
display works for any launcher: runs in a child process here, under torchrun, or as jobs of
a cluster. The ETA is the remaining steps at the rate measured so far in this invocation,
before the first measured step the calibrated estimate (if any).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class RunProgress:
    """One training run of the comparison."""

    name: str
    run_dir: Path
    total: int
    start: int = 0
    """Steps already done when this invocation began (a resumed run)."""
    done: bool = False


def _last_step(run_dir: Path) -> int:
    """The ``step`` of the last record of ``run_dir/metrics.jsonl`` (0 if none)."""
    p = run_dir / "metrics.jsonl"
    try:
        with p.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            step = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return 0


def clock(seconds: float | None) -> str:
    """``h:mm:ss`` / ``m:ss``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Tracks every run of a comparison and draws the status line (see the module doc)."""

    WIDTH = 16

    def __init__(self, runs: list[RunProgress], *, estimate_s: float | None = None,
                 stream: TextIO | None = None, tty: bool | None = None,
                 finished: int = 0, log: Callable[[str], None] | None = None) -> None:
        self.runs = runs
        self.finished_before = finished
        """Runs of the comparison finished in an earlier invocation (counted as done)."""
        self.estimate_s = estimate_s
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.log = log or (lambda m: print(f"[compare] {m}", flush=True))
        """Where plain lines go when there is no terminal (the driver's log)."""
        self.t0 = time.perf_counter()
        self.current: str | None = None
        self._last_draw = 0.0
        self._width = 0

    # ---------------------------------------------------------------------------- numbers

    @property
    def total_runs(self) -> int:
        return self.finished_before + len(self.runs)

    @property
    def done_runs(self) -> int:
        return self.finished_before + sum(r.done for r in self.runs)

    def steps(self, r: RunProgress) -> int:
        return r.total if r.done else min(r.total, max(r.start, _last_step(r.run_dir)))

    def eta_s(self) -> float | None:
        """Remaining steps at this invocation's measured rate (else the estimate's)."""
        todo = sum(r.total - r.start for r in self.runs)
        made = sum(self.steps(r) - r.start for r in self.runs)
        left = todo - made
        if left <= 0:
            return 0.0
        elapsed = time.perf_counter() - self.t0
        if made > 0:
            return left * elapsed / made
        if self.estimate_s is not None:
            return max(0.0, self.estimate_s - elapsed)
        return None

    def line(self) -> str:
        done, total = self.done_runs, self.total_runs
        fill = round(self.WIDTH * done / total) if total else self.WIDTH
        parts = [f"{'█' * fill}{'░' * (self.WIDTH - fill)} {done}/{total} runs"]
        cur = next((r for r in self.runs if r.name == self.current), None)
        if cur is not None and not cur.done:
            parts.append(f"{cur.name} step {self.steps(cur)}/{cur.total}")
        elapsed = time.perf_counter() - self.t0
        parts.append(f"{clock(elapsed)} elapsed, ETA {clock(self.eta_s())}")
        return "[compare] " + " | ".join(parts)

    # ---------------------------------------------------------------------------- drawing

    def start(self, name: str) -> None:
        self.current = name
        if not self.tty:
            self.log(f"[{self.done_runs + 1}/{self.total_runs}] training {name}")
        self.tick(force=True)

    def finish(self, name: str) -> None:
        for r in self.runs:
            if r.name == name:
                r.done = True
        if self.tty:
            self.tick(force=True)
        else:
            done, total = self.done_runs, self.total_runs
            self.log(f"{done}/{total} runs done ({name} finished); "
                     f"{clock(time.perf_counter() - self.t0)} elapsed, ETA {clock(self.eta_s())}")

    def tick(self, force: bool = False) -> None:
        """Redraw the status line (TTY only, at most once a second unless ``force``)."""
        if not self.tty:
            return
        now = time.perf_counter()
        if not force and now - self._last_draw < 1.0:
            return
        self._last_draw = now
        text = self.line()
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def message(self, text: str) -> None:
        """A log line (through ``log``), without garbling the status line on a terminal."""
        if not self.tty:
            self.log(text)
            return
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        print(f"[compare] {text}", file=self.stream, flush=True)
        self.tick(force=True)

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
