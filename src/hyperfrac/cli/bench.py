"""`hyperfrac bench connections|train`: benchmarks that print a table and write JSON."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="speed/memory benchmarks (ratios to residual)")
    sub = p.add_subparsers(dest="bench", metavar="WHAT")
    sub.required = True
    from hyperfrac.bench import connections

    c = sub.add_parser("connections", help="12-layer connection stack vs residual and the peer")
    connections.add_arguments(c)
    c.set_defaults(func=connections.run)

    from hyperfrac.train import bench as train_bench

    t = sub.add_parser("train", help="training-step tokens/s and memory per connection kind")
    train_bench.add_arguments(t)
    t.set_defaults(func=train_bench.run_train_bench)
