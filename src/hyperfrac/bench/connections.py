"""Connection benchmark: a 12-layer stack, forward + backward, ours vs the residual and the peer.

Every variant wraps the *same* branch weights: LayerNorm -> Linear(D, 4D) -> GELU -> Linear(4D, D),
then a final LayerNorm and a mean-square loss. All variants are built first and timed in
interleaved rounds (so drift in machine speed hits all of them alike); we report the median
and the ratio to our residual stack measured in the same run. The peer is the PyPI package
``hyper-connections`` (lucidrains), when installed.

Variants marked "rc" use ``recompute=True``: the branch input is rebuilt in backward.
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

from hyperfrac.bench.memory import saved_tensor_bytes
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
        "dfc x4 rc": lambda b, d: OursStack(b, "dfc", d, n_fracs=4, recompute=True),
        "mhc x4 rc": lambda b, d: OursStack(b, "mhc", d, n_streams=4, recompute=True),
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
    saved_mib: float = 0.0
    extra_params: int = 0
    compile_s: float = 0.0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)


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
            t0 = time.perf_counter()
            _step(model, x)
            if i >= warmup:
                results[name].times_ms.append((time.perf_counter() - t0) * 1e3)
        print(f"  [{mode}] round {i + 1}/{warmup + rounds}", end="\r", flush=True)
    print()


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
    torch.manual_seed(0)
    base = nn.ModuleList(mlp_branch(dim, 4 * dim) for _ in range(layers))
    n_branch_params = sum(p.numel() for p in base.parameters()) + 2 * dim
    chosen = our_variants() | ({} if no_peer else _peer_variants())
    chosen = _select(chosen, variants)
    x = torch.randn(batch, seq, dim)
    machine = {"torch": torch.__version__, "machine": platform.machine(),
               "processor": platform.processor() or platform.machine()}
    report: dict = {"config": config | machine, "results": []}
    for mode in modes.split(","):
        models: dict[str, nn.Module] = {}
        results: dict[str, Result] = {}
        for name, make in chosen.items():
            if mode == "compiled" and (name.startswith("naive") or name.endswith(" rc")):
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
    _print_table(report)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
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
        "| mode | variant | median ms | ratio | target | peer ratio | overhead / peer's "
        "| saved MiB | saved ratio | extra params |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        target = r.get("target", "")
        if target:
            target = f"≤ {target} {'✓' if r['meets_target'] else '✗'}"
        lines.append(
            f"| {r['mode']} | {r['variant']} | {r['median_ms']:.1f} | {r['ratio']:.2f} | "
            f"{target} | {r.get('peer_ratio', '')} | {r.get('overhead_vs_peer', '')} | "
            f"{r['saved_mib']:.1f} | {r['saved_ratio']:.2f} | {r['extra_params']} |"
        )
    return "\n".join(lines) + "\n"


def _summarise(results: dict[str, Result], mode: str) -> list[dict]:
    ref = results["residual"]
    rows = []
    for name, r in results.items():
        ratio = r.median_ms / ref.median_ms
        row = {
            "variant": name,
            "mode": mode,
            "median_ms": round(r.median_ms, 2),
            "ratio": round(ratio, 3),
            "saved_mib": round(r.saved_mib, 1),
            "saved_bytes": int(r.saved_mib * 2**20),
            "saved_ratio": round(r.saved_mib / ref.saved_mib, 3),
            "extra_params": r.extra_params,
            "compile_s": round(r.compile_s, 1),
            "times_ms": [round(t, 2) for t in r.times_ms],
        }
        target = TARGETS.get((mode, name))
        if target is not None:
            row["target"] = target
            row["meets_target"] = ratio <= target
        peer = PEER_OF.get(name)
        if peer in results:
            peer_ratio = results[peer].median_ms / ref.median_ms
            row["peer_ratio"] = round(peer_ratio, 3)
            row["overhead_vs_peer"] = round((ratio - 1) / max(peer_ratio - 1, 1e-9), 3)
            row["half_peer_overhead"] = (ratio - 1) <= 0.5 * (peer_ratio - 1)
        rows.append(row)
    return rows


def _print_table(report: dict) -> None:
    head = (
        f"{'mode':<9}{'variant':<15}{'median ms':>10}{'ratio':>8}{'target':>8}"
        f"{'peer':>7}{'ovh/peer':>9}{'saved MiB':>10}{'x res':>7}{'+params':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in report["results"]:
        print(
            f"{r['mode']:<9}{r['variant']:<15}{r['median_ms']:>10.1f}{r['ratio']:>8.2f}"
            f"{r.get('target', ''):>8}{r.get('peer_ratio', ''):>7}"
            f"{r.get('overhead_vs_peer', ''):>9}{r['saved_mib']:>10.1f}"
            f"{r['saved_ratio']:>7.2f}{r['extra_params']:>9}"
        )
