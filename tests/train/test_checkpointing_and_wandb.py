"""train.activation_checkpointing (same losses and weights as without it) and log.wandb
(offline records through a stand-in module; a clear error when wandb is missing)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from hyperfrac.train import Trainer, load_config

ROOT = Path(__file__).resolve().parents[2]


def make_cfg(tmp_path: Path, data: Path, name: str, *overrides: str):
    base = [f"data.path={data}", f"out_dir={tmp_path}", f"name={name}", "data.seq_len=32",
            "train.batch_size=4", "train.steps=3", "optim.warmup_steps=1", "log.interval=1",
            "log.progress=never", "eval.interval=0", "eval.max_batches=1",
            "checkpoint.interval=0", "train.threads=1",
            "model.connection={kind: dhc, n_streams: 2, recompute: true}"]
    return load_config(ROOT / "configs" / "tiny.yaml", base + list(overrides))


@pytest.mark.parametrize("extra", [[], ["train.grad_accum=2"]], ids=["ga1", "ga2"])
def test_activation_checkpointing_trains_identically(tmp_path, tiny_dataset, extra) -> None:
    runs = {}
    for flag in ("false", "true"):
        cfg = make_cfg(tmp_path, tiny_dataset, f"ckpt-{flag}",
                       f"train.activation_checkpointing={flag}", *extra)
        trainer = Trainer(cfg)
        assert trainer.model.gradient_checkpointing is (flag == "true")
        losses = [trainer.train_step()["loss"] for _ in range(3)]
        runs[flag] = losses, {k: v.clone() for k, v in trainer.model.state_dict().items()}
    (l0, w0), (l1, w1) = runs["false"], runs["true"]
    assert l1 == pytest.approx(l0, rel=1e-6)
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], atol=1e-6, rtol=1e-5, msg=k)


class _FakeRun:
    def __init__(self, **kwargs) -> None:
        self.init, self.logged, self.finished = kwargs, [], False

    def log(self, data, step) -> None:
        self.logged.append((step, dict(data)))

    def finish(self) -> None:
        self.finished = True


def test_wandb_offline_logs_every_record(tmp_path, tiny_dataset, monkeypatch) -> None:
    runs: list[_FakeRun] = []
    fake = types.ModuleType("wandb")
    fake.util = types.SimpleNamespace(generate_id=lambda: "abc123")
    fake.init = lambda **kw: runs.append(_FakeRun(**kw)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_PROJECT", "p")
    cfg = make_cfg(tmp_path, tiny_dataset, "wb", "log.wandb=offline")
    Trainer(cfg).fit()
    (run,) = runs
    assert run.init["mode"] == "offline" and run.init["project"] == "p"
    assert run.init["id"] == "abc123" and run.init["dir"] == str(cfg.run_dir)
    assert run.init["config"]["log"]["wandb"] == "offline" and run.finished
    steps = [s for s, rec in run.logged if "grad_norm" in rec]
    assert steps == [1, 2, 3]
    # the same losses as metrics.jsonl
    import json

    jsonl = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    want = [r["loss"] for r in jsonl if "grad_norm" in r]
    assert [rec["loss"] for _, rec in run.logged if "grad_norm" in rec] == want


def test_wandb_missing_is_a_clear_error(tmp_path, tiny_dataset, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    cfg = make_cfg(tmp_path, tiny_dataset, "nowb", "log.wandb=online")
    with pytest.raises(ImportError, match=r"hyperfrac\[wandb\]"):
        Trainer(cfg).fit()
    with pytest.raises(ValueError, match="log.wandb"):
        make_cfg(tmp_path, tiny_dataset, "bad", "log.wandb=maybe")
