"""The `hyperfrac` command line: one entry point, one module per subcommand.

Each subcommand module defines ``register(subparsers)`` which adds its parser and sets
``func`` on it. Modules are imported lazily by name so that, e.g., ``hyperfrac bench`` does not
import the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module under hyperfrac.cli
SUBCOMMANDS: dict[str, str] = {
    "bench": "bench",
    "data": "data",
    "train": "train",
    "eval": "eval",
    "compare": "compare",
    "analyze": "analyze",
    "export": "export",
    "convert": "convert",
    "generate": "generate",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperfrac",
        description="Hyper-/Frac-Connections and mHC: library, models, training and benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in SUBCOMMANDS.values():
        importlib.import_module(f"hyperfrac.cli.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
