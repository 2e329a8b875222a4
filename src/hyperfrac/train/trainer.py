"""The training loop: one :class:`Trainer` per run.

The trainer only runs the loop; what is trained comes from the run's :class:`~.task.Task`
(model factory, loader, objective, evaluator, reporting unit), saving and resuming from a
:class:`~.checkpointing.CheckpointManager`, console and ``metrics.jsonl`` lines from a
:class:`~.metrics.StepReporter`.

What one optimizer step does:

1. ``grad_accum`` micro-batches from the task's stateful loader, each forward under optional
   bf16 autocast, backward of ``(task loss + aux loss) / grad_accum``;
2. global gradient norm (clipped to ``optim.grad_clip`` when > 0);
3. non-finite guard: a NaN/inf loss or gradient norm skips the update (logged) or raises,
   per ``train.on_nonfinite``; the optimizer is never stepped on a bad gradient. An update that
   leaves a parameter non-finite cannot be undone and always raises;
4. AdamW step, LR schedule step; spike monitor update.

Checkpoints (every ``checkpoint.interval`` steps, at the end, at ``train.stop_at``) are written
only from a healthy state: the last step was not skipped, every parameter is finite, and the
loss of the weights being saved, measured on the last micro-batch, is finite. A due checkpoint
that is not healthy is postponed to the next healthy step (logged), so a diverging run keeps
its last good checkpoint and resume never starts from a broken one. ``checkpoint.resume:
auto`` continues from the latest complete checkpoint: a run stopped at step N and resumed
gives bit-identical losses and weights to one that ran through (tested).

Distributed runs start under ``torchrun`` (``RANK``/``WORLD_SIZE`` set): the model is wrapped
in DDP or sharded with FSDP2 from the outside (``train.parallel``, :mod:`.parallel`), after
``train.compile`` has compiled each block; each rank reads its shard of every global batch,
gradient accumulation reduces gradients only on the last micro-batch, and only rank 0 logs.
The model code itself knows nothing about this.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hyperfrac.connections import compiled_kernels, fp32_stream_state
from hyperfrac.models.lm import count_params
from hyperfrac.precision import autocast as precision_autocast
from hyperfrac.runs import resolve_device
from hyperfrac.train.checkpointing import CheckpointManager
from hyperfrac.train.config import RunConfig, dump_config, to_dict
from hyperfrac.train.metrics import MetricsLogger, StepReporter
from hyperfrac.train.optim import build_optimizer, build_scheduler
from hyperfrac.train.parallel import grad_sync, parallelize, to_float
from hyperfrac.train.stability import NonFiniteError, SpikeMonitor
from hyperfrac.train.task import Task, build_task

ModelFactory = Callable[[Task], nn.Module]
"""Builds the run's model (on CPU) from its task; the trainer moves, compiles and wraps it."""

_HINT = (
    "lower optim.lr, keep optim.grad_clip > 0, try train.precision=fp32, "
    "or set train.on_nonfinite=skip to drop such steps"
)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_model_factory(task: Task) -> nn.Module:
    return task.build_model()


def compile_blocks(model: nn.Module) -> None:
    """``torch.compile`` each transformer block in place (before any parallel wrapping, as
    torchtitan does): the unit inductor fuses; state-dict keys stay unchanged."""
    for block in model.blocks:
        block.compile()


class Trainer:
    """Builds task, model, optimizer and checkpoint manager from a :class:`RunConfig`;
    :meth:`fit` trains. ``model_factory`` replaces ``task.build_model()`` (compare uses it
    to give every arm of a seed the same initial branch weights before anything wraps the
    model)."""

    _owns_process_group = False
    logger: MetricsLogger | None = None

    def __init__(self, cfg: RunConfig, *, model_factory: ModelFactory | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = resolve_device(cfg.train.device)
        if self.world_size > 1 and not dist.is_initialized():
            self._init_process_group()
        if cfg.train.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.train.threads)
        _seed_everything(cfg.seed)

        self.task = build_task(cfg, rank=self.rank, world_size=self.world_size)
        self.model: nn.Module = (model_factory or default_model_factory)(self.task).to(
            self.device
        )
        self.n_params = count_params(self.model)
        if cfg.train.activation_checkpointing:  # per block, inside any compile or FSDP unit
            if not hasattr(self.model, "gradient_checkpointing"):
                raise ValueError(
                    f"train.activation_checkpointing: {type(self.model).__name__} has no "
                    "per-block checkpointing; set it to false"
                )
            self.model.gradient_checkpointing = True
        if cfg.train.compile:
            compile_blocks(self.model)
        # DDP wraps the model; FSDP2 shards it in place (self.model is then the sharded root)
        self.train_model: nn.Module = (
            parallelize(self.model, cfg.train.parallel, self.device)
            if self.world_size > 1
            else self.model
        )
        self.loader = self.task.make_loader()
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.steps)
        self.monitor = SpikeMonitor(
            cfg.train.spike_window, cfg.train.spike_sigma, cfg.train.spike_min_history
        )
        self.step = 0
        self.tokens_seen = 0
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.train_time_s = 0.0
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.run_dir = cfg.run_dir
        self.config_yaml = dump_config(cfg)
        self.checkpoints = CheckpointManager(
            self.run_dir, cfg.checkpoint, parallel=cfg.train.parallel if self.world_size > 1
            else None, rank=self.rank, world_size=self.world_size,
        )
        self.ckpt_dir = self.checkpoints.dir
        self.resumed_from: Path | None = None
        self._last_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        path = self.checkpoints.resume_path()
        if path is not None:
            self.load(path)

    def _init_process_group(self) -> None:
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self._owns_process_group = True

    # ------------------------------------------------------------------------------ state

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Tear down the process group this trainer started (under torchrun)."""
        if self._owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_process_group = False

    def train_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens_seen,
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
            "train_time_s": self.train_time_s,
            "loader": self.loader.state_dict(),
            "monitor": self.monitor.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }

    def save(self) -> Path | None:
        """Checkpoint the current step (collective: call on every rank)."""
        return self.checkpoints.save(
            self.step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            train_state=self.train_state(), config_yaml=self.config_yaml,
        )

    def load(self, path: Path) -> None:
        st = self.checkpoints.load(
            path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            current_config=to_dict(self.cfg),
        )
        if not self._parameters_finite():
            raise NonFiniteError(
                f"{path} holds non-finite parameters; resume from an earlier checkpoint "
                f"(checkpoint.resume=PATH) with {_HINT}"
            )
        self.step, self.tokens_seen = st["step"], st["tokens"]
        self.skipped_steps, self.consecutive_skips = st["skipped_steps"], st["consecutive_skips"]
        self.train_time_s = float(st.get("train_time_s", 0.0))
        self.loader.load_state_dict(st["loader"])
        self.monitor.load_state_dict(st["monitor"])
        torch.set_rng_state(st["rng"]["torch"])
        np.random.set_state(st["rng"]["numpy"])
        random.setstate(st["rng"]["python"])
        if st["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["rng"]["cuda"])
        self.resumed_from = Path(path)

    # ------------------------------------------------------------------------ health

    def _all_ranks(self, ok: bool) -> bool:
        """True when ``ok`` holds on every rank (collective under several ranks)."""
        if self.world_size == 1:
            return ok
        t = torch.tensor([0.0 if ok else 1.0], device=self.device)
        dist.all_reduce(t)
        return float(t) == 0.0

    def _parameters_finite(self) -> bool:
        # max |p| per tensor (one foreach kernel; NaN propagates, no overflow as with the 2-norm)
        local = [p.to_local() if hasattr(p, "to_local") else p for p in self.model.parameters()]
        local = [p for p in local if p.numel()]
        ok = bool(torch.isfinite(torch.stack(torch._foreach_norm(local, ord=math.inf))).all())
        return self._all_ranks(ok)

    @torch.no_grad()
    def _probe_loss_finite(self) -> bool:
        """Whether the current weights give a finite loss on the last micro-batch (eval mode,
        no state changes): a checkpoint must not hold weights that already evaluate to NaN."""
        if self._last_batch is None:
            return True
        was_training = self.train_model.training
        self.train_model.eval()
        try:
            with self._autocast():
                obj = self.task.objective(self.train_model, *self._last_batch)
            ok = math.isfinite(float(obj.loss))
        finally:
            self.train_model.train(was_training)
        return self._all_ranks(ok)

    def healthy(self) -> bool:
        """May the current state be checkpointed? (collective)"""
        return (self._all_ranks(self.consecutive_skips == 0) and self._parameters_finite()
                and self._probe_loss_finite())

    # ------------------------------------------------------------------------------- step

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        """Forward context: the training precision, the connection kernel backend and the
        stream-state precision."""
        train = self.cfg.train
        with precision_autocast(self.device.type, train.precision), \
                compiled_kernels(train.connection_kernels == "compiled"), \
                fp32_stream_state(train.fp32_stream_state):
            yield

    def train_step(self) -> dict[str, Any]:
        """One optimizer step (``grad_accum`` micro-batches); returns its metrics."""
        cfg = self.cfg
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        accum = cfg.train.grad_accum
        ce = torch.zeros((), device=self.device)
        aux = torch.zeros((), device=self.device)
        moe: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            x, y = self.loader.next_batch()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            # reduce gradients across ranks only once per optimizer step
            with grad_sync(self.train_model, sync=micro == accum - 1):
                with self._autocast():
                    obj = self.task.objective(self.train_model, x, y)
                ((obj.loss + obj.aux_loss) / accum).backward()
            ce += obj.loss.detach() / accum
            aux += obj.aux_loss.detach() / accum
            for k, v in obj.stats.items():
                moe[k] = moe.get(k, 0) + v.detach().float() / accum
        self._last_batch = (x, y)
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if self.world_size > 1:
            dist.all_reduce(ce)  # mean loss over ranks (SUM works on every backend)
            ce /= self.world_size
        loss, gnorm = float(ce), to_float(grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        finite = math.isfinite(loss) and math.isfinite(gnorm)
        if finite:
            self.optimizer.step()
            self.consecutive_skips = 0
            if not self._parameters_finite():
                self._broken_update(loss, gnorm)
        else:
            self._nonfinite(loss, gnorm)
        with warnings.catch_warnings():  # a skipped step calls the scheduler without the optimizer
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.step += 1
        self.tokens_seen += self.task.units_per_step
        rec: dict[str, Any] = {
            "step": self.step,
            "loss": loss,
            "aux_loss": float(aux),
            "grad_norm": gnorm,
            "lr": lr,
            "skipped": not finite,
        }
        if moe:
            rec.update(_moe_record(moe))
        return rec

    def _nonfinite(self, loss: float, gnorm: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.consecutive_skips += 1
        step = self.step + 1
        action = self.cfg.train.on_nonfinite
        self._event({"event": "nonfinite", "step": step, "loss": loss, "grad_norm": gnorm,
                     "action": action})
        if action == "raise":
            raise NonFiniteError(
                f"non-finite training signal at step {step} "
                f"(loss={loss}, grad_norm={gnorm}); {_HINT}"
            )
        if self.consecutive_skips > self.cfg.train.max_skipped_steps:
            raise NonFiniteError(
                f"{self.consecutive_skips} consecutive steps had a non-finite loss or gradient "
                f"(last: step {step}, loss={loss}, grad_norm={gnorm}) and were skipped, more "
                f"than train.max_skipped_steps={self.cfg.train.max_skipped_steps}; {_HINT}"
            )

    def _broken_update(self, loss: float, gnorm: float) -> None:
        """The update made a parameter non-finite: nothing to skip back to, so stop."""
        step = self.step + 1
        self._event({"event": "nonfinite_parameters", "step": step, "loss": loss,
                     "grad_norm": gnorm, "action": "raise"})
        raise NonFiniteError(
            f"the update of step {step} made parameters non-finite (loss={loss}, "
            f"grad_norm={gnorm}); no checkpoint holds them, resume continues from the last "
            f"good one; {_HINT}"
        )

    def _event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if self.logger is not None:
            self.logger.record(event)
            self.logger.print(
                f"[{event['event']}] "
                + ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in event.items()
                    if k != "event"
                )
            )

    # -------------------------------------------------------------------------------- eval

    def evaluate(self) -> dict[str, Any]:
        """Validation metrics of the current model (collective under several ranks)."""
        return self.task.evaluate(self.model, self.device)

    # --------------------------------------------------------------------------------- fit

    def _checkpoint(self) -> bool:
        """Save if the state is healthy; otherwise log and postpone. Returns whether saved."""
        if self.healthy():
            self.save()
            return True
        self._event({"event": "checkpoint_postponed", "step": self.step,
                     "reason": "skipped step, non-finite parameters or non-finite loss"})
        return False

    def fit(self) -> dict[str, Any]:
        """Train to ``train.steps`` (or ``train.stop_at``); returns a summary dict."""
        cfg = self.cfg
        total = cfg.train.steps
        stop = min(cfg.train.stop_at or total, total)
        start = self.step
        if start >= stop:
            return self._nothing_to_do()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(self.config_yaml)
        self.logger = log = MetricsLogger(
            self.run_dir, total_steps=total, start_step=self.step, progress=cfg.log.progress,
            tensorboard=cfg.log.tensorboard, wandb=cfg.log.wandb, config=to_dict(cfg),
            enabled=self.is_main,
        )
        log.print(
            f"run {self.run_dir} | {self.n_params / 1e6:.2f}M params | connection "
            f"{cfg.model.connection} | {cfg.train.precision}"
            f"{' compiled' if cfg.train.compile else ''}"
            f"{' checkpointed' if cfg.train.activation_checkpointing else ''} | {self.device}"
            + (f" | resumed from {self.resumed_from.name}" if self.resumed_from else "")
        )
        reporter = StepReporter(
            log, interval=cfg.log.interval, total=total, stop=stop,
            units_per_step=self.task.units_per_step, unit=self.task.unit,
            bytes_per_token=self.task.bytes_per_token,
        )
        last_val: dict[str, Any] | None = None
        save_due = False
        t_fit = time.perf_counter()
        try:
            while self.step < stop:
                rec = self.train_step()
                self.history.append(rec)
                spike = self.monitor.update(self.step, rec["loss"])
                if spike is not None:
                    self._event(spike)
                reporter.step(rec, tokens=self.tokens_seen, skipped_steps=self.skipped_steps)
                paused = time.perf_counter()
                if (cfg.eval.interval and self.step % cfg.eval.interval == 0) or self.step == total:
                    last_val = self._validate()
                every = cfg.checkpoint.interval
                save_due |= (bool(every) and self.step % every == 0) or self.step == stop
                if save_due:
                    self.train_time_s += time.perf_counter() - t_fit
                    t_fit = time.perf_counter()
                    save_due = not self._checkpoint()
                reporter.pause(time.perf_counter() - paused)
        finally:
            self.train_time_s += time.perf_counter() - t_fit
            log.close()
            self.logger = None
        summary = self._summary(last_val)
        if self.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _validate(self) -> dict[str, Any]:
        val = self.evaluate()
        shown = [k for k in self.task.shown_metrics if k in val]
        assert self.logger is not None
        self.logger.record({"step": self.step, **{f"val_{k}": val[k] for k in shown},
                            "tokens": self.tokens_seen})
        self.logger.print(f"step {self.step} | "
                          + " | ".join(f"val {k} {val[k]:.4f}" for k in shown))
        return val

    def _summary(self, last_val: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens_seen,
            "params": self.n_params,
            "skipped_steps": self.skipped_steps,
            "train_loss": self.history[-1]["loss"] if self.history else None,
            **self.task.summary_fields(last_val),
            "finished": self.step >= self.cfg.train.steps,
            "train_time_s": self.train_time_s,
        }

    def _nothing_to_do(self) -> dict[str, Any]:
        """A run resumed at (or past) its stop step trains nothing and rewrites nothing: the
        summary written when it got there is returned unchanged."""
        path = self.run_dir / "summary.json"
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError:
                old = None
            if isinstance(old, dict) and old.get("step") == self.step:
                return old
        # the summary is missing (e.g. killed right after the last checkpoint): rebuild it
        summary = self._summary(self.evaluate())
        summary["train_loss"] = _last_train_loss(self.run_dir / "metrics.jsonl", self.step)
        if self.is_main:
            path.write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def _last_train_loss(metrics: Path, step: int) -> float | None:
    """The training loss recorded for ``step`` in a run's metrics.jsonl, if any."""
    if not metrics.is_file():
        return None
    loss = None
    for line in metrics.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step") == step and "loss" in rec:
            loss = rec["loss"]
    return loss


def _moe_record(moe: dict[str, torch.Tensor]) -> dict[str, Any]:
    load = moe["load"]  # (L, E)
    return {
        "moe_lb_loss": float(moe["lb_loss"]),
        "moe_z_loss": float(moe["z_loss"]),
        "moe_dropped": float(moe["dropped"]),
        "moe_load": [round(v, 5) for v in load.mean(0).tolist()],
        "moe_load_max": float(load.max() * load.shape[-1]),
    }
