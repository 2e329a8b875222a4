"""The trainer's checkpoint manager: when and how a run's state is saved and resumed.

:class:`CheckpointManager` decides the format (``full`` from rank 0, or ``sharded`` from every
rank through ``torch.distributed.checkpoint``; ``auto`` = sharded under FSDP2), writes through
the atomic, verified layer of :mod:`hyperfrac.train.checkpoint`, finds the checkpoint to resume
from, and refuses a resume whose config differs from the checkpoint's in a way that would
silently train something else (as torchtitan's ``CheckpointManager`` owns this for its
trainer). The trainer hands it the objects to save; it holds no training state itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

from hyperfrac.train.checkpoint import (
    begin_checkpoint,
    commit_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_sharded,
    save_checkpoint,
    save_sharded,
    save_state,
    temporary_dir,
    write_files,
)
from hyperfrac.train.parallel import is_fsdp

# Config keys that may differ between a checkpoint and the run resuming it: how long to train,
# where and how fast, what to log and evaluate, and how often to save. Anything else (model,
# data, seed, optimizer, precision, batch) would make the resumed run silently differ from the
# one that was checkpointed, so it is refused. The per-rank batch may change with the number of
# processes: the loader itself refuses a different *global* batch.
RESUME_MAY_CHANGE = (
    "train.batch_size",
    "name",
    "out_dir",
    "train.steps",
    "train.stop_at",
    "train.threads",
    "train.device",
    "train.compile",
    "train.parallel",
    "train.on_nonfinite",
    "train.max_skipped_steps",
    "eval.",
    "log.",
    "checkpoint.",
)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not (prefix == "model." and k == "connection"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resume_conflicts(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs and may not change on resume."""
    a, b = _flatten(saved), _flatten(current)
    changed = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and not key.startswith(RESUME_MAY_CHANGE):
            changed.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return changed


class CheckpointManager:
    """Save and resume one run's checkpoints under ``RUN/checkpoints``."""

    def __init__(self, run_dir: Path, ccfg: Any, *, parallel: str | None, rank: int = 0,
                 world_size: int = 1) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.cfg = ccfg
        self.rank, self.world_size = rank, world_size
        self.sharded = ccfg.format == "sharded" or (ccfg.format == "auto" and parallel == "fsdp")

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    # ------------------------------------------------------------------------------ save
    def save(self, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, train_state: dict[str, Any], config_yaml: str) -> Path | None:
        """Checkpoint ``step`` (collective: call on every rank). The caller only saves a
        healthy state (finite parameters whose loss is finite)."""
        if self.sharded:
            return self._save_sharded(step, model, optimizer, scheduler, train_state,
                                      config_yaml)
        path = None
        if self.rank == 0:
            path = save_checkpoint(
                self.dir,
                step,
                model=model,
                optim_state={"optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict()},
                train_state=train_state,
                config_yaml=config_yaml,
                safetensors=self.cfg.safetensors,
                keep=self.cfg.keep,
            )
        self._barrier()
        return path

    def _save_sharded(self, step, model, optimizer, scheduler, train_state, config_yaml):
        """Every rank writes its shards into rank 0's temporary folder, then rank 0 adds the
        small files and commits (marker, atomic rename)."""
        tmp = temporary_dir(self.dir, step)
        if self.rank == 0:
            begin_checkpoint(self.dir, step)
        self._barrier()
        save_sharded(tmp, model, optimizer)  # collective
        path = None
        if self.rank == 0:
            files = write_files(
                tmp,
                {
                    "scheduler.pt": lambda p: save_state(scheduler.state_dict(), p),
                    "train_state.pt": lambda p: save_state(train_state, p),
                    "config.yaml": lambda p: p.write_text(config_yaml),
                },
            )
            path = commit_checkpoint(self.dir, step, tmp, [*files, "dcp"], self.cfg.keep)
        self._barrier()
        return path

    # ---------------------------------------------------------------------------- resume
    def resume_path(self) -> Path | None:
        """The checkpoint ``checkpoint.resume`` names: ``never`` -> None, ``auto`` -> the
        latest complete one (None in an empty folder), else that path."""
        mode = self.cfg.resume
        if mode == "never":
            return None
        if mode == "auto":
            return latest_checkpoint(self.dir)
        return Path(mode)

    def load(self, path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, current_config: dict[str, Any]) -> dict[str, Any]:
        """Load ``path`` into model, optimizer and scheduler (collective when sharded);
        returns its train state. Refuses a config that changed in a way resume would hide."""
        ckpt = load_checkpoint(path)
        saved = yaml.safe_load(ckpt["config_yaml"]) or {}
        conflicts = resume_conflicts(_resolved(saved), current_config)
        if conflicts:
            raise ValueError(
                f"cannot resume {path}: the config differs from the checkpoint's in "
                f"{'; '.join(conflicts)}. Start a new run (another name or "
                "checkpoint.resume=never) or restore those values"
            )
        if ckpt["format"] == "sharded":
            load_sharded(path, model, optimizer)  # collective, reshards as needed
            scheduler.load_state_dict(ckpt["scheduler"])
        elif is_fsdp(model):
            raise ValueError(
                f"{path} is a full-format checkpoint, which does not load into an FSDP-sharded "
                "model; resume it with train.parallel=ddp (or in one process) and save with "
                "checkpoint.format=sharded, then continue under FSDP"
            )
        else:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optim"]["optimizer"])
            scheduler.load_state_dict(ckpt["optim"]["scheduler"])
        return ckpt["train_state"]


def _resolved(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config as the current code resolves it (defaults added since are filled in)."""
    from hyperfrac.train.config import RunConfig, from_dict, to_dict

    return to_dict(from_dict(RunConfig, data))
