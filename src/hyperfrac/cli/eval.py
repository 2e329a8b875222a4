"""``hyperfrac eval RUN_DIR``: validation loss and bits-per-byte of a trained run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="validation loss and bits-per-byte of a trained run",
        description="Loads the latest complete checkpoint of RUN_DIR (or --checkpoint) with its "
        "saved config, evaluates the validation split, prints and writes eval.json.",
    )
    p.add_argument("run_dir", type=Path, help="run folder (holds checkpoints/)")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint folder (default: latest)")
    p.add_argument("--split", default="val", choices=("val", "train"))
    p.add_argument("--max-batches", type=int, help="limit the number of batches")
    p.add_argument("--batch-size", type=int, help="default: the run's eval.batch_size")
    p.add_argument("--data-path", type=Path, help="prepared dataset (default: the run's)")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from hyperfrac.eval.run import evaluate_run

    res = evaluate_run(
        args.run_dir,
        checkpoint=args.checkpoint,
        split=args.split,
        max_batches=args.max_batches,
        batch_size=args.batch_size,
        data_path=args.data_path,
    )
    print(json.dumps(res, indent=2))
    return 0
