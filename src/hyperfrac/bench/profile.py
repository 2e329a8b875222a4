"""``hyperfrac bench profile``: where a training step's time goes, per connection kind, and
the memory-traffic floor of the connections on this machine.

For each kind (default residual, DHC×4, DFC×4, mHC×4) one training step of a model preset
(forward, backward, clip, AdamW; bf16 autocast by default) is split into

* **connection** time: forward, every ``conn(h, branch)`` call minus the branch inside it;
  backward, every autograd node that forward created between the connection's input state and
  its outputs, other than the branch's (found by walking the graph from the connection's
  outputs, stopping at the input state's node and the branch output's node; each node timed
  with a pre-hook and a hook);
* **branch** time: the rest of forward and backward (attention, MLP, embeddings, head, loss);
* **optimizer** time: gradient clipping and ``AdamW.step``.

``torch.profiler`` then lists the aten operators of the connection regions (self CPU time).
**Bytes per token-layer** are counted in a separate step with a ``TorchDispatchMode``: every
non-view aten operator run in a connection region adds the bytes of its tensor inputs and
outputs (each operator reads its inputs once and writes its outputs once: a lower bound on
the traffic of this implementation, caches ignored). **Stream bandwidth** is measured with a
copy (``b.copy_(a)``, 2 bytes moved per byte) and a triad (``a = b + s c``, 3) over arrays far
larger than the caches. The **floor** is the speed ratio to the residual that the counted
connection bytes allow at that bandwidth if the branches and optimizer cost what the
residual's do:

    floor = t_res / (t_res + (bytes_kind - bytes_res) / bandwidth)

A ratio measured below it is lost to compute and launch overhead, not to memory traffic; the
floor of a *different* kernel design (fewer passes over the state) is the same formula with
its byte count.

    hyperfrac bench profile --preset cpu-6x256 --kinds residual,dhc:4,dfc:4,mhc:4
"""

from __future__ import annotations

import bisect
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import record_function
from torch.utils._python_dispatch import TorchDispatchMode

from hyperfrac.bench import write_json
from hyperfrac.bench.allocator import steady_allocator
from hyperfrac.connections.base import Connection
from hyperfrac.precision import autocast as precision_autocast


def stream_bandwidth(mib: int = 256, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` copy and triad bandwidth in GB/s (1e9 bytes) on float32 arrays of
    ``mib`` MiB each, with the current torch thread count."""
    n = (mib << 20) // 4
    a, b, c = torch.ones(n), torch.ones(n), torch.ones(n)
    best = {"copy": float("inf"), "triad": float("inf")}
    for _ in range(repeats):
        t0 = time.perf_counter()
        b.copy_(a)
        best["copy"] = min(best["copy"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch.add(b, c, alpha=0.5, out=a)
        best["triad"] = min(best["triad"], time.perf_counter() - t0)
    nbytes = 4 * n
    return {"copy_gbs": 2 * nbytes / best["copy"] / 1e9,
            "triad_gbs": 3 * nbytes / best["triad"] / 1e9}


class _Meter:
    """Instruments the connections of a model: forward/backward seconds and a region flag."""

    def __init__(self) -> None:
        self.fwd = self.bwd = 0.0
        self.active = False  # inside a connection region (read by the byte counter)
        self._t0 = 0.0

    # a forward region, and (only while torch.profiler runs: ``spans``) its profiler range
    spans = False
    _span = None

    def _open(self) -> None:
        self.active = True
        if self.spans:
            self._span = record_function("hf::connection")
            self._span.__enter__()

    def _close(self) -> None:
        self.active = False
        if self._span is not None:
            self._span.__exit__(None, None, None)
            self._span = None

    # ------------------------------------------------------------- backward nodes
    def _pre(self, *_):
        self._open()
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self.bwd += time.perf_counter() - self._t0
        self._close()

    def hook_nodes(self, outputs: list[Tensor], stops: set) -> None:
        seen: set = set()
        todo = [t.grad_fn for t in outputs if t.grad_fn is not None]
        while todo:
            node = todo.pop()
            if node is None or node in stops or node in seen:
                continue
            seen.add(node)
            node.register_prehook(self._pre)
            node.register_hook(self._post)
            todo.extend(nxt for nxt, _ in node.next_functions)

    # ------------------------------------------------------------- forward calls
    def wrap(self, conn: Connection) -> Callable[..., Tensor]:
        inner = conn.forward

        def forward(h: Tensor, branch: Callable[..., Tensor], *args, **kwargs) -> Tensor:
            seen: dict[str, Any] = {"branch_s": 0.0}

            def timed_branch(x, *a, **kw):
                seen["x"] = x
                self._close()
                t0 = time.perf_counter()
                out = branch(x, *a, **kw)
                seen["branch_s"] += time.perf_counter() - t0
                seen["out"] = out
                self._open()
                return out

            self._open()
            t0 = time.perf_counter()
            y = inner(h, timed_branch, *args, **kwargs)
            self.fwd += time.perf_counter() - t0 - seen["branch_s"]
            self._close()
            if torch.is_grad_enabled():
                out = seen.get("out")
                stops = {t.grad_fn for t in (h, out) if isinstance(t, Tensor)}
                starts = [y] + ([seen["x"]] if isinstance(seen.get("x"), Tensor) else [])
                self.hook_nodes(starts, stops - {None})
            return y

        return forward


@contextmanager
def instrumented(model: nn.Module):
    """Yield a :class:`_Meter` while every connection of ``model`` is wrapped."""
    meter = _Meter()
    conns = [m for m in model.modules() if isinstance(m, Connection)]
    for c in conns:
        c.forward = meter.wrap(c)  # instance attribute shadows the class method
    try:
        yield meter
    finally:
        for c in conns:
            del c.forward


class _ByteCounter(TorchDispatchMode):
    """Sums input + output bytes of non-view aten ops while ``meter.active``."""

    def __init__(self, meter: _Meter) -> None:
        super().__init__()
        self.meter, self.bytes = meter, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.meter.active and not func.is_view:
            flat = torch.utils._pytree.tree_leaves((args, kwargs, out))
            self.bytes += sum(t.numel() * t.element_size() for t in flat
                              if isinstance(t, Tensor))
        return out


def _phases(arm, meter: _Meter) -> dict[str, float]:
    ctx = precision_autocast(arm.device.type, arm.settings.precision)
    arm.opt.zero_grad(set_to_none=True)
    meter.fwd = meter.bwd = 0.0
    t0 = time.perf_counter()
    with ctx, arm.settings.connection_modes():
        out = arm.model(arm.x, arm.y)
    t1 = time.perf_counter()
    (out.loss + out.aux_loss).backward()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(arm.model.parameters(), 1.0)
    arm.opt.step()
    t3 = time.perf_counter()
    return {"conn_fwd": meter.fwd, "conn_bwd": meter.bwd, "branch_fwd": t1 - t0 - meter.fwd,
            "branch_bwd": t2 - t1 - meter.bwd, "optimizer": t3 - t2, "step": t3 - t0}


def _top_connection_ops(arm, meter: _Meter, rows: int) -> list[dict[str, Any]]:
    """torch.profiler: aten ops by self CPU time, restricted to connection regions."""
    from torch.profiler import ProfilerActivity, profile

    meter.spans = True
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _phases(arm, meter)
    finally:
        meter.spans = False
    events = prof.events()
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.name == "hf::connection")
    starts = [a for a, _ in spans]
    totals: dict[str, float] = {}
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        i = bisect.bisect_right(starts, e.time_range.start) - 1
        if i >= 0 and e.time_range.start < spans[i][1]:
            totals[e.name] = totals.get(e.name, 0.0) + e.self_cpu_time_total / 1e3
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:rows]
    return [{"op": k, "self_ms": round(v, 2)} for k, v in top]


def run_profile(
    *,
    preset: str = "cpu-6x256",
    kinds: str = "residual,dhc:4,dfc:4,mhc:4",
    batch_size: int = 16,
    seq_len: int = 256,
    precision: str = "bf16",
    steps: int = 3,
    warmup: int = 2,
    threads: int | None = 2,
    fp32_state: bool = False,
    kernels: str = "eager",
    out: str | Path = "bench_results/profile.json",
) -> dict[str, Any]:
    """Profile one training step per kind (median over ``steps``); returns the JSON written to
    ``out``. Backward-region times need the forward in eager mode (no ``torch.compile``).
    ``fp32_state``: stream states in float32 under bf16 autocast (default: bf16)."""
    from hyperfrac.train.bench import (
        ArmSettings,
        _Arm,
        _check_counts,
        check_kernels,
        label,
        parse_kind,
    )

    _check_counts(batch_size=(batch_size, 1), seq_len=(seq_len, 1), steps=(steps, 1),
                  warmup=(warmup, 0))
    if threads:
        torch.set_num_threads(threads)
    steady = steady_allocator()
    conns = [parse_kind(s) for s in kinds.split(",") if s]
    if not conns:
        raise ValueError(f"kinds={kinds!r} names no connection")
    check_kernels(kernels)
    settings = ArmSettings(preset, batch_size, seq_len, precision, False, threads, fp32_state,
                           kernels)
    bw = stream_bandwidth()
    tokens = batch_size * seq_len
    rows = []
    for conn in conns:
        arm = _Arm(conn, settings, torch.device("cpu"))
        n_conn = sum(isinstance(m, Connection) for m in arm.model.modules())
        with instrumented(arm.model) as meter:
            for _ in range(warmup):
                _phases(arm, meter)
            runs = [_phases(arm, meter) for _ in range(steps)]
            counter = _ByteCounter(meter)
            with counter:
                _phases(arm, meter)
            top = _top_connection_ops(arm, meter, rows=8)
        row = {"kind": label(conn), "connection": conn, "connections": n_conn,
               **{k: statistics.median(r[k] for r in runs) for k in runs[0]},
               "conn_bytes_per_step": counter.bytes,
               "conn_bytes_per_token_layer": counter.bytes / (tokens * max(n_conn, 1)),
               "top_connection_ops": top}
        rows.append(row)
        print(f"[bench profile] {row['kind']}: step {row['step'] * 1e3:.0f} ms, connections "
              f"{(row['conn_fwd'] + row['conn_bwd']) * 1e3:.0f} ms", file=sys.stderr)
    base = rows[0]
    for row in rows:
        extra = row["conn_bytes_per_step"] - base["conn_bytes_per_step"]
        row["floor_ratio"] = base["step"] / (base["step"] + max(extra, 0) / (bw["triad_gbs"] * 1e9))
        row["time_ratio"] = base["step"] / row["step"]
    result = {"benchmark": "profile", "preset": preset, "batch_size": batch_size,
              "seq_len": seq_len, "precision": precision, "threads": torch.get_num_threads(),
              "steps": steps, "fp32_state": fp32_state, "kernels": kernels,
              "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(),
              "steady_allocator": steady, "bandwidth": bw, "rows": rows}
    _print(result)
    write_json(result, out)
    return result


def _print(result: dict[str, Any]) -> None:
    bw = result["bandwidth"]
    print(f"stream bandwidth: copy {bw['copy_gbs']:.1f} GB/s, triad {bw['triad_gbs']:.1f} GB/s")
    head = (f"{'kind':<10}{'step ms':>9}{'conn fwd':>9}{'conn bwd':>9}{'branch':>8}{'optim':>7}"
            f"{'B/tok-layer':>12}{'speed':>7}{'floor':>7}")
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        print(f"{r['kind']:<10}{r['step'] * 1e3:>9.0f}{r['conn_fwd'] * 1e3:>9.0f}"
              f"{r['conn_bwd'] * 1e3:>9.0f}{(r['branch_fwd'] + r['branch_bwd']) * 1e3:>8.0f}"
              f"{r['optimizer'] * 1e3:>7.0f}{r['conn_bytes_per_token_layer']:>12.0f}"
              f"{r['time_ratio']:>7.2f}{r['floor_ratio']:>7.2f}")
