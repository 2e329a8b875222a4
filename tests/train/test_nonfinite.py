"""The NaN guard protects the checkpoints: no checkpoint ever holds non-finite parameters or
weights whose loss is non-finite, a diverging run keeps its last good checkpoint, and resume
after a raise starts from it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from hyperfrac.train import Trainer
from hyperfrac.train.checkpoint import complete_checkpoints, latest_checkpoint, load_checkpoint
from hyperfrac.train.stability import NonFiniteError
from tests.train.test_trainer import make_cfg


def _checkpoint_weights_finite(ckpt_dir: Path) -> list[bool]:
    return [all(torch.isfinite(v).all() for v in load_checkpoint(p)["model"].values()
                if v.is_floating_point())
            for p in complete_checkpoints(ckpt_dir)]


def _set_lr(trainer: Trainer, lr: float) -> None:
    """Force a learning rate past the config check (which refuses optim.lr=inf at load)."""
    trainer.scheduler.base_lrs = [lr for _ in trainer.scheduler.base_lrs]
    for g in trainer.optimizer.param_groups:
        g["lr"] = lr * trainer.scheduler.lr_lambdas[0](0)


@pytest.mark.parametrize("lr", [math.inf, 1e6])
@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_diverging_lr_never_checkpoints_broken_weights(lr, policy, tmp_path, tiny_dataset):
    overrides = ("train.steps=12", "checkpoint.interval=2", "checkpoint.keep=2",
                 f"train.on_nonfinite={policy}", "train.max_skipped_steps=3")
    trainer = Trainer(make_cfg(tmp_path, tiny_dataset, *overrides))
    _set_lr(trainer, lr)
    with pytest.raises(NonFiniteError):
        trainer.fit()
    assert all(_checkpoint_weights_finite(trainer.ckpt_dir))
    # every checkpoint that exists evaluates to a finite loss, and resume picks the newest
    for p in complete_checkpoints(trainer.ckpt_dir):
        t = Trainer(make_cfg(tmp_path, tiny_dataset, *overrides, f"checkpoint.resume={p}"))
        assert math.isfinite(t.evaluate()["loss"])


def test_resume_after_raise_starts_from_the_last_good_checkpoint(tmp_path, tiny_dataset):
    overrides = ("train.steps=8", "checkpoint.interval=2", "checkpoint.keep=5",
                 "train.on_nonfinite=raise")
    trainer = Trainer(make_cfg(tmp_path, tiny_dataset, *overrides))

    def hook(module, args, out):  # NaN training loss from step 5 on
        bad = module.training and trainer.step + 1 >= 5
        return out._replace(loss=out.loss * math.nan) if bad else out

    trainer.model.register_forward_hook(hook)
    with pytest.raises(NonFiniteError, match="step 5"):
        trainer.fit()
    assert [int(p.name.split("_")[1]) for p in complete_checkpoints(trainer.ckpt_dir)] == [2, 4]
    again = Trainer(make_cfg(tmp_path, tiny_dataset, *overrides))
    assert again.resumed_from == latest_checkpoint(trainer.ckpt_dir) and again.step == 4
    assert again.fit()["finished"]  # the fault is gone: it trains on from step 4


def test_due_checkpoint_is_postponed_past_a_skipped_step(tmp_path, tiny_dataset):
    trainer = Trainer(make_cfg(tmp_path, tiny_dataset, "train.steps=6", "checkpoint.interval=2",
                               "checkpoint.keep=5", "train.on_nonfinite=skip"))

    def hook(module, args, out):  # step 4 (a checkpoint step) has a NaN training loss
        bad = module.training and trainer.step + 1 == 4
        return out._replace(loss=out.loss * math.nan) if bad else out

    trainer.model.register_forward_hook(hook)
    trainer.fit()
    steps = [int(p.name.split("_")[1]) for p in complete_checkpoints(trainer.ckpt_dir)]
    assert steps == [2, 5, 6]  # 4 was skipped, so its checkpoint waits for step 5
    events = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "checkpoint_postponed" and e["step"] == 4 for e in events)


def test_finished_run_rerun_keeps_its_summary(tmp_path, tiny_dataset):
    cfg = make_cfg(tmp_path, tiny_dataset, "train.steps=4", "eval.interval=2")
    first = Trainer(cfg).fit()
    assert first["val_loss"] is not None and first["train_loss"] is not None
    marker = latest_checkpoint(tmp_path / "run" / "checkpoints")
    mtime = (marker / "COMPLETE").stat().st_mtime_ns
    again = Trainer(make_cfg(tmp_path, tiny_dataset, "train.steps=4", "eval.interval=2")).fit()
    assert again == first
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == first
    assert (marker / "COMPLETE").stat().st_mtime_ns == mtime  # nothing re-saved


@pytest.mark.parametrize("change", ["optim.lr=0.1", "optim.schedule=constant",
                                    "optim.weight_decay=0.5", "seed=3"])
def test_resume_refuses_a_changed_optimizer_or_seed(change, tmp_path, tiny_dataset):
    Trainer(make_cfg(tmp_path, tiny_dataset, "train.steps=6", "train.stop_at=2")).fit()
    with pytest.raises(ValueError, match=f"cannot resume .*{change.split('=')[0]}"):
        Trainer(make_cfg(tmp_path, tiny_dataset, "train.steps=6", change))
    # what may change on resume (how long, how often to log or save) still resumes
    t = Trainer(make_cfg(tmp_path, tiny_dataset, "train.steps=8", "log.interval=2"))
    assert t.step == 2


def test_weights_whose_loss_is_nan_are_not_checkpointed(tmp_path, tiny_dataset):
    """Finite training steps, finite parameters, yet the updated weights evaluate to NaN (as
    with a huge learning rate): the probe before saving catches it."""
    trainer = Trainer(make_cfg(tmp_path, tiny_dataset, "train.steps=6", "checkpoint.interval=2",
                               "checkpoint.keep=5"))

    def hook(module, args, out):  # from step 3 on, the weights' loss (eval mode) is NaN
        bad = not module.training and out.loss is not None and trainer.step >= 3
        return out._replace(loss=out.loss * math.nan) if bad else out

    trainer.model.register_forward_hook(hook)
    trainer.fit()
    assert [int(p.name.split("_")[1]) for p in complete_checkpoints(trainer.ckpt_dir)] == [2]
    assert [e["step"] for e in trainer.events if e["event"] == "checkpoint_postponed"] == [4, 5, 6]
