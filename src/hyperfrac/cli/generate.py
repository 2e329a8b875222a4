"""``hyperfrac generate RUN_DIR --prompt TEXT``: sample text from a trained run or HF folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="sample text from a trained run (or an exported/converted HF folder)",
        description="Encodes --prompt with the run's tokenizer and samples with a KV cache.",
    )
    p.add_argument("run_dir", type=Path, help="run folder, or a folder written by export/convert")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--no-cache", action="store_true", help="recompute the sequence every step")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint folder (default: latest)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the run's)")
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    import torch

    from hyperfrac.generate import generate

    model, tok = _load(args)
    ids = tok.encode(args.prompt).ids
    if not ids:
        raise SystemExit("the prompt encodes to no tokens; give a non-empty --prompt")
    eos = tok.token_to_id("<|endoftext|>")
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.tensor([ids] * args.num_samples)
    out = generate(
        model,
        idx,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        use_cache=not args.no_cache,
        eos_id=eos,
        generator=g,
    )
    for row in out.tolist():
        if eos is not None and eos in row[len(ids) :]:
            row = row[: len(ids) + row[len(ids) :].index(eos)]
        print(tok.decode(row))
        print("-" * 40)
    return 0


def _load(args: argparse.Namespace):
    """(TransformerLM, tokenizers.Tokenizer) from a run folder or an HF folder."""
    from hyperfrac.data.tokenizer import load_tokenizer

    run = args.run_dir
    if (run / "config.json").is_file():  # exported / converted HF folder
        from hyperfrac.hf import HyperfracForCausalLM

        model = HyperfracForCausalLM.from_pretrained(run).model
        tok_path = args.tokenizer or run / "tokenizer.json"
    else:
        from hyperfrac.hf.export import load_lm_run

        model, _, tok_path = load_lm_run(run, args.checkpoint)
        tok_path = args.tokenizer or tok_path
    if tok_path is None or not Path(tok_path).is_file():
        raise SystemExit(f"no tokenizer.json for {run}; pass --tokenizer PATH")
    return model, load_tokenizer(tok_path)
