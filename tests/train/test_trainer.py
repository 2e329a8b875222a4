"""The training loop on a fixture corpus: learning, exact resume, atomic checkpoints, NaN guard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from hyperfrac.connections import KINDS
from hyperfrac.train import Trainer, load_config
from hyperfrac.train.checkpoint import complete_checkpoints, latest_checkpoint
from hyperfrac.train.stability import NonFiniteError

ROOT = Path(__file__).resolve().parents[2]


def make_cfg(tmp_path: Path, data: Path, *overrides: str):
    base = [
        f"data.path={data}",
        f"out_dir={tmp_path}",
        "name=run",
        "data.seq_len=32",
        "train.batch_size=8",
        "train.steps=12",
        "optim.warmup_steps=2",
        "log.interval=1",
        "log.progress=never",
        "eval.interval=0",
        "eval.max_batches=4",
        "checkpoint.interval=0",
        "train.threads=1",
    ]
    return load_config(ROOT / "configs" / "tiny.yaml", base + list(overrides))


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_run_lowers_loss_for_every_connection(kind: str, tmp_path: Path, tiny_dataset: Path):
    conn = {"hc": 2, "dhc": 2, "mhc": 2}.get(kind)
    frac = {"fc": 2, "dfc": 2}.get(kind)
    spec = (
        f"{{kind: {kind}"
        + (f", n_streams: {conn}" if conn else "")
        + (f", n_fracs: {frac}" if frac else "")
        + "}"
    )
    cfg = make_cfg(
        tmp_path,
        tiny_dataset,
        f"model.connection={spec}",
        "train.steps=25",
        "optim.lr=1e-2",
        "eval.interval=25",
    )
    trainer = Trainer(cfg)
    before = trainer.evaluate()["loss"]
    summary = trainer.fit()
    losses = [r["loss"] for r in trainer.history]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert summary["val_loss"] < before - 0.5
    assert summary["finished"] and summary["skipped_steps"] == 0


@pytest.mark.parametrize(
    "conn, extra",
    [
        ("{kind: residual}", ()),
        ("{kind: dhc, n_streams: 2}", ()),
        ("{kind: dfc, n_fracs: 2}", ("model.preset=tiny-moe", "train.precision=bf16")),
        ("{kind: mhc, n_streams: 2}", ("checkpoint.format=sharded",)),
    ],
    ids=["residual", "dhc", "dfc-moe-bf16", "mhc-sharded-checkpoint"],
)
def test_resume_gives_identical_losses_and_weights(
    conn: str, extra: tuple, tmp_path: Path, tiny_dataset: Path
):
    common = (f"model.connection={conn}", "train.steps=8", "eval.interval=4", *extra)
    straight = Trainer(make_cfg(tmp_path / "a", tiny_dataset, *common))
    straight.fit()
    first = Trainer(make_cfg(tmp_path / "b", tiny_dataset, *common, "train.stop_at=4"))
    first.fit()
    assert first.step == 4 and latest_checkpoint(first.ckpt_dir).name == "step_00000004"
    second = Trainer(make_cfg(tmp_path / "b", tiny_dataset, *common))  # resume=auto
    assert second.step == 4 and second.resumed_from is not None
    second.fit()
    a = [(r["loss"], r["grad_norm"], r["lr"]) for r in straight.history]
    b = [(r["loss"], r["grad_norm"], r["lr"]) for r in first.history + second.history]
    assert a == b  # bit-identical
    for (name, pa), pb in zip(
        straight.model.state_dict().items(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name
    # metrics.jsonl of the resumed run holds each step once, same values as the straight run
    rec_a = [r["loss"] for r in _records(straight.run_dir) if "loss" in r]
    rec_b = [r["loss"] for r in _records(second.run_dir) if "loss" in r]
    assert rec_a == rec_b and len(rec_a) == 8
    val_a = [r["val_loss"] for r in _records(straight.run_dir) if "val_loss" in r]
    val_b = [r["val_loss"] for r in _records(second.run_dir) if "val_loss" in r]
    assert val_a == val_b and len(val_a) == 2


def test_failed_checkpoint_write_keeps_previous(tmp_path: Path, tiny_dataset: Path, monkeypatch):
    cfg = make_cfg(
        tmp_path, tiny_dataset, "checkpoint.interval=2", "checkpoint.keep=2", "train.stop_at=4"
    )
    trainer = Trainer(cfg)
    trainer.fit()
    assert [p.name for p in complete_checkpoints(trainer.ckpt_dir)] == [
        "step_00000002",
        "step_00000004",
    ]
    import hyperfrac.train.checkpoint as ckpt_mod

    real_save = torch.save

    def failing_save(obj, path, *a, **k):
        if str(path).endswith("optim.pt"):
            real_save(obj, path)
            raise OSError("disk full (injected)")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", failing_save)
    cfg2 = make_cfg(tmp_path, tiny_dataset, "checkpoint.interval=2", "train.stop_at=6")
    resumed = Trainer(cfg2)
    with pytest.raises(OSError, match="injected"):
        resumed.fit()  # crashes while writing step 6
    assert resumed.step == 6
    assert latest_checkpoint(resumed.ckpt_dir).name == "step_00000004"
    assert list(resumed.ckpt_dir.glob(".tmp-step_00000006"))  # the partial write is ignored
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    again = Trainer(cfg2)
    assert again.step == 4  # the previous checkpoint is usable
    again.fit()
    assert latest_checkpoint(again.ckpt_dir).name == "step_00000006"
    assert not list(again.ckpt_dir.glob(".tmp-*"))
    assert len(complete_checkpoints(again.ckpt_dir)) == 2  # keep-last-k
    st = latest_checkpoint(again.ckpt_dir)
    assert {p.name for p in st.iterdir()} >= {
        "model.pt",
        "optim.pt",
        "train_state.pt",
        "config.yaml",
        "model.safetensors",
        "COMPLETE",
    }


def _inject_nan_at(trainer: Trainer, step: int, where: str) -> None:
    """Make the forward of optimizer step ``step`` (1-based) produce a NaN loss or gradient."""

    def hook(module, args, out):
        if trainer.step + 1 != step:
            return out
        if where == "loss":
            return out._replace(loss=out.loss * float("nan"))
        out.logits.register_hook(lambda g: g * float("nan"))
        return out

    trainer.model.register_forward_hook(hook)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_nonfinite_step_is_skipped(where: str, tmp_path: Path, tiny_dataset: Path):
    trainer = Trainer(make_cfg(tmp_path, tiny_dataset, "train.on_nonfinite=skip", "train.steps=6"))
    _inject_nan_at(trainer, 3, where)
    for _ in range(2):
        trainer.train_step()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    opt_steps = trainer.optimizer.state[trainer.model.embed.weight]["step"].item()
    rec = trainer.train_step()
    assert rec["skipped"] and not math.isfinite(
        rec["loss"] if where == "loss" else rec["grad_norm"]
    )
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # no update applied
    assert trainer.optimizer.state[trainer.model.embed.weight]["step"].item() == opt_steps
    assert trainer.events[0]["event"] == "nonfinite" and trainer.events[0]["step"] == 3
    trainer.fit()  # goes on and finishes, the event is in metrics.jsonl
    assert trainer.skipped_steps == 1
    assert all(math.isfinite(r["loss"]) for r in trainer.history[3:])


def test_nonfinite_raise_stops_with_clear_error(tmp_path: Path, tiny_dataset: Path):
    trainer = Trainer(make_cfg(tmp_path, tiny_dataset, "train.on_nonfinite=raise"))
    _inject_nan_at(trainer, 3, "loss")
    with pytest.raises(NonFiniteError, match="step 3.*on_nonfinite=skip"):
        trainer.fit()
    events = [r for r in _records(trainer.run_dir) if r.get("event") == "nonfinite"]
    assert events and events[0]["step"] == 3 and events[0]["action"] == "raise"


def test_too_many_skipped_steps_raise(tmp_path: Path, tiny_dataset: Path):
    trainer = Trainer(make_cfg(tmp_path, tiny_dataset, "train.max_skipped_steps=2"))
    trainer.model.register_forward_hook(lambda m, a, out: out._replace(loss=out.loss * math.inf))
    with pytest.raises(NonFiniteError, match="3 consecutive"):
        trainer.fit()


def test_grad_accumulation_matches_larger_batch(tmp_path: Path, tiny_dataset: Path):
    big = Trainer(make_cfg(tmp_path / "a", tiny_dataset, "train.steps=3"))
    small = Trainer(
        make_cfg(
            tmp_path / "b",
            tiny_dataset,
            "train.steps=3",
            "train.batch_size=4",
            "train.grad_accum=2",
        )
    )
    big.fit()
    small.fit()
    for ra, rb in zip(big.history, small.history, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4)
    assert big.tokens_seen == small.tokens_seen == 3 * 8 * 32


def test_bf16_moe_run_logs_router_stats(tmp_path: Path, tiny_dataset: Path):
    cfg = make_cfg(
        tmp_path,
        tiny_dataset,
        "model.preset=tiny-moe",
        "train.precision=bf16",
        "train.steps=4",
        "eval.interval=4",
    )
    trainer = Trainer(cfg)
    trainer.fit()
    rec = [r for r in _records(trainer.run_dir) if "moe_load" in r][-1]
    assert len(rec["moe_load"]) == 4 and sum(rec["moe_load"]) == pytest.approx(1.0, abs=1e-3)
    assert rec["moe_lb_loss"] >= 1.0 - 1e-3  # E * sum f P >= 1 up to routing ties
    assert 0.0 <= rec["moe_dropped"] < 1.0 and rec["aux_loss"] > 0
    assert {"loss", "bpb", "lr", "grad_norm", "tok_per_s", "eta_s", "tokens"} <= set(rec)


def test_loss_spike_is_logged(tmp_path: Path, tiny_dataset: Path):
    cfg = make_cfg(tmp_path, tiny_dataset, "train.spike_min_history=5", "train.steps=12")
    trainer = Trainer(cfg)

    def hook(module, args, out):  # a finite 3x loss at step 10
        return out._replace(loss=out.loss * 3) if trainer.step + 1 == 10 else out

    trainer.model.register_forward_hook(hook)
    trainer.fit()
    spikes = [r for r in _records(trainer.run_dir) if r.get("event") == "loss_spike"]
    assert [s["step"] for s in spikes] == [10] and spikes[0]["score"] > 6
    assert trainer.skipped_steps == 0


def test_sharded_checkpoint_layout_and_load_run(tmp_path: Path, tiny_dataset: Path):
    from hyperfrac.runs import load_run
    from hyperfrac.train.checkpoint import is_sharded_checkpoint

    cfg = make_cfg(
        tmp_path,
        tiny_dataset,
        "model.connection={kind: dhc, n_streams: 2}",
        "train.steps=3",
        "checkpoint.format=sharded",
    )
    trainer = Trainer(cfg)
    trainer.fit()
    ckpt = latest_checkpoint(trainer.ckpt_dir)
    assert is_sharded_checkpoint(ckpt)
    names = {p.name for p in ckpt.iterdir()}
    assert {"dcp", "scheduler.pt", "train_state.pt", "config.yaml", "COMPLETE"} <= names
    assert "model.pt" not in names and "optim.pt" not in names
    run = load_run(trainer.run_dir)  # eval / export / analyze path
    assert run.checkpoint == ckpt and run.train_state["step"] == 3
    for (name, a), b in zip(
        trainer.model.state_dict().items(), run.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_unreadable_checkpoint_file_is_named(tmp_path: Path, tiny_dataset: Path):
    trainer = Trainer(make_cfg(tmp_path, tiny_dataset, "train.steps=2"))
    trainer.fit()
    ckpt = latest_checkpoint(trainer.ckpt_dir)
    (ckpt / "optim.pt").write_bytes(b"not a pickle")
    with pytest.raises(RuntimeError, match="optim.pt is unreadable"):
        Trainer(make_cfg(tmp_path, tiny_dataset, "train.steps=4"))


@pytest.mark.parametrize("fp32_state,want", [(False, torch.bfloat16), (True, torch.float32)])
def test_stream_state_precision_follows_the_config(fp32_state, want, tmp_path: Path,
                                                   tiny_dataset: Path):
    """``train.fp32_stream_state`` decides the dtype of the stream state under bf16 autocast:
    what the first connection receives in the training forward."""
    cfg = make_cfg(tmp_path, tiny_dataset, "train.steps=1", "train.precision=bf16",
                   "model.connection={kind: dhc, n_streams: 2}",
                   f"train.fp32_stream_state={str(fp32_state).lower()}")
    trainer = Trainer(cfg)
    seen = []
    conn = next(m for m in trainer.model.modules() if getattr(m, "kind", None) == "dhc")
    conn.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    trainer.fit()
    assert seen and seen[0] == want
