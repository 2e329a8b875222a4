"""`hyperfrac bench connections|train|profile`: benchmarks that print a table and write JSON.

The flags map one to one onto the keyword arguments of
:func:`hyperfrac.bench.connections.run`, :func:`hyperfrac.train.bench.run_train_bench` and
:func:`hyperfrac.bench.profile.run_profile`,
whose signatures hold the defaults (both modules are torch-only).
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import Any


def _defaults(fn: Callable) -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()}


def _connections_arguments(p: argparse.ArgumentParser, d: dict[str, Any]) -> None:
    for name in ("layers", "dim", "batch", "seq", "threads", "warmup", "rounds"):
        p.add_argument(f"--{name}", type=int, default=d[name])
    p.add_argument("--modes", default=d["modes"], help="comma list of eager,compiled")
    p.add_argument("--variants", default=d["variants"], help="comma list (default: all)")
    p.add_argument("--no-peer", action="store_true", help="skip the hyper-connections package")
    p.add_argument("--out", default=d["out"])


def _run_connections(args: argparse.Namespace) -> dict:
    from hyperfrac.bench.connections import run

    return run(
        layers=args.layers, dim=args.dim, batch=args.batch, seq=args.seq, threads=args.threads,
        warmup=args.warmup, rounds=args.rounds, modes=args.modes, variants=args.variants,
        no_peer=args.no_peer, out=args.out,
    )


def _step_arguments(p: argparse.ArgumentParser, d: dict[str, Any], steps_help: str) -> None:
    """What ``bench train`` and ``bench profile`` share: the model, the step, the kinds."""
    from hyperfrac.connections import KERNEL_BACKENDS

    p.add_argument("--preset", default=d["preset"], help=f"model preset (default {d['preset']})")
    p.add_argument("--kinds", default=d["kinds"],
                   help=f"comma-separated kind[:n][+option[=value]] list (default {d['kinds']})")
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--seq-len", type=int, default=d["seq_len"])
    p.add_argument("--steps", type=int, default=d["steps"], help=steps_help)
    p.add_argument("--warmup", type=int, default=d["warmup"], help="untimed steps per kind first")
    p.add_argument("--precision", default=d["precision"], choices=("fp32", "bf16"))
    p.add_argument("--fp32-state", action="store_true",
                   help="keep stream states fp32 under bf16 (default: the training precision)")
    p.add_argument("--kernels", default=d["kernels"], choices=KERNEL_BACKENDS,
                   help="connection kernels: eager ops (default) or fused by inductor")
    p.add_argument("--out", default=d["out"])


def _train_arguments(p: argparse.ArgumentParser, d: dict[str, Any]) -> None:
    _step_arguments(p, d, "timed steps per kind per round")
    p.add_argument("--rounds", type=int, default=d["rounds"], help="interleaved rounds (median)")
    p.add_argument("--compile", action="store_true", help="torch.compile each model")
    p.add_argument("--threads", type=int, default=d["threads"], help="torch threads on CPU")
    p.add_argument("--device", default=d["device"])
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurements")


def _run_train(args: argparse.Namespace) -> dict:
    from hyperfrac.train.bench import run_train_bench

    return run_train_bench(
        preset=args.preset, kinds=args.kinds, batch_size=args.batch_size, seq_len=args.seq_len,
        steps=args.steps, rounds=args.rounds, warmup=args.warmup, precision=args.precision,
        compile=args.compile, threads=args.threads, device=args.device,
        memory=not args.no_memory, fp32_state=args.fp32_state, kernels=args.kernels, out=args.out,
    )


def _profile_arguments(p: argparse.ArgumentParser, d: dict[str, Any]) -> None:
    _step_arguments(p, d, "measured steps (median)")
    p.add_argument("--threads", type=int, default=d["threads"], help="torch threads")


def _run_profile(args: argparse.Namespace) -> dict:
    from hyperfrac.bench.profile import run_profile

    return run_profile(
        preset=args.preset, kinds=args.kinds, batch_size=args.batch_size, seq_len=args.seq_len,
        precision=args.precision, steps=args.steps, warmup=args.warmup, threads=args.threads,
        fp32_state=args.fp32_state, kernels=args.kernels, out=args.out,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    from hyperfrac.bench import connections
    from hyperfrac.bench import profile as profile_bench
    from hyperfrac.train import bench as train_bench

    p = subparsers.add_parser("bench", help="speed/memory benchmarks (ratios to residual)")
    sub = p.add_subparsers(dest="bench", metavar="WHAT")
    sub.required = True
    c = sub.add_parser("connections", help="12-layer connection stack vs residual and the peer")
    _connections_arguments(c, _defaults(connections.run))
    c.set_defaults(func=_run_connections)
    t = sub.add_parser("train", help="training-step tokens/s and memory per connection kind")
    _train_arguments(t, _defaults(train_bench.run_train_bench))
    t.set_defaults(func=_run_train)
    f = sub.add_parser("profile", help="step time split (connections/branches/optimizer), "
                                       "bytes per token-layer, bandwidth floor")
    _profile_arguments(f, _defaults(profile_bench.run_profile))
    f.set_defaults(func=_run_profile)
