"""Evaluate a run folder: latest checkpoint + its saved config.

Language-model runs report, for the chosen split (default ``val``) at the top level and for every
evaluation split of the dataset under ``splits``: loss and bits-per-byte on the validation
chunks, the held-out book and the out-of-distribution text (the latter two exist for the
package corpora ``lit`` and ``lit+docs``); and under ``suites`` the three multiple-choice
suites of :mod:`hyperfrac.eval.suites`, built from the held-out text (``heldout.txt``; the
validation text ``val.txt`` for corpora without a held-out book), each with accuracy, 95 %
interval, chance level, version and item hash. Vision runs report top-1 accuracy on the test
set. :func:`evaluate_text` gives bits-per-byte on any UTF-8 text file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hyperfrac.data.dataset import load_token_bytes
from hyperfrac.data.prepare import EVAL_SPLITS, load_meta, open_tokens
from hyperfrac.eval.lm import evaluate_lm
from hyperfrac.eval.suites import SUITES, build_suite
from hyperfrac.runs import load_run, resolve_data_path


def read_user_text(path: Path) -> str:
    """A UTF-8 text file, with clear errors for missing, empty or non-UTF-8 files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--text {path}: no such file")
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"--text {path}: the file is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"--text {path}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


def run_suites(
    model,
    cfg,
    data_path: Path,
    *,
    names: tuple[str, ...] = SUITES,
    max_items: int | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Score the suites built from the dataset's held-out (else validation) text."""
    from hyperfrac.data.tokenizer import load_tokenizer
    from hyperfrac.eval.scoring import LMScorer, score_suite

    source = next((s for s in ("heldout", "val") if (data_path / f"{s}.txt").is_file()), None)
    if source is None:
        msg = f"{data_path} has no heldout.txt/val.txt; re-run `hyperfrac data prepare --force`"
        return {name: {"suite": name, "error": msg} for name in names}
    text = (data_path / f"{source}.txt").read_text("utf-8")
    meta = load_meta(data_path)
    scorer = LMScorer(
        model,
        load_tokenizer(data_path / "tokenizer.json"),
        max_seq_len=cfg.data.seq_len,
        eos_id=meta["eos_id"],
        batch_size=batch_size,
        device=next(model.parameters()).device,
        precision=cfg.train.precision,
    )
    out = {}
    for name in names:
        try:
            suite = build_suite(name, text, max_items=max_items)
        except ValueError as e:
            out[name] = {"suite": name, "source": f"{source}.txt", "error": str(e)}
            continue
        out[name] = {**score_suite(suite, scorer), "source": f"{source}.txt"}
    return out


def evaluate_run(
    run_dir: Path,
    *,
    checkpoint: Path | None = None,
    split: str = "val",
    max_batches: int | None = None,
    batch_size: int | None = None,
    data_path: Path | None = None,
    suites: tuple[str, ...] = SUITES,
    max_items: int | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate a run (see the module docstring); writes ``RUN_DIR/eval.json``."""
    run_dir = Path(run_dir)
    run = load_run(run_dir, checkpoint)
    model, cfg, ckpt_path, step, device = run.model, run.cfg, run.checkpoint, run.step, run.device
    path = Path(data_path) if data_path else resolve_data_path(cfg)
    head = {"run": str(run_dir), "checkpoint": str(ckpt_path), "step": step}
    if cfg.data.kind != "text":
        from hyperfrac.data.vision import load_images
        from hyperfrac.eval.vision import evaluate_classifier

        images, labels = load_images(path, "test")
        res = evaluate_classifier(
            model,
            images,
            labels,
            batch_size=batch_size or cfg.eval.batch_size,
            max_batches=max_batches,
            device=device,
            precision=cfg.train.precision,
        )
        out: dict[str, Any] = {**head, "split": "test", **res}
    else:
        meta = load_meta(path)
        token_bytes = load_token_bytes(path, meta["vocab_size"])
        splits = {}
        for name in dict.fromkeys([split, *EVAL_SPLITS]):
            if name not in meta["splits"]:
                continue
            splits[name] = evaluate_lm(
                model,
                open_tokens(path, name),
                token_bytes,
                seq_len=cfg.data.seq_len,
                batch_size=batch_size or cfg.eval.batch_size,
                max_batches=max_batches,
                device=device,
                precision=cfg.train.precision,
            )
        if split not in splits:
            raise KeyError(f"the dataset at {path} has no {split!r} split")
        out = {**head, "split": split, **splits[split], "splits": splits}
        if suites:
            out["suites"] = run_suites(
                model,
                cfg,
                path,
                names=suites,
                max_items=max_items,
                batch_size=batch_size or cfg.eval.batch_size,
            )
    if write:
        (run_dir / "eval.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def evaluate_text(
    run_dir: Path,
    text_file: Path,
    *,
    checkpoint: Path | None = None,
    data_path: Path | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Bits-per-byte of a run's model on a user-supplied UTF-8 text file."""
    from hyperfrac.data.tokenizer import load_tokenizer
    from hyperfrac.eval.scoring import text_bpb

    text = read_user_text(text_file)
    run = load_run(run_dir, checkpoint)
    model, cfg, ckpt_path, step = run.model, run.cfg, run.checkpoint, run.step
    if cfg.data.kind != "text":
        raise ValueError(f"{run_dir} is a vision run ({cfg.data.kind}); --text needs an LM run")
    path = Path(data_path) if data_path else resolve_data_path(cfg)
    meta = load_meta(path)
    res = text_bpb(
        model,
        load_tokenizer(path / "tokenizer.json"),
        text,
        seq_len=cfg.data.seq_len,
        eos_id=meta["eos_id"],
        batch_size=batch_size or cfg.eval.batch_size,
        device=next(model.parameters()).device,
        precision=cfg.train.precision,
    )
    return {
        "run": str(run_dir),
        "checkpoint": str(ckpt_path),
        "step": step,
        "text": str(text_file),
        **res,
    }
