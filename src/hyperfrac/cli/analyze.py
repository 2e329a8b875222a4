"""``hyperfrac analyze RUN_DIR``: the comparison's analyses for any trained run."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="probe a trained run: cosine similarity, unfolded matrices, Amax gain, grad norms",
        description="Loads the latest checkpoint of RUN_DIR (from `hyperfrac train` or "
        "`hyperfrac compare`), evaluates it and runs the papers' diagnostics on validation "
        "windows. Writes RUN_DIR/analysis/analysis.json and PNG figures.",
    )
    p.add_argument("run_dir", type=Path, help="run folder (holds checkpoints/)")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint folder (default: latest)")
    p.add_argument("--data-path", type=Path, help="prepared dataset (default: the run's)")
    p.add_argument("--windows", type=int, default=4, help="validation windows probed")
    p.add_argument("--max-tokens", type=int, default=512, help="tokens kept per layer")
    p.add_argument("--eval-batches", type=int, help="cap validation batches")
    p.add_argument("--no-figures", action="store_true", help="write analysis.json only")
    p.set_defaults(func=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from hyperfrac.analysis.analyze import analyze_run

    res = analyze_run(args.run_dir, checkpoint=args.checkpoint, data_path=args.data_path,
                      windows=args.windows, max_tokens=args.max_tokens,
                      eval_batches=args.eval_batches, figures=not args.no_figures)
    m = res["metrics"]
    cos = res["probe"].get("cosine", {}).get("median")
    amax = res["probe"]["amax"]
    print(f"{args.run_dir}: step {res['step']}, {res['tokens']:,} tokens, connection "
          f"{res['connection']}")
    print(f"  val loss {m['val_loss']:.4f} | val bpb {m['val_bpb']:.4f} | params "
          f"{m['params']:,} (connections {m['conn_params']:,})")
    for split, r in m["heldout"].items():
        print(f"  {split} bpb {r['bpb']:.4f}")
    if cos:
        print(f"  adjacent cosine median: first {cos[0]:.3f}, last {cos[-1]:.3f}")
    print(f"  max composite Amax gain: forward {max(amax['composite_forward']):.3g}, backward "
          f"{max(amax['composite_backward']):.3g}")
    print(f"  wrote {args.run_dir / 'analysis'}")
    return 0
