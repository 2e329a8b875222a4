"""The `hyperfrac` command line: one entry point, one module per subcommand.

Each subcommand module defines ``register(subparsers)`` which adds its parser and sets
``func`` on it; heavy imports happen inside ``func``, so ``hyperfrac --help`` and ``hyperfrac
bench connections`` work on a core-only install (torch, numpy).

Errors: every failure is one line on stderr, ``hyperfrac COMMAND: error: ...``, with exit code
2 (a missing optional extra says which ``pip install 'hyperfrac[...]'`` brings it); Ctrl-C
exits 130. ``--debug`` (or ``HYPERFRAC_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: subcommand modules under hyperfrac.cli, in the order ``--help`` lists them
SUBCOMMANDS: tuple[str, ...] = (
    "compare",
    "train",
    "eval",
    "analyze",
    "data",
    "config",
    "bench",
    "export",
    "convert",
    "generate",
)


def build_parser() -> argparse.ArgumentParser:
    from hyperfrac import __version__

    parser = argparse.ArgumentParser(
        prog="hyperfrac",
        description="Hyper-/Frac-Connections and mHC: library, models, training and benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"hyperfrac {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks (also HYPERFRAC_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in SUBCOMMANDS:
        importlib.import_module(f"hyperfrac.cli.{module}").register(sub)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (KeyError,)) and text.startswith(("'", '"')):
        text = text[1:-1]
    standard = (ValueError, FileNotFoundError, FileExistsError, KeyError, ImportError, OSError,
                TypeError, RuntimeError)
    return text if isinstance(err, standard) else f"{type(err).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("HYPERFRAC_DEBUG", "") not in ("", "0")
    parser = build_parser()
    # --debug may stand anywhere on the line (before or after the subcommand)
    args = parser.parse_args([a for a in argv if a != "--debug"])
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"hyperfrac {args.command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as err:  # noqa: BLE001 — the CLI boundary: one line, exit 2
        if debug:
            raise
        from hyperfrac.extras import missing_extra

        if isinstance(err, ModuleNotFoundError):
            err = missing_extra(err) or err
        print(f"hyperfrac {args.command}: error: {_one_line(err)} (--debug shows the traceback)",
              file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
