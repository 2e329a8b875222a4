"""``hyperfrac eval RUN_DIR`` and the safetensors export of a trained run."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hyperfrac.cli import main
from hyperfrac.models import TransformerLM
from hyperfrac.train import Trainer, load_config
from hyperfrac.train.checkpoint import latest_checkpoint, load_safetensors

ROOT = Path(__file__).resolve().parents[2]


def test_eval_cli_matches_trainer_and_safetensors_roundtrip(
    tmp_path: Path, tiny_dataset: Path, capsys
) -> None:
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"data.path={tiny_dataset}",
            f"out_dir={tmp_path}",
            "data.seq_len=32",
            "train.steps=5",
            "train.batch_size=8",
            "log.progress=never",
            "eval.interval=5",
            "eval.batch_size=8",
            "model.connection={kind: fc, n_fracs: 2}",
        ],
    )
    trainer = Trainer(cfg)
    summary = trainer.fit()
    capsys.readouterr()
    assert main(["eval", str(trainer.run_dir)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res == json.loads((trainer.run_dir / "eval.json").read_text())
    assert res["step"] == 5
    assert res["loss"] == summary["val_loss"] and res["bpb"] == summary["val_bpb"]
    assert 0 < res["bpb"] < res["loss"] * 2  # bpb = loss / ln2 / (bytes per token ~ 2-4)
    fresh = TransformerLM(cfg.model)
    load_safetensors(fresh, latest_checkpoint(trainer.ckpt_dir) / "model.safetensors")
    trained, loaded = trainer.model.state_dict(), fresh.state_dict()
    assert trained.keys() == loaded.keys()
    for name in trained:
        assert torch.equal(trained[name], loaded[name]), name
    assert fresh.lm_head.weight is fresh.embed.weight  # tying survives the export
