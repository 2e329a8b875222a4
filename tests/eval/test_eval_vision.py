"""ViT training path of the trainer on an IDX fixture dataset: it learns, resumes exactly, and
``hyperfrac eval`` reports top-1 accuracy; the shipped ViT config builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hyperfrac.cli import main
from hyperfrac.data.vision import FILES, encode_idx
from hyperfrac.train import Trainer, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy_images(tmp_path_factory) -> Path:
    """4 classes told apart by brightness, stored as a prepared image dataset (IDX, gzip)."""
    out = tmp_path_factory.mktemp("img") / "fashion_mnist"
    out.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 512), ("test", 128)):
        labels = (np.arange(n) % 4).astype(np.uint8)
        images = np.clip(rng.normal(40 + 60 * labels[:, None, None], 20, (n, 28, 28)), 0, 255)
        (out / FILES[(split, "images")]).write_bytes(encode_idx(images.astype(np.uint8)))
        (out / FILES[(split, "labels")]).write_bytes(encode_idx(labels))
    (out / "READY").write_text("ok\n")
    return out


def _cfg(tmp_path: Path, data: Path, *extra: str):
    return load_config(
        ROOT / "configs" / "vit-fmnist-tiny.yaml",
        [
            f"data.path={data}",
            f"out_dir={tmp_path}",
            "model.dim=32",
            "model.n_layers=2",
            "model.n_heads=2",
            "train.batch_size=32",
            "train.steps=30",
            "optim.lr=3e-3",
            "optim.warmup_steps=5",
            "eval.interval=0",
            "eval.batch_size=64",
            "log.progress=never",
            "log.interval=10",
            "checkpoint.interval=0",
            *extra,
        ],
    )


def test_vit_trains_resumes_and_evaluates(tmp_path: Path, toy_images: Path, capsys) -> None:
    full = Trainer(_cfg(tmp_path, toy_images, "name=full"))
    summary = full.fit()
    assert summary["val_accuracy"] > 0.6 and summary["val_bpb"] is None  # chance is 0.25
    part = _cfg(
        tmp_path,
        toy_images,
        "name=part",
        "train.stop_at=12",
    )
    Trainer(part).fit()
    resumed = Trainer(_cfg(tmp_path, toy_images, "name=part"))
    assert resumed.step == 12
    resumed.fit()
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history[12:]]
    capsys.readouterr()
    assert main(["eval", str(full.run_dir)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["split"] == "test" and res["n"] == 128 and res["chance"] == 0.1
    assert res["accuracy"] == summary["val_accuracy"]
    lines = [json.loads(x) for x in (full.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val_accuracy" in r for r in lines)


def test_image_kind_needs_a_vit_and_says_so() -> None:
    with pytest.raises(ValueError, match="names a ViTConfig preset.*data.kind"):
        load_config(None, ["model.preset=vit-tiny"])
    with pytest.raises(ValueError, match="data.kind='cifar'"):
        load_config(ROOT / "configs" / "vit-fmnist-tiny.yaml", ["data.kind=cifar"])
