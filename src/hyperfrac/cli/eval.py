"""``hyperfrac eval RUN_DIR``: bits-per-byte, multiple-choice suites, or ViT accuracy of a run;
``hyperfrac eval RUN_DIR --text FILE``: bits-per-byte on any UTF-8 text."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hyperfrac.cli.args import positive_int, usage_error


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="bits-per-byte, multiple-choice suites (LM) or top-1 accuracy (ViT) of a run",
        description="Loads the latest complete checkpoint of RUN_DIR (or --checkpoint) with its "
        "saved config. Language models: loss and bits-per-byte on the validation split, the "
        "held-out book and the out-of-distribution text (where the dataset has them), plus the "
        "offline multiple-choice suites (lastword, cloze, pairs) built from the held-out text. "
        "Vision runs: top-1 accuracy on the test set. Prints and writes RUN_DIR/eval.json. "
        "With --text FILE: only the bits-per-byte of that UTF-8 file.",
    )
    p.add_argument("run_dir", type=Path, help="run folder (holds checkpoints/)")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint folder (default: latest)")
    p.add_argument("--split", default="val", help="split reported at the top level (default val)")
    p.add_argument("--max-batches", type=positive_int, help="limit the batches per split (>= 1)")
    p.add_argument("--batch-size", type=positive_int, help="default: the run's eval.batch_size")
    p.add_argument("--data-path", type=Path, help="prepared dataset (default: the run's)")
    p.add_argument(
        "--suites",
        default="lastword,cloze,pairs",
        help="comma-separated suites to run, or 'none' (default: all three)",
    )
    p.add_argument("--max-items", type=positive_int,
                   help="cap the items per suite (default: 500/500/1000)")
    p.add_argument("--text", type=Path, help="report bits-per-byte on this UTF-8 text file only")
    p.add_argument(
        "--threads", type=positive_int,
        help="torch CPU threads (1 is faster next to other busy jobs)",
    )
    # lm-evaluation-harness (hyperfrac.hf.lm_eval; also takes export/convert folders)
    p.add_argument("--lm-eval", metavar="TASKS", help="run these lm-eval tasks (comma-separated)")
    p.add_argument("--lm-eval-include", type=Path, metavar="DIR", help="extra lm-eval task YAMLs")
    p.add_argument("--lm-eval-limit", type=positive_int, metavar="N",
                   help="lm-eval: documents per task")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from hyperfrac.eval.run import evaluate_run, evaluate_text
    from hyperfrac.eval.suites import SUITES

    if args.lm_eval:
        from hyperfrac.hf.lm_eval import evaluate_run_lm_eval

        tasks = [t.strip() for t in args.lm_eval.split(",") if t.strip()]
        res = evaluate_run_lm_eval(args.run_dir, tasks, checkpoint=args.checkpoint,
                                   include_path=args.lm_eval_include, limit=args.lm_eval_limit,
                                   batch_size=args.batch_size or 1)
        print(json.dumps(res, indent=2, default=str))
        return 0
    if args.text is not None:
        res = evaluate_text(
            args.run_dir,
            args.text,
            checkpoint=args.checkpoint,
            data_path=args.data_path,
            batch_size=args.batch_size,
        )
        print(json.dumps(res, indent=2))
        return 0
    names = () if args.suites in ("", "none") else tuple(s.strip() for s in args.suites.split(","))
    unknown = [s for s in names if s not in SUITES]
    if unknown:
        usage_error("hyperfrac eval", f"unknown suite(s) {unknown} in --suites; choose from "
                    f"{SUITES} or 'none'")
    res = evaluate_run(
        args.run_dir,
        checkpoint=args.checkpoint,
        split=args.split,
        max_batches=args.max_batches,
        batch_size=args.batch_size,
        data_path=args.data_path,
        suites=names,
        max_items=args.max_items,
    )
    print(json.dumps(res, indent=2))
    return 0
