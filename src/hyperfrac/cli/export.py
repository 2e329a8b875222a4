"""``hyperfrac export RUN_DIR OUT_DIR``: a trained run -> HuggingFace model folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained run as a HuggingFace model folder",
        description="Writes OUT_DIR with model.safetensors, config.json, the tokenizer and the "
        "remote-code files, so that AutoModelForCausalLM.from_pretrained(OUT_DIR, "
        "trust_remote_code=True) loads it without hyperfrac installed.",
    )
    p.add_argument("run_dir", type=Path, help="run folder (holds checkpoints/)")
    p.add_argument("out_dir", type=Path, help="folder to write")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint folder (default: latest)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the run's dataset's)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from hyperfrac.hf.export import export_run

    out = export_run(
        args.run_dir, args.out_dir, checkpoint=args.checkpoint, tokenizer=args.tokenizer
    )
    print(f"[export] wrote {out}")
    return 0
