"""torch.compile and the compiled connection kernels in training match eager (the model
compile is slow: inductor compiles C++ for tens of seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperfrac.train import Trainer, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_compiled_training_matches_eager(preset: str, tmp_path: Path, tiny_dataset: Path) -> None:
    def run(name: str, compile_: bool) -> list[float]:
        cfg = load_config(
            ROOT / "configs" / "tiny.yaml",
            [
                f"data.path={tiny_dataset}",
                f"out_dir={tmp_path}",
                f"name={name}",
                f"model.preset={preset}",
                "model.connection={kind: dhc, n_streams: 2}",
                "data.seq_len=32",
                "train.batch_size=4",
                "train.steps=4",
                "log.progress=never",
                "eval.interval=0",
                "eval.max_batches=1",
                f"train.compile={str(compile_).lower()}",
            ],
        )
        trainer = Trainer(cfg)
        trainer.fit()
        return [r["loss"] for r in trainer.history]

    eager, compiled = run("eager", False), run("compiled", True)
    assert compiled == pytest.approx(eager, rel=2e-3)


def test_compiled_connection_kernels_train_like_eager(tmp_path: Path, tiny_dataset: Path) -> None:
    """``train.connection_kernels=compiled`` (fused kernels, eager model): the same losses as
    the eager kernels, fp32, to the reordering of fp32 sums."""

    def run(name: str, kernels: str) -> list[float]:
        cfg = load_config(
            ROOT / "configs" / "tiny.yaml",
            [f"data.path={tiny_dataset}", f"out_dir={tmp_path}", f"name={name}",
             "model.connection={kind: dhc, n_streams: 2}", "data.seq_len=32",
             "train.batch_size=4", "train.steps=3", "log.progress=never", "eval.interval=0",
             "eval.max_batches=1", f"train.connection_kernels={kernels}"],
        )
        trainer = Trainer(cfg)
        trainer.fit()
        return [r["loss"] for r in trainer.history]

    assert run("fused", "compiled") == pytest.approx(run("eager", "eager"), rel=1e-5)


def test_connection_kernels_must_be_a_known_backend(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="connection_kernels"):
        load_config(ROOT / "configs" / "tiny.yaml", ["train.connection_kernels=fused"])
