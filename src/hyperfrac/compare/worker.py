"""Child-process entry of ``hyperfrac compare``: train one arm from a resolved config file.

``python -m hyperfrac.compare.worker CONFIG.yaml`` (or the same under ``torchrun``, one
process per rank: ``--nproc-per-node``) builds the trainer with the seed's shared
branch initialisation (:func:`hyperfrac.compare.driver.build_trainer`), trains (resuming the
run folder's latest checkpoint), writes its peak resident memory to
``RUN/compare_worker.json`` and exits; the parent reads that and ``summary.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m hyperfrac.compare.worker CONFIG.yaml", file=sys.stderr)
        return 2
    from hyperfrac.compare.driver import build_trainer
    from hyperfrac.train.config import load_config

    cfg = load_config(args[0])
    try:
        build_trainer(cfg).fit()
    except KeyboardInterrupt:  # Ctrl-C or the parent stopping us: the last checkpoint stays
        print(f"[worker] {cfg.name} interrupted; its last checkpoint is kept", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: rank 0's peak
        (cfg.run_dir / "compare_worker.json").write_text(
            json.dumps({"peak_rss_mb": peak_rss_mb()}))
    return 0


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process's own address space (``VmHWM``; unlike
    ``ru_maxrss`` it does not inherit the parent's peak across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MB
    except OSError:
        pass
    return None


if __name__ == "__main__":
    sys.exit(main())
