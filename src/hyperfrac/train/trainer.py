"""The training loop: one :class:`Trainer` per run.

What one optimizer step does:

1. ``grad_accum`` micro-batches from the stateful :class:`~hyperfrac.data.TokenLoader`, each
   forward under optional bf16 autocast, backward of ``(CE + MoE aux) / grad_accum``;
2. global gradient norm (clipped to ``optim.grad_clip`` when > 0);
3. non-finite guard: a NaN/inf loss or gradient norm skips the update (logged) or raises,
   per ``train.on_nonfinite``; the optimizer is never stepped on a bad gradient;
4. AdamW step, LR schedule step; spike monitor update.

Every ``log.interval`` steps a console line and a ``metrics.jsonl`` record; every
``eval.interval`` steps validation loss and bits-per-byte; every ``checkpoint.interval`` steps
(and at the end or at ``train.stop_at``) an atomic checkpoint holding everything an exact
resume needs (model, optimizer, scheduler, loader position, RNG states, monitor history).
``checkpoint.resume: auto`` continues from the latest complete checkpoint of the run folder:
a run stopped at step N and resumed gives bit-identical losses and weights to one that ran
through (tested in ``tests/train/test_trainer.py``).

Distributed runs start under ``torchrun`` (``RANK``/``WORLD_SIZE`` set): the model is wrapped
in DDP or sharded with FSDP2 from the outside (``train.parallel``, :mod:`.parallel`), each rank
reads its shard of every global batch, gradient accumulation reduces gradients only on the last
micro-batch, and only rank 0 logs. Checkpoints are written by rank 0 (``full`` format) or by all
ranks (``sharded``, ``torch.distributed.checkpoint``; resumable on a different number of
processes). The model code itself knows nothing about this.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hyperfrac.data.loader import TokenLoader
from hyperfrac.data.prepare import dataset_dir, load_meta, open_tokens
from hyperfrac.data.vision import ImageLoader, image_dataset_dir, load_images
from hyperfrac.eval.lm import evaluate_lm
from hyperfrac.eval.vision import evaluate_classifier
from hyperfrac.models.lm import TransformerLM, count_params
from hyperfrac.models.vit import ViT
from hyperfrac.precision import autocast as precision_autocast
from hyperfrac.train.checkpoint import (
    begin_checkpoint,
    commit_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_sharded,
    save_checkpoint,
    save_sharded,
    temporary_dir,
    write_files,
)
from hyperfrac.train.config import IMAGE_KINDS, RunConfig, dump_config
from hyperfrac.train.metrics import MetricsLogger, format_duration
from hyperfrac.train.optim import build_optimizer, build_scheduler
from hyperfrac.train.parallel import grad_sync, is_fsdp, parallelize, to_float
from hyperfrac.train.stability import NonFiniteError, SpikeMonitor


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_data_path(cfg: RunConfig) -> Path:
    if cfg.data.kind in IMAGE_KINDS:
        return Path(cfg.data.path) if cfg.data.path else image_dataset_dir(cfg.data.kind)
    return (
        Path(cfg.data.path) if cfg.data.path else dataset_dir(cfg.data.corpus, cfg.data.vocab_size)
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Builds model, data, optimizer and logger from a :class:`RunConfig`; :meth:`fit` trains."""

    def __init__(self, cfg: RunConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = resolve_device(cfg.train.device)
        if self.world_size > 1 and not dist.is_initialized():
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self._owns_process_group = True
        if cfg.train.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.train.threads)
        _seed_everything(cfg.seed)

        self.data_path = resolve_data_path(cfg)
        self.is_image = cfg.data.kind in IMAGE_KINDS
        self.model: nn.Module
        if self.is_image:
            self._setup_images()
        else:
            self._setup_text()
        self.n_params = count_params(self.model)
        # DDP wraps the model; FSDP2 shards it in place (self.model is then the sharded root)
        self.parallel: nn.Module = (
            parallelize(self.model, cfg.train.parallel, self.device)
            if self.world_size > 1
            else self.model
        )
        self.train_model = torch.compile(self.parallel) if cfg.train.compile else self.parallel
        fmt = cfg.checkpoint.format
        self.sharded_checkpoints = fmt == "sharded" or (
            fmt == "auto" and cfg.train.parallel == "fsdp"
        )
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.steps)
        self.monitor = SpikeMonitor(
            cfg.train.spike_window, cfg.train.spike_sigma, cfg.train.spike_min_history
        )
        self.step = 0
        self.tokens_seen = 0
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.config_yaml = dump_config(cfg)
        self.resumed_from: Path | None = None
        self._maybe_resume()

    def _setup_text(self) -> None:
        cfg = self.cfg
        try:
            self.meta = load_meta(self.data_path)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"no prepared dataset at {self.data_path}; run `hyperfrac data prepare --corpus "
                f"{cfg.data.corpus} --vocab-size {cfg.data.vocab_size}` first, or point "
                "data.path at a prepared dataset folder"
            ) from e
        if self.meta["vocab_size"] > cfg.model.vocab_size:
            raise ValueError(
                f"the tokenizer at {self.data_path} has {self.meta['vocab_size']} tokens but "
                f"model.vocab_size={cfg.model.vocab_size}; set model.vocab_size >= "
                f"{self.meta['vocab_size']}"
            )
        self.train_tokens = open_tokens(self.data_path, "train")
        self.val_tokens = open_tokens(self.data_path, "val")
        self.token_bytes = np.load(self.data_path / "token_bytes.npy")
        split = self.meta["splits"]["train"]
        self.bytes_per_token: float | None = split["bytes"] / split["tokens"]
        self.model = TransformerLM(cfg.model).to(self.device)
        self.loader: TokenLoader | ImageLoader = TokenLoader(
            self.train_tokens,
            cfg.data.seq_len,
            cfg.train.batch_size,
            seed=cfg.seed,
            rank=self.rank,
            world_size=self.world_size,
        )

    def _setup_images(self) -> None:
        """Image classification (ViT): train on the train images, validate on the test set."""
        cfg = self.cfg
        self.train_images, self.train_labels = load_images(self.data_path, "train")
        self.val_images, self.val_labels = load_images(self.data_path, "test")
        shape = self.train_images.shape[1:]
        if shape != (cfg.model.image_size, cfg.model.image_size) or cfg.model.in_channels != 1:
            raise ValueError(
                f"the images at {self.data_path} are {shape} with 1 channel but model.image_size="
                f"{cfg.model.image_size}, model.in_channels={cfg.model.in_channels}"
            )
        if int(self.train_labels.max()) >= cfg.model.num_classes:
            raise ValueError(
                f"labels go up to {int(self.train_labels.max())} but model.num_classes="
                f"{cfg.model.num_classes}"
            )
        self.bytes_per_token = None
        self.model = ViT(cfg.model).to(self.device)
        self.loader = ImageLoader(
            self.train_images,
            self.train_labels,
            cfg.train.batch_size,
            seed=cfg.seed,
            rank=self.rank,
            world_size=self.world_size,
        )

    # ------------------------------------------------------------------------------ state

    _owns_process_group = False

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
        if self.sharded_checkpoints:
            return self._save_sharded()
        path = None
        if self.is_main:
            path = save_checkpoint(
                self.ckpt_dir,
                self.step,
                model=self.model,
                optim_state={
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                },
                train_state=self.train_state(),
                config_yaml=self.config_yaml,
                safetensors=self.cfg.checkpoint.safetensors,
                keep=self.cfg.checkpoint.keep,
            )
        self._barrier()
        return path

    def _save_sharded(self) -> Path | None:
        """Every rank writes its shards into rank 0's temporary folder, then rank 0 adds the
        small files and commits (marker, atomic rename)."""
        tmp = temporary_dir(self.ckpt_dir, self.step)
        if self.is_main:
            begin_checkpoint(self.ckpt_dir, self.step)
        self._barrier()
        save_sharded(tmp, self.model, self.optimizer)  # collective
        path = None
        if self.is_main:
            files = write_files(
                tmp,
                {
                    "scheduler.pt": lambda p: torch.save(self.scheduler.state_dict(), p),
                    "train_state.pt": lambda p: torch.save(self.train_state(), p),
                    "config.yaml": lambda p: p.write_text(self.config_yaml),
                },
            )
            path = commit_checkpoint(
                self.ckpt_dir, self.step, tmp, [*files, "dcp"], self.cfg.checkpoint.keep
            )
        self._barrier()
        return path

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def load(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if ckpt["format"] == "sharded":
            load_sharded(path, self.model, self.optimizer)  # collective, reshards as needed
            self.scheduler.load_state_dict(ckpt["scheduler"])
        elif is_fsdp(self.model):
            raise ValueError(
                f"{path} is a full-format checkpoint, which does not load into an FSDP-sharded "
                "model; resume it with train.parallel=ddp (or in one process) and save with "
                "checkpoint.format=sharded, then continue under FSDP"
            )
        else:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optim"]["optimizer"])
            self.scheduler.load_state_dict(ckpt["optim"]["scheduler"])
        st = ckpt["train_state"]
        self.step, self.tokens_seen = st["step"], st["tokens"]
        self.skipped_steps, self.consecutive_skips = st["skipped_steps"], st["consecutive_skips"]
        self.loader.load_state_dict(st["loader"])
        self.monitor.load_state_dict(st["monitor"])
        torch.set_rng_state(st["rng"]["torch"])
        np.random.set_state(st["rng"]["numpy"])
        random.setstate(st["rng"]["python"])
        if st["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["rng"]["cuda"])
        self.resumed_from = Path(path)

    def _maybe_resume(self) -> None:
        mode = self.cfg.checkpoint.resume
        if mode == "never":
            return
        if mode == "auto":
            path = latest_checkpoint(self.ckpt_dir)
            if path is None:
                return
        else:
            path = Path(mode)
        self.load(path)

    # ------------------------------------------------------------------------------- step

    def _autocast(self) -> torch.autocast:
        return precision_autocast(self.device.type, self.cfg.train.precision)

    @property
    def _sample_size(self) -> int:
        """Tokens per sequence (text) or 1 per image: ``tokens`` counts images for a ViT."""
        return 1 if self.is_image else self.cfg.data.seq_len

    def _forward(self, x: torch.Tensor, y: torch.Tensor):
        """(loss, aux loss, MoE statistics) of one micro-batch."""
        if self.is_image:
            logits = self.train_model(x)  # (B, classes)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            return loss, loss.new_zeros(()), {}
        out = self.train_model(x, y)
        return out.loss, out.aux_loss, out.moe_stats

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
            with grad_sync(self.parallel, sync=micro == accum - 1):
                with self._autocast():
                    loss, aux_loss, moe_stats = self._forward(x, y)
                ((loss + aux_loss) / accum).backward()
            ce += loss.detach() / accum
            aux += aux_loss.detach() / accum
            for k, v in moe_stats.items():
                moe[k] = moe.get(k, 0) + v.detach().float() / accum
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
        else:
            self._nonfinite(loss, gnorm)
        with warnings.catch_warnings():  # a skipped step calls the scheduler without the optimizer
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.step += 1
        self.tokens_seen += accum * cfg.train.batch_size * self._sample_size * self.world_size
        rec: dict[str, Any] = {
            "step": self.step,
            "loss": loss,
            "aux_loss": float(aux),
            "grad_norm": gnorm,
            "lr": lr,
            "skipped": not finite,
        }
        if moe:
            load = moe["load"]  # (L, E)
            rec.update(
                {
                    "moe_lb_loss": float(moe["lb_loss"]),
                    "moe_z_loss": float(moe["z_loss"]),
                    "moe_dropped": float(moe["dropped"]),
                    "moe_load": [round(v, 5) for v in load.mean(0).tolist()],
                    "moe_load_max": float(load.max() * load.shape[-1]),
                }
            )
        return rec

    def _nonfinite(self, loss: float, gnorm: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.consecutive_skips += 1
        step = self.step + 1
        event = {
            "event": "nonfinite",
            "step": step,
            "loss": loss,
            "grad_norm": gnorm,
            "action": self.cfg.train.on_nonfinite,
        }
        self._event(event)
        hint = (
            "lower optim.lr, keep optim.grad_clip > 0, try train.precision=fp32, "
            "or set train.on_nonfinite=skip to drop such steps"
        )
        if self.cfg.train.on_nonfinite == "raise":
            raise NonFiniteError(
                f"non-finite training signal at step {step} "
                f"(loss={loss}, grad_norm={gnorm}); {hint}"
            )
        if self.consecutive_skips > self.cfg.train.max_skipped_steps:
            raise NonFiniteError(
                f"{self.consecutive_skips} consecutive steps had a non-finite loss or gradient "
                f"(last: step {step}, loss={loss}, grad_norm={gnorm}) and were skipped, more "
                f"than train.max_skipped_steps={self.cfg.train.max_skipped_steps}; {hint}"
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

    def _sum_over_ranks(self, *values: float) -> list[float]:
        """Each value summed over the ranks (one float64 all-reduce; collective)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def evaluate(self) -> dict[str, float]:
        cfg = self.cfg
        if self.is_image:
            return self._evaluate_images()
        res = evaluate_lm(
            self.model,
            self.val_tokens,
            self.token_bytes,
            seq_len=cfg.data.seq_len,
            batch_size=cfg.eval.batch_size,
            max_batches=cfg.eval.max_batches,
            device=self.device,
            precision=cfg.train.precision,
            rank=self.rank,
            world_size=self.world_size,
        )
        if self.world_size > 1:
            nll, n_tok, n_bytes = self._sum_over_ranks(
                res["loss"] * res["tokens"], res["tokens"], res["bytes"]
            )
            res = {
                "loss": nll / n_tok,
                "bpb": nll / math.log(2) / n_bytes,
                "tokens": int(n_tok),
                "bytes": int(n_bytes),
            }
        return res

    def _evaluate_images(self) -> dict[str, float]:
        """Test-set loss and top-1 accuracy (summed over ranks)."""
        cfg = self.cfg
        res = evaluate_classifier(
            self.model,
            self.val_images,
            self.val_labels,
            batch_size=cfg.eval.batch_size,
            max_batches=cfg.eval.max_batches,
            device=self.device,
            precision=cfg.train.precision,
            rank=self.rank,
            world_size=self.world_size,
        )
        if self.world_size > 1:
            nll, correct, n = self._sum_over_ranks(res["loss"] * res["n"], res["correct"], res["n"])
            res = {**res, "loss": nll / n, "accuracy": correct / n, "correct": int(correct)}
            res["n"] = int(n)
        return res

    # --------------------------------------------------------------------------------- fit

    logger: MetricsLogger | None = None

    def fit(self) -> dict[str, Any]:
        """Train to ``train.steps`` (or ``train.stop_at``); returns a summary dict."""
        cfg = self.cfg
        total = cfg.train.steps
        stop = min(cfg.train.stop_at or total, total)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(self.config_yaml)
        self.logger = MetricsLogger(
            self.run_dir,
            total_steps=total,
            start_step=self.step,
            progress=cfg.log.progress,
            tensorboard=cfg.log.tensorboard,
            enabled=self.is_main,
        )
        log = self.logger
        log.print(
            f"run {self.run_dir} | {self.n_params / 1e6:.2f}M params | connection "
            f"{cfg.model.connection} | {cfg.train.precision}"
            f"{' compiled' if cfg.train.compile else ''}"
            f" | {self.device}"
            + (f" | resumed from {self.resumed_from.name}" if self.resumed_from else "")
        )
        tokens_per_step = (
            cfg.train.grad_accum * cfg.train.batch_size * self._sample_size * self.world_size
        )
        window: list[float] = []
        t_window = time.perf_counter()
        t_start = time.perf_counter()
        steps_in_window = 0
        last_val: dict[str, float] | None = None
        last_saved = -1
        try:
            while self.step < stop:
                rec = self.train_step()
                self.history.append(rec)
                if math.isfinite(rec["loss"]):
                    window.append(rec["loss"])
                spike = self.monitor.update(self.step, rec["loss"])
                if spike is not None:
                    self._event(spike)
                steps_in_window += 1
                log.advance()
                if self.step % cfg.log.interval == 0 or self.step == stop:
                    dt = time.perf_counter() - t_window
                    tps = steps_in_window * tokens_per_step / max(dt, 1e-9)
                    eta = (stop - self.step) * dt / max(steps_in_window, 1)
                    avg = sum(window) / len(window) if window else float("nan")
                    rec.update(
                        {
                            "tokens": self.tokens_seen,
                            "loss_avg": avg,
                            "tok_per_s": tps,
                            "elapsed_s": time.perf_counter() - t_start,
                            "eta_s": eta,
                            "skipped_steps": self.skipped_steps,
                        }
                    )
                    if self.bytes_per_token:
                        rec["bpb"] = avg / math.log(2) / self.bytes_per_token
                    log.record(rec)
                    bpb = f"bpb {rec['bpb']:.3f} | " if "bpb" in rec else ""
                    unit = "img" if self.is_image else "tok"
                    line = (
                        f"step {self.step:>{len(str(total))}}/{total} | loss {avg:.4f} | "
                        f"{bpb}lr {rec['lr']:.2e} | gnorm "
                        f"{rec['grad_norm']:.3f} | {tps / 1e3:.2f}k {unit}/s | "
                        f"eta {format_duration(eta)}"
                    )
                    if "moe_lb_loss" in rec:
                        line += (
                            f" | lb {rec['moe_lb_loss']:.3f} drop "
                            f"{100 * rec['moe_dropped']:.1f}% max-load "
                            f"{rec['moe_load_max']:.2f}"
                        )
                    if self.skipped_steps:
                        line += f" | skipped {self.skipped_steps}"
                    log.print(line)
                    window, steps_in_window = [], 0
                    t_window = time.perf_counter()
                paused = time.perf_counter()
                if (cfg.eval.interval and self.step % cfg.eval.interval == 0) or self.step == total:
                    last_val = self.evaluate()
                    shown = [k for k in ("loss", "bpb", "accuracy") if k in last_val]
                    log.record(
                        {
                            "step": self.step,
                            **{f"val_{k}": last_val[k] for k in shown},
                            "tokens": self.tokens_seen,
                        }
                    )
                    log.print(
                        f"step {self.step} | "
                        + " | ".join(f"val {k} {last_val[k]:.4f}" for k in shown)
                    )
                if cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0:
                    self.save()
                    last_saved = self.step
                t_window += time.perf_counter() - paused
            if last_saved != self.step:
                self.save()
        finally:
            log.close()
            self.logger = None
        summary = {
            "step": self.step,
            "tokens": self.tokens_seen,
            "params": self.n_params,
            "skipped_steps": self.skipped_steps,
            "train_loss": self.history[-1]["loss"] if self.history else None,
            "val_loss": last_val["loss"] if last_val else None,
            "val_bpb": last_val.get("bpb") if last_val else None,
            **(
                {"val_accuracy": last_val["accuracy"] if last_val else None}
                if self.is_image
                else {}
            ),
            "finished": self.step >= total,
        }
        if self.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
