"""Connection benchmark: a 12-layer stack, forward + backward, ours vs the residual and the peer.

Every variant wraps the *same* branch weights: LayerNorm -> Linear(D, 4D) -> GELU -> Linear(4D, D),
then a final LayerNorm and a mean-square loss. All variants are built first and timed in
interleaved rounds (so drift in machine speed hits all of them alike). The ratio to our
residual stack is paired within each round and summarised over rounds (median, range, a
distribution-free 95 % interval of the median; :mod:`hyperfrac.bench.rounds`); rounds where
other processes used more than 10 % of the CPUs are left out. The peer is the PyPI package
``hyper-connections`` (lucidrains), when installed.

The allocator is made steady first (:func:`hyperfrac.bench.allocator.steady_allocator`) and
the minor page faults of each timed step are reported: with glibc's default trimming and
mmap thresholds the peer's HC×4 step (841 MiB saved) paid 0.1-0.4 M page faults per step
depending on what had run before it in the process, which moved its ratio from 1.7 to 4.5.

Variants marked "rc" use ``recompute=True``: the branch input is rebuilt in backward (FC's
default: "dfc x4" recomputes, "dfc x4 norc" keeps the branch input).
"saved MiB" is the total size of the distinct storages autograd keeps for backward, excluding
parameters and the input: the activation memory a training step holds at the loss.

    hyperfrac bench connections                 # eager + compiled, writes bench_results/...
    hyperfrac bench connections --modes eager --rounds 9
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperfrac.bench.allocator import minor_faults, steady_allocator
from hyperfrac.bench.memory import saved_tensor_bytes
from hyperfrac.bench.rounds import CONTENDED, OtherLoad, dirty, paired_ratios
from hyperfrac.connections import build

# Issue #2 targets, ratio to our residual.
TARGETS = {
    ("eager", "dhc x4"): 1.40,
    ("eager", "dfc x4"): 1.10,
    ("eager", "mhc x4"): 1.60,
    ("compiled", "dhc x4"): 1.25,
    ("compiled", "dfc x4"): 1.05,
}
# Our variant -> the peer variant it is compared with.
PEER_OF = {"dhc x4": "peer hc x4", "dfc x4": "peer frac x4", "mhc x4": "peer mhc x4"}


def mlp_branch(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
    )


class OursStack(nn.Module):
    """expand -> L x connection(branch) -> reduce -> final norm."""

    def __init__(self, branches: nn.ModuleList, kind: str, dim: int, **options) -> None:
        super().__init__()
        self.branches = branches
        self.conns = nn.ModuleList(
            build(kind, dim, layer_idx=i, **options) for i in range(len(branches))
        )
        self.norm = nn.LayerNorm(dim)

    def layer(self, conn: nn.Module, h: Tensor, branch: nn.Module) -> Tensor:
        return conn(h, branch)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conns[0].expand(x)
        for conn, branch in zip(self.conns, self.branches, strict=True):
            h = self.layer(conn, h, branch)
        return self.norm(self.conns[0].reduce(h))


class NaiveStack(OursStack):
    """Direct transcription of HC Eq. 8-13 / FC Eq. 9-14 with plain autograd: the yardstick
    for what the fused kernels buy. Same parameters and init as ``dhc`` / ``dfc``."""

    def layer(self, c: nn.Module, h: Tensor, branch: nn.Module) -> Tensor:
        r = c.n_inputs
        if c.norm_mode == "layernorm":
            hn = F.layer_norm(h, (c.slot_dim,))
        else:
            hn = F.rms_norm(h, (c.slot_dim,), c.norm_weight)
        alpha = c.static_alpha + c.alpha_scale * torch.tanh(hn @ c.dynamic_alpha)  # (B,T,S,R+S)
        beta = c.static_beta + c.beta_scale * torch.tanh(hn @ c.dynamic_beta)  # (B, T, S)
        x = torch.einsum("btsr,btsd->btrd", alpha[..., :r], h).flatten(-2)  # (B, T, D)
        out = branch(x).unflatten(-1, (r, c.slot_dim))  # (B, T, R, Ds)
        return torch.einsum("btsj,btsd->btjd", alpha[..., r:], h) + beta.unsqueeze(-1) * out


class PeerStack(nn.Module):
    """The same stack built with the peer library's factory functions."""

    def __init__(self, branches: nn.ModuleList, factory: Callable, dim: int, **kw) -> None:
        super().__init__()
        init, self._expand, self._reduce = factory(dim=dim, **kw)
        self.layers = nn.ModuleList(
            init(dim=dim, branch=b, layer_index=i) for i, b in enumerate(branches)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self._expand(x)
        for layer in self.layers:
            h = layer(h)
        return self.norm(self._reduce(h))


def _peer_variants() -> dict[str, Callable[[nn.ModuleList, int], nn.Module]]:
    try:
        import hyper_connections as peer
        from hyper_connections import mHCv2
    except ImportError:
        return {}
    f = peer.get_init_and_expand_reduce_stream_functions
    return {
        "peer residual": lambda b, d: PeerStack(b, f, d, num_streams=1, disable=True),
        "peer hc x4": lambda b, d: PeerStack(b, f, d, num_streams=4),
        "peer frac x4": lambda b, d: PeerStack(b, f, d, num_streams=1, num_fracs=4),
        "peer mhc x4": lambda b, d: PeerStack(
            b, mHCv2.get_init_and_expand_reduce_stream_functions, d, num_streams=4
        ),
    }


def our_variants() -> dict[str, Callable[[nn.ModuleList, int], nn.Module]]:
    def attnres(b: nn.ModuleList, d: int) -> nn.Module:
        return OursStack(b, "attnres", d, block_size=2, n_sublayers=len(b))

    return {
        "residual": lambda b, d: OursStack(b, "residual", d),
        "hc x4": lambda b, d: OursStack(b, "hc", d, n_streams=4),
        "dhc x4": lambda b, d: OursStack(b, "dhc", d, n_streams=4),
        "fc x4": lambda b, d: OursStack(b, "fc", d, n_fracs=4),
        "dfc x4": lambda b, d: OursStack(b, "dfc", d, n_fracs=4),
        "mhc x4": lambda b, d: OursStack(b, "mhc", d, n_streams=4),
        "naive dhc x4": lambda b, d: NaiveStack(b, "dhc", d, n_streams=4),
        "naive dfc x4": lambda b, d: NaiveStack(b, "dfc", d, n_fracs=4),
        "dhc x4 rc": lambda b, d: OursStack(b, "dhc", d, n_streams=4, recompute=True),
        "dfc x4 norc": lambda b, d: OursStack(b, "dfc", d, n_fracs=4, recompute=False),
        "mhc x4 rc": lambda b, d: OursStack(b, "mhc", d, n_streams=4, recompute=True),
        "mhc-v4 x4": lambda b, d: OursStack(b, "mhc", d, n_streams=4, flavor="deepseek-v4"),
        "mhc-lite x4": lambda b, d: OursStack(b, "mhc-lite", d, n_streams=4),
        "kromhc x4": lambda b, d: OursStack(b, "kromhc", d, n_streams=4),
        "attnres b2": attnres,
    }


def saved_activation_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes of distinct non-parameter storages saved for backward by one forward pass."""
    return saved_tensor_bytes(
        lambda: model(x).square().mean(), exclude=[*model.parameters(), x]
    )


@dataclass
class Result:
    name: str
    mode: str
    times_ms: list[float] = field(default_factory=list)
    others: list[float | None] = field(default_factory=list)  # neighbours' CPU share per round
    faults: list[int] = field(default_factory=list)  # minor page faults per timed step
    saved_mib: float = 0.0
    extra_params: int = 0
    compile_s: float = 0.0

    @property
    def median_ms(self) -> float:
        clean = [t for t, o in zip(self.times_ms, self.others, strict=True) if not dirty(o)]
        return statistics.median(clean or self.times_ms)


def _step(model: nn.Module, x: Tensor) -> None:
    loss = model(x).square().mean()
    loss.backward()
    for p in model.parameters():
        p.grad = None


def _time(models: dict[str, nn.Module], results: dict[str, Result], x: Tensor, *, mode: str,
          warmup: int, rounds: int) -> None:
    """Interleaved rounds: round i times every variant once (drift hits all alike)."""
    for i in range(warmup + rounds):
        for name, model in models.items():
            f0 = minor_faults()
            with OtherLoad() as load:
                _step(model, x)
            if i >= warmup:
                r = results[name]
                r.times_ms.append(load.wall * 1e3)
                r.others.append(load.share)
                r.faults.append(minor_faults() - f0)
        print(f"  [{mode}] round {i + 1}/{warmup + rounds}", end="\r", flush=True)
    print()
    n_dirty = sum(dirty(o) for r in results.values() for o in r.others)
    if n_dirty:
        print(f"  [{mode}] {n_dirty} timed step(s) ran while other processes used more than "
              f"{100 * CONTENDED:.0f}% of the CPUs; their rounds are left out of the ratios")


def _select(variants: dict, wanted: str) -> dict:
    if not wanted:
        return variants
    names = [v.strip() for v in wanted.split(",")]
    unknown = [v for v in names if v not in variants]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {sorted(variants)}")
    return {k: variants[k] for k in ["residual"] + names if k in variants}


def run(
    *,
    layers: int = 12,
    dim: int = 256,
    batch: int = 8,
    seq: int = 256,
    threads: int = 2,
    warmup: int = 3,
    rounds: int = 15,
    modes: str = "eager,compiled",
    variants: str = "",
    no_peer: bool = False,
    out: str | Path = "bench_results/connections.json",
) -> dict:
    """Time forward + backward of a ``layers``-deep stack of width ``dim`` on a
    (``batch``, ``seq``, ``dim``) input per variant (``variants``: comma list, default all;
    ``no_peer`` skips the peer package) and mode (``modes``: eager and/or compiled). Writes
    ``out`` (JSON) and its ``.md`` table; returns the report."""
    config = dict(layers=layers, dim=dim, batch=batch, seq=seq, threads=threads, warmup=warmup,
                  rounds=rounds, modes=modes, variants=variants, no_peer=no_peer, out=str(out))
    for mode in modes.split(","):
        if mode not in ("eager", "compiled"):
            raise SystemExit(f"unknown mode {mode!r}; use eager and/or compiled")
    torch.set_num_threads(threads)
    steady = steady_allocator()
    torch.manual_seed(0)
    base = nn.ModuleList(mlp_branch(dim, 4 * dim) for _ in range(layers))
    n_branch_params = sum(p.numel() for p in base.parameters()) + 2 * dim
    chosen = our_variants() | ({} if no_peer else _peer_variants())
    chosen = _select(chosen, variants)
    x = torch.randn(batch, seq, dim)
    machine = {"torch": torch.__version__, "machine": platform.machine(),
               "processor": platform.processor() or platform.machine(),
               "steady_allocator": steady}
    report: dict = {"config": config | machine, "results": []}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for mode in modes.split(","):
        models: dict[str, nn.Module] = {}
        results: dict[str, Result] = {}
        for name, make in chosen.items():
            if mode == "compiled" and (name.startswith("naive") or name.endswith((" rc", " norc"))):
                continue  # the yardstick is eager-only; recompute is an eager feature
            model = make(copy.deepcopy(base), dim)
            r = Result(name, mode)
            r.extra_params = sum(p.numel() for p in model.parameters()) - n_branch_params
            r.saved_mib = saved_activation_bytes(model, x) / 2**20
            if mode == "compiled":
                model = torch.compile(model)
                t0 = time.perf_counter()
                _step(model, x)
                r.compile_s = time.perf_counter() - t0
                print(f"  compiled {name:<14} in {r.compile_s:.1f}s", flush=True)
            models[name], results[name] = model, r
        _time(models, results, x, mode=mode, warmup=warmup, rounds=rounds)
        report["results"] += _summarise(results, mode)
        out.write_text(json.dumps(report, indent=2))  # a mode's results survive a later kill
    _print_table(report)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown_table(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return report


def markdown_table(report: dict) -> str:
    """The results as a Markdown table (what docs/results.md shows)."""
    cfg = report["config"]
    lines = [
        f"torch {cfg['torch']}, {cfg['threads']} threads, {cfg['layers']} layers, "
        f"input ({cfg['batch']}, {cfg['seq']}, {cfg['dim']}), {cfg['rounds']} rounds "
        f"(median), {cfg['processor']}",
        "",
        "| mode | variant | median ms | ratio [range over rounds] | target | peer ratio [range] "
        "| overhead / peer's | saved MiB | saved ratio | extra params | page faults / step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        target = r.get("target", "")
        if target:
            target = f"≤ {target} {'✓' if r['meets_target'] else '✗'}"
        peer = ""
        if "peer_ratio" in r:
            peer = f"{r['peer_ratio']:.2f} [{r['peer_ratio_min']:.2f}–{r['peer_ratio_max']:.2f}]"
        lines.append(
            f"| {r['mode']} | {r['variant']} | {r['median_ms']:.1f} | {r['ratio']:.2f} "
            f"[{r['ratio_min']:.2f}–{r['ratio_max']:.2f}] | {target} | {peer} | "
            f"{r.get('overhead_vs_peer', '')} | {r['saved_mib']:.1f} | {r['saved_ratio']:.2f} | "
            f"{r['extra_params']} | {r['minor_faults_per_step']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _paired(r: Result, ref: Result) -> dict:
    return paired_ratios(r.times_ms, ref.times_ms, r.others, ref.others)


def _summarise(results: dict[str, Result], mode: str) -> list[dict]:
    ref = results["residual"]
    rows = []
    for name, r in results.items():
        stats = _paired(r, ref)
        ratio = stats["median"]
        row = {
            "variant": name,
            "mode": mode,
            "median_ms": round(r.median_ms, 2),
            "ratio": round(ratio, 3),
            "ratio_min": round(stats["min"], 3),
            "ratio_max": round(stats["max"], 3),
            "ratio_ci95": stats["ci95"] and [round(c, 3) for c in stats["ci95"]],
            "ratio_ci_level": stats["ci_level"],
            "ratio_rounds": [round(v, 3) for v in stats["rounds"]],
            "clean_rounds": stats["clean_rounds"],
            "minor_faults_per_step": statistics.median(r.faults),
            "other_cpu_share_rounds": r.others,
            "saved_mib": round(r.saved_mib, 1),
            "saved_bytes": int(r.saved_mib * 2**20),
            "saved_ratio": round(r.saved_mib / ref.saved_mib, 3),
            "extra_params": r.extra_params,
            "compile_s": round(r.compile_s, 1),
            "times_ms": [round(t, 4) for t in r.times_ms],
        }
        target = TARGETS.get((mode, name))
        if target is not None:
            row["target"] = target
            row["meets_target"] = ratio <= target
        peer = PEER_OF.get(name)
        if peer in results:
            peer_stats = _paired(results[peer], ref)
            peer_ratio = peer_stats["median"]
            row["peer_ratio"] = round(peer_ratio, 3)
            row["peer_ratio_min"] = round(peer_stats["min"], 3)
            row["peer_ratio_max"] = round(peer_stats["max"], 3)
            row["overhead_vs_peer"] = round((ratio - 1) / max(peer_ratio - 1, 1e-9), 3)
            row["half_peer_overhead"] = (ratio - 1) <= 0.5 * (peer_ratio - 1)
        rows.append(row)
    return rows


def _spread(row: dict) -> str:
    return f"{row['ratio']:.2f} [{row['ratio_min']:.2f}-{row['ratio_max']:.2f}]"


def _print_table(report: dict) -> None:
    head = (
        f"{'mode':<9}{'variant':<15}{'median ms':>10}{'ratio [range]':>19}{'target':>8}"
        f"{'peer':>7}{'ovh/peer':>9}{'saved MiB':>10}{'x res':>7}{'+params':>9}{'faults':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in report["results"]:
        print(
            f"{r['mode']:<9}{r['variant']:<15}{r['median_ms']:>10.1f}{_spread(r):>19}"
            f"{r.get('target', ''):>8}{r.get('peer_ratio', ''):>7}"
            f"{r.get('overhead_vs_peer', ''):>9}{r['saved_mib']:>10.1f}"
            f"{r['saved_ratio']:>7.2f}{r['extra_params']:>9}{r['minor_faults_per_step']:>8.0f}"
        )
