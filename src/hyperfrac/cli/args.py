"""Argument types and usage errors shared by the subcommands (argparse's own conventions:
one line on stderr, exit status 2)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


def int_at_least(lo: int):
    """An argparse ``type``: an integer >= ``lo``, else a one-line usage error naming the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"{value} is below {lo}; give an integer >= {lo}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


positive_int = int_at_least(1)


def usage_error(command: str, message: str) -> NoReturn:
    """Leave as argparse does on a bad argument: one line on stderr, exit status 2."""
    print(f"{command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)
