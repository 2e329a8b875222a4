"""`hyperfrac bench connections|...`: benchmarks that print a table and write JSON."""

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
