"""Child-process entry of ``hyperfrac compare``: train one arm from a resolved config file.

``python -m hyperfrac.compare.worker CONFIG.yaml`` builds the trainer with the seed's shared
branch initialisation (:func:`hyperfrac.compare.driver.build_trainer`), trains (resuming the
run folder's latest checkpoint) and exits; the parent reads ``summary.json`` and this
process's peak resident memory.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m hyperfrac.compare.worker CONFIG.yaml", file=sys.stderr)
        return 2
    from hyperfrac.compare.driver import build_trainer
    from hyperfrac.train.config import load_config

    build_trainer(load_config(args[0])).fit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
