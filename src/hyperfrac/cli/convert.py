"""``hyperfrac convert SRC OUT``: a local HF Llama/Mistral/Qwen2 model -> hyperfrac model."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a HuggingFace Llama-family model to a hyperfrac model (HC/FC/mHC)",
        description="Loads a local LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM "
        "folder, maps its weights onto a hyperfrac LM with the given stream connection (which "
        "equals Pre-Norm at init, so the function is unchanged) and writes a HuggingFace folder "
        "that loads with trust_remote_code=True. --check compares the logits of both models.",
    )
    p.add_argument("src", type=Path, help="local HF model folder (config.json + weights)")
    p.add_argument("out", type=Path, help="folder to write")
    p.add_argument(
        "--connection",
        default="{kind: dhc, n_streams: 4}",
        help="connection spec as YAML, e.g. '{kind: dfc, n_fracs: 4}' (default: %(default)s)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="load dtype")
    p.add_argument("--check", action="store_true", help="compare logits on random tokens")
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    import yaml

    from hyperfrac.hf.convert import convert

    spec = yaml.safe_load(args.connection)
    if not isinstance(spec, dict) or "kind" not in spec:
        raise SystemExit(f"--connection must be a mapping with a 'kind', got {args.connection!r}")
    out = convert(args.src, args.out, spec, dtype=args.dtype)
    print(f"[convert] wrote {out}")
    if args.check:
        from hyperfrac.hf.convert import max_logit_difference

        diff = max_logit_difference(args.src, out)
        print(f"[convert] max |logit difference| on random tokens: {diff:.3e}")
    return 0
