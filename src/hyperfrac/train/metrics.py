"""Run logging: ``metrics.jsonl`` always, a console line every N steps, optional progress bar
(only on a terminal), optional TensorBoard and optional Weights & Biases (``log.wandb``:
online, or offline into ``run_dir/wandb`` without network). Only rank 0 writes."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricsLogger:
    """Append records to ``run_dir/metrics.jsonl``; print lines; drive a tqdm bar."""

    def __init__(
        self,
        run_dir: Path,
        *,
        total_steps: int,
        start_step: int = 0,
        progress: str = "auto",
        tensorboard: bool = False,
        wandb: str = "disabled",
        config: dict[str, Any] | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._bar = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        self._file = open(self.path, "a")
        use_bar = progress == "always" or (progress == "auto" and sys.stdout.isatty())
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, leave=True
            )
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("log.tensorboard=true needs `pip install tensorboard`") from e
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        if wandb != "disabled":
            self._wandb = _start_wandb(run_dir, wandb, config)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records of steps after the checkpoint (they will be redone)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if rec.get("step", 0) <= step:
                keep.append(line)
        self.path.write_text("".join(k + "\n" for k in keep))

    def record(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, rec.get("step", 0))
        if self._wandb is not None:
            scalars = {k: v for k, v in rec.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
            if scalars:
                self._wandb.log(scalars, step=rec.get("step", 0))

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _start_wandb(run_dir: Path, mode: str, config: dict[str, Any] | None):
    """A W&B run for ``run_dir`` (one id per run folder, so a resumed run continues it) in
    project ``$WANDB_PROJECT`` or ``hyperfrac``."""
    try:
        import wandb
    except ImportError as e:
        raise ImportError(
            f"log.wandb={mode} needs Weights & Biases: pip install 'hyperfrac[wandb]' "
            "(or set log.wandb=disabled)"
        ) from e
    id_file = run_dir / "wandb_id.txt"
    if not id_file.is_file():
        id_file.write_text(wandb.util.generate_id() + "\n")
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "hyperfrac"), name=run_dir.name,
        id=id_file.read_text().strip(), resume="allow", dir=str(run_dir), mode=mode,
        config=config,
    )


class StepReporter:
    """Console lines and ``metrics.jsonl`` records of the training steps, every
    ``log.interval`` steps: mean loss over the window, bits per byte (text), throughput in the
    task's unit, ETA. Time spent outside the steps (evaluation, checkpoints) is excluded from
    throughput via :meth:`pause`."""

    def __init__(self, log: MetricsLogger, *, interval: int, total: int, stop: int,
                 units_per_step: int, unit: str, bytes_per_token: float | None) -> None:
        self.log, self.interval, self.total, self.stop = log, interval, total, stop
        self.units_per_step, self.unit, self.bytes_per_token = units_per_step, unit, bytes_per_token
        self.window: list[float] = []
        self.steps_in_window = 0
        self.t_start = self.t_window = time.perf_counter()

    def step(self, rec: dict[str, Any], *, tokens: int, skipped_steps: int) -> None:
        """Account one finished step; on a reporting step, record and print it."""
        if math.isfinite(rec["loss"]):
            self.window.append(rec["loss"])
        self.steps_in_window += 1
        self.log.advance()
        step = rec["step"]
        if step % self.interval and step != self.stop:
            return
        dt = time.perf_counter() - self.t_window
        tps = self.steps_in_window * self.units_per_step / max(dt, 1e-9)
        eta = (self.stop - step) * dt / max(self.steps_in_window, 1)
        avg = sum(self.window) / len(self.window) if self.window else float("nan")
        rec.update({"tokens": tokens, "loss_avg": avg, "tok_per_s": tps,
                    "elapsed_s": time.perf_counter() - self.t_start, "eta_s": eta,
                    "skipped_steps": skipped_steps})
        if self.bytes_per_token:
            rec["bpb"] = avg / math.log(2) / self.bytes_per_token
        self.log.record(rec)
        bpb = f"bpb {rec['bpb']:.3f} | " if "bpb" in rec else ""
        line = (
            f"step {step:>{len(str(self.total))}}/{self.total} | loss {avg:.4f} | "
            f"{bpb}lr {rec['lr']:.2e} | gnorm {rec['grad_norm']:.3f} | "
            f"{tps / 1e3:.2f}k {self.unit}/s | eta {format_duration(eta)}"
        )
        if "moe_lb_loss" in rec:
            line += (f" | lb {rec['moe_lb_loss']:.3f} drop {100 * rec['moe_dropped']:.1f}% "
                     f"max-load {rec['moe_load_max']:.2f}")
        if skipped_steps:
            line += f" | skipped {skipped_steps}"
        self.log.print(line)
        self.window, self.steps_in_window = [], 0
        self.t_window = time.perf_counter()

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` of non-training time out of the current window's throughput."""
        self.t_window += seconds
