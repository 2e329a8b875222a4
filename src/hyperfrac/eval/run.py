"""Evaluate a run folder: latest checkpoint + its saved config -> val loss and bits-per-byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hyperfrac.data.prepare import open_tokens
from hyperfrac.eval.lm import evaluate_lm


def evaluate_run(
    run_dir: Path,
    *,
    checkpoint: Path | None = None,
    split: str = "val",
    max_batches: int | None = None,
    batch_size: int | None = None,
    data_path: Path | None = None,
    write: bool = True,
) -> dict[str, Any]:
    from hyperfrac.models.lm import TransformerLM
    from hyperfrac.train.checkpoint import latest_checkpoint, load_checkpoint
    from hyperfrac.train.config import RunConfig, from_dict
    from hyperfrac.train.trainer import resolve_data_path, resolve_device

    run_dir = Path(run_dir)
    ckpt_path = checkpoint or latest_checkpoint(run_dir / "checkpoints")
    if ckpt_path is None:
        raise FileNotFoundError(f"no complete checkpoint under {run_dir / 'checkpoints'}")
    ckpt = load_checkpoint(ckpt_path)
    cfg: RunConfig = from_dict(RunConfig, yaml.safe_load(ckpt["config_yaml"]))
    model = TransformerLM(cfg.model)
    model.load_state_dict(ckpt["model"])
    device = resolve_device(cfg.train.device)
    model.to(device)
    path = Path(data_path) if data_path else resolve_data_path(cfg)
    res = evaluate_lm(
        model,
        open_tokens(path, split),
        np.load(path / "token_bytes.npy"),
        seq_len=cfg.data.seq_len,
        batch_size=batch_size or cfg.eval.batch_size,
        max_batches=max_batches,
        device=device,
        precision=cfg.train.precision,
    )
    out = {
        "run": str(run_dir),
        "checkpoint": str(ckpt_path),
        "step": ckpt["train_state"]["step"],
        "split": split,
        **res,
    }
    if write:
        (run_dir / "eval.json").write_text(json.dumps(out, indent=2) + "\n")
    return out
