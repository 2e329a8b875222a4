"""``hyperfrac bench train``: training-step throughput and memory per connection kind.

For each connection (default: residual, DHC×4, DFC×4, mHC×4) on one model preset (default
``cpu-6x256``), a full training step (forward, backward, clip, AdamW) on random tokens is
timed. Kinds are measured in *interleaved rounds* (round r times every kind once, so slow
drifts of the machine hit all kinds alike). The ratio to the baseline (the first kind) is
paired **within each round** (tokens/s of the kind in round r over the baseline's in round r)
and summarised over rounds: median, range and a distribution-free 95 % interval of the median
(:mod:`hyperfrac.bench.rounds`). Tokens/s are reported as the median over clean rounds.

Memory, per kind:

* ``saved_mb``: bytes of the tensors autograd saves for backward during one forward (counted
  with ``torch.autograd.graph.saved_tensors_hooks``, each storage once): the activation memory,
  device independent;
* ``peak_mb``: on CUDA the peak allocated memory of a step (``max_memory_allocated``); on CPU
  the peak resident set size of a fresh subprocess that builds the model and runs two steps
  (includes the ~0.3-0.5 GB of the Python + torch runtime, identical for every kind).

Contamination check (Linux): during every timed segment the CPU time of all other processes
is read from ``/proc/stat``; the largest share of the machine they used is reported as
``max_other_cpu_share``; segments where they used more than 10 % are marked ``*``, and a round
whose kind or baseline segment is marked is left out of that kind's ratio (unless no round
is clean: then all are used and ``clean_rounds`` is 0).

The timing process keeps freed memory (:func:`hyperfrac.bench.allocator.steady_allocator`), so
no kind pays page faults for memory the allocator returned to the OS after another kind's
step; the minor page faults per timed step are reported (``minor_faults_per_step``). The
peak-RSS subprocess runs with glibc's defaults, as a training process does.

Writes JSON (``out``) and prints a table. Library entry: :func:`run_train_bench` (keyword
arguments); ``hyperfrac bench train`` maps its flags onto them.
"""

from __future__ import annotations

import contextlib
import json
import platform
import resource
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hyperfrac.bench import write_json
from hyperfrac.bench.allocator import minor_faults, steady_allocator
from hyperfrac.bench.memory import peak_live_bytes, saved_tensor_bytes
from hyperfrac.bench.rounds import CONTENDED, OtherLoad, dirty, paired_ratios, spread
from hyperfrac.connections import (
    KERNEL_BACKENDS,
    compiled_kernels,
    connection_class,
    fp32_stream_state,
    validate_spec,
)
from hyperfrac.precision import autocast as precision_autocast

DEFAULT_KINDS = "residual,dhc:4,dfc:4,mhc:4"


def parse_kind(spec: str) -> dict[str, Any]:
    """``dhc:4`` -> {kind: dhc, n_streams: 4}; ``dfc:4`` -> {kind: dfc, n_fracs: 4}: the number
    sets the kind's slot option (its ``slot_option``). Options follow after ``+``:
    ``dfc:4+recompute`` (a flag: True), ``mhc:4+sinkhorn_iters=10`` (true/false, a number or
    a word). The spec is checked at once."""
    head, *extras = spec.split("+")
    kind, _, n = head.partition(":")
    conn: dict[str, Any] = {"kind": kind}
    if n:
        option = connection_class(kind).slot_option
        if option is None:
            raise ValueError(f"{spec!r}: kind {kind!r} has no slot count; write just {kind!r}")
        try:
            conn[option] = int(n)
        except ValueError:
            raise ValueError(f"{spec!r}: {n!r} is not a slot count; write e.g. {kind}:4") from None
    for extra in extras:
        key, eq, value = extra.partition("=")
        if not key:
            raise ValueError(f"{spec!r}: empty option after '+'; write e.g. {head}+recompute")
        conn[key] = _scalar(value) if eq else True
    return validate_spec(conn)


def _scalar(text: str) -> bool | int | float | str:
    """``true``/``false``, an integer, a float, else the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def label(conn: dict[str, Any]) -> str:
    """``DHC×4`` for a kind with slots, the kind's name otherwise (``residual``); further
    options as ``+name`` (flags) or ``+name=value``."""
    option = connection_class(conn["kind"]).slot_option
    n = conn.get(option) if option else None
    name = conn["kind"].upper() + (f"×{n}" if n else "") if option else conn["kind"]
    for key, value in conn.items():
        if key not in ("kind", option):
            name += f"+{key}" if value is True else f"+{key}={value}"
    return name


@dataclass(frozen=True)
class ArmSettings:
    """What every arm (connection kind) of one benchmark shares."""

    preset: str = "cpu-6x256"
    batch_size: int = 16
    seq_len: int = 256
    precision: str = "bf16"
    compile: bool = False
    threads: int | None = None
    fp32_state: bool = False  # keep stream states fp32 under autocast (default: bf16 in bf16)
    kernels: str = "eager"  # connection kernels: eager ops, or "compiled" (fused by inductor)

    def connection_modes(self) -> contextlib.ExitStack:
        """The stream-state precision and kernel backend every step and probe runs under."""
        stack = contextlib.ExitStack()
        stack.enter_context(fp32_stream_state(self.fp32_state))
        stack.enter_context(compiled_kernels(self.kernels == "compiled"))
        return stack


class _Arm:
    """One connection kind: model, optimizer and a compiled-or-eager step function."""

    def __init__(self, conn: dict[str, Any], settings: ArmSettings, device: torch.device):
        from hyperfrac.models import build_preset, count_params
        from hyperfrac.train.config import OptimConfig
        from hyperfrac.train.optim import build_optimizer

        torch.manual_seed(0)
        self.conn, self.settings, self.device = conn, settings, device
        self.model = build_preset(settings.preset, connection=conn).to(device)
        self.params = count_params(self.model)
        self.fwd = torch.compile(self.model) if settings.compile else self.model
        self.opt = build_optimizer(self.model, OptimConfig(lr=1e-4))
        g = torch.Generator().manual_seed(1)
        V = self.model.cfg.vocab_size
        shape = (settings.batch_size, settings.seq_len)
        self.x = torch.randint(0, V, shape, generator=g).to(device)
        self.y = torch.randint(0, V, shape, generator=g).to(device)
        self.rates: list[float] = []
        self.others: list[float | None] = []
        self.faults: list[float] = []  # minor page faults per step, per round

    def clean_rates(self) -> list[float]:
        return [r for r, o in zip(self.rates, self.others, strict=True) if not dirty(o)]

    def step(self) -> None:
        ctx = precision_autocast(self.device.type, self.settings.precision)
        self.opt.zero_grad(set_to_none=True)
        with ctx, self.settings.connection_modes():
            out = self.fwd(self.x, self.y)
        (out.loss + out.aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def saved_bytes(self) -> int:
        """Bytes saved for backward by one forward (each storage counted once)."""
        ctx = precision_autocast(self.device.type, self.settings.precision)

        def forward():
            with ctx, self.settings.connection_modes():
                return self.model(self.x, self.y)  # eager: compiled graphs save differently

        return saved_tensor_bytes(forward, exclude=self.model.parameters())

    def peak_live_bytes(self) -> int:
        """Peak bytes of the tensors one training step (forward, backward, optimizer) holds
        at once beyond the parameters, the optimizer state and the batch: the step's working
        set, independent of the allocator (:func:`hyperfrac.bench.memory.peak_live_bytes`)."""
        state = [t for s in self.opt.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor)]
        before = [*self.model.parameters(), *state, self.x, self.y]
        return peak_live_bytes(self.step, before=before)


def _cpu_peak_rss_mb(conn: dict[str, Any], settings: ArmSettings) -> float:
    spec = json.dumps({"conn": conn, "settings": asdict(settings)})
    code = "from hyperfrac.train.bench import _probe_main; _probe_main()"
    res = subprocess.run(
        [sys.executable, "-c", code, spec], capture_output=True, text=True, check=True
    )
    return float(res.stdout.strip().splitlines()[-1])


def _probe_main() -> None:
    """Subprocess entry: build one arm, run two steps, print peak RSS in MB."""
    spec = json.loads(sys.argv[1])
    settings = ArmSettings(**spec["settings"])
    if settings.threads:
        torch.set_num_threads(settings.threads)
    arm = _Arm(spec["conn"], settings, torch.device("cpu"))
    for _ in range(2):
        arm.step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB


def _timed(arm: _Arm, steps: int) -> tuple[float, float | None]:
    """Seconds for ``steps`` steps, and the share of the machine's CPUs other processes
    kept busy meanwhile (None where unknown; above ~0.1 the timing is contaminated)."""
    arm.sync()
    with OtherLoad() as load:
        for _ in range(steps):
            arm.step()
        arm.sync()
    return load.wall, load.share


def check_kernels(kernels: str) -> None:
    if kernels not in KERNEL_BACKENDS:
        raise ValueError(f"kernels={kernels!r}; expected one of {', '.join(KERNEL_BACKENDS)}")


def _check_counts(**counts: tuple[Any, int]) -> None:
    """Each ``name=(value, minimum)`` must be an integer >= minimum."""
    for name, (value, minimum) in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _time_rounds(arms: list[_Arm], *, steps: int, rounds: int, tokens: int) -> None:
    """Interleaved rounds: each round times every arm once (drift hits all kinds alike)."""
    for r in range(rounds):
        for arm in arms:
            f0 = minor_faults()
            wall, others = _timed(arm, steps)
            arm.faults.append((minor_faults() - f0) / steps)
            arm.rates.append(steps * tokens / wall)
            arm.others.append(others)
        print(
            f"[bench train] round {r + 1}/{rounds}: "
            + ", ".join(
                f"{label(a.conn)} {a.rates[-1]:.0f}" + ("*" if dirty(a.others[-1]) else "")
                for a in arms
            )
            + " tok/s",
            file=sys.stderr,
        )
    n_dirty = sum(dirty(o) for a in arms for o in a.others)
    if n_dirty:
        print(
            f"[bench train] {n_dirty} timed segment(s) (*) ran while other processes used more "
            f"than {100 * CONTENDED:.0f}% of the CPUs; ratios use the rounds where neither the "
            "kind nor the baseline is marked (all rounds where none is clean: then rerun on a "
            "quiet machine)",
            file=sys.stderr,
        )


def _row(arm: _Arm, base: _Arm, *, memory: bool) -> dict[str, Any]:
    ratio = paired_ratios(arm.rates, base.rates, arm.others, base.others)
    row: dict[str, Any] = {
        "kind": label(arm.conn),
        "connection": arm.conn,
        "params": arm.params,
        "tok_per_s": statistics.median(arm.clean_rates() or arm.rates),
        "tok_per_s_rounds": arm.rates,
        "other_cpu_share_rounds": arm.others,
        "speed_ratio": ratio["median"],
        "speed_ratio_min": ratio["min"],
        "speed_ratio_max": ratio["max"],
        "speed_ratio_ci95": ratio["ci95"],
        "speed_ratio_ci_level": ratio["ci_level"],
        "speed_ratio_rounds": ratio["rounds"],
        "clean_rounds": ratio["clean_rounds"],
        "minor_faults_per_step": statistics.median(arm.faults),
    }
    if memory:
        row["saved_mb"] = arm.saved_bytes() / 2**20
        if arm.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(arm.device)
            arm.step()
            arm.sync()
            row["peak_mb"] = torch.cuda.max_memory_allocated(arm.device) / 2**20
        else:
            row["peak_mb"] = _cpu_peak_rss_mb(arm.conn, arm.settings)
            if arm.settings.kernels == "eager":  # a dispatch mode would not see inside
                row["peak_live_mb"] = arm.peak_live_bytes() / 2**20  # compiled kernels
    return row


def run_train_bench(
    *,
    preset: str = "cpu-6x256",
    kinds: str = DEFAULT_KINDS,
    batch_size: int = 16,
    seq_len: int = 256,
    steps: int = 5,
    rounds: int = 3,
    warmup: int = 2,
    precision: str = "bf16",
    compile: bool = False,
    threads: int | None = None,
    device: str = "auto",
    memory: bool = True,
    fp32_state: bool = False,
    kernels: str = "eager",
    out: str | Path = "bench_results/train.json",
) -> dict[str, Any]:
    """Time a training step of ``preset`` for each connection in ``kinds`` (``kind[:n]``,
    comma-separated; the first is the baseline of the ratios); returns the JSON written to
    ``out``. ``memory=False`` skips the saved-activation and peak-memory measurements;
    ``fp32_state`` keeps the stream states in float32 under bf16 autocast (by default they
    follow the training precision, :func:`hyperfrac.connections.fp32_stream_state`);
    ``kernels="compiled"`` runs the connection kernels fused by inductor in the eager model
    (:func:`hyperfrac.connections.compiled_kernels`)."""
    from hyperfrac.train.trainer import resolve_device

    _check_counts(batch_size=(batch_size, 1), seq_len=(seq_len, 1), steps=(steps, 1),
                  rounds=(rounds, 1), warmup=(warmup, 0))
    conns = [parse_kind(s) for s in kinds.split(",") if s]
    if not conns:
        raise ValueError(f"kinds={kinds!r} names no connection; write e.g. {DEFAULT_KINDS}")
    dev = resolve_device(device)
    if threads and dev.type == "cpu":
        torch.set_num_threads(threads)
    steady = steady_allocator()
    check_kernels(kernels)
    settings = ArmSettings(preset, batch_size, seq_len, precision, bool(compile), threads,
                           bool(fp32_state), kernels)
    arms = [_Arm(c, settings, dev) for c in conns]
    print(
        f"[bench train] {preset}, batch {batch_size}x{seq_len}, "
        f"{precision}{' compiled' if compile else ''}{', fp32 state' if fp32_state else ''}, "
        f"{kernels} kernels, "
        f"{dev}, "
        f"{torch.get_num_threads()} threads; {rounds} rounds x {steps} steps",
        file=sys.stderr,
    )
    for arm in arms:
        for _ in range(warmup):
            arm.step()
        arm.sync()
    _time_rounds(arms, steps=steps, rounds=rounds, tokens=batch_size * seq_len)
    rows = [_row(arm, arms[0], memory=memory) for arm in arms]
    base = rows[0]
    for row in rows:
        for key in ("saved_mb", "peak_mb", "peak_live_mb"):
            if key in row and key in base:
                row[key.replace("_mb", "_ratio")] = row[key] / base[key]
    result = {
        "benchmark": "train",
        **{k: v for k, v in asdict(settings).items() if k != "threads"},
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "steps": steps,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "peak_mb_meaning": (
            "cuda max_memory_allocated"
            if dev.type == "cuda"
            else "peak RSS of a fresh subprocess (includes the runtime)"
        ),
        "peak_live_mb_meaning": "peak bytes of live tensors in one step beyond parameters, "
                                "optimizer state and batch (CPU; allocator-independent)",
        "steady_allocator": steady,
        "max_other_cpu_share": max((o or 0.0 for a in arms for o in a.others), default=0.0),
        "rows": rows,
    }
    _print_table(result)
    write_json(result, out)
    return result


def _print_table(result: dict[str, Any]) -> None:
    mem = "saved_mb" in result["rows"][0]
    head = f"{'connection':<10} {'params':>10} {'tok/s':>9} {'× res [range over rounds]':>26}"
    live = mem and all("peak_live_mb" in r for r in result["rows"])
    if mem:
        head += f" {'saved MB':>9} {'× res':>6} {'peak MB':>8} {'× res':>6}"
    if live:
        head += f" {'live MB':>8} {'× res':>6}"
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        line = (
            f"{r['kind']:<10} {r['params'] / 1e6:>9.2f}M {r['tok_per_s']:>9.0f} "
            f"{spread(_ratio_stats(r)):>26}"
        )
        if mem:
            line += (
                f" {r['saved_mb']:>9.1f} {r['saved_ratio']:>6.2f} {r['peak_mb']:>8.0f} "
                f"{r['peak_ratio']:>6.2f}"
            )
        if live:
            line += f" {r['peak_live_mb']:>8.0f} {r['peak_live_ratio']:>6.2f}"
        print(line)


def _ratio_stats(row: dict[str, Any]) -> dict[str, float]:
    return {"median": row["speed_ratio"], "min": row["speed_ratio_min"],
            "max": row["speed_ratio_max"]}


def main(argv: list[str] | None = None) -> int:
    """``python -m hyperfrac.train.bench ARGS`` = ``hyperfrac bench train ARGS``."""
    from hyperfrac.cli import main as cli_main

    return cli_main(["bench", "train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
