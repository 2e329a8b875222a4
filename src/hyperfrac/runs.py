"""Run folders: where a run's data lives, which device it uses, and loading a trained run.

One module for everything that *reads* a run folder written by ``hyperfrac train`` or
``hyperfrac compare`` (``eval``, ``analyze``, ``export``, ``generate`` all go through
:func:`load_run`), below both the trainer and the evaluators so that neither imports the
other. Checkpoint files are read by :mod:`hyperfrac.train.checkpoint` (safe, verified loading).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_data_path(cfg: Any) -> Path:
    """The prepared dataset folder of a :class:`~hyperfrac.train.RunConfig`: ``data.path`` when
    set, else the cache folder of its corpus (text) or image dataset (the task decides)."""
    from hyperfrac.train.task import task_class

    return task_class(cfg.data.kind).data_path_for(cfg)


@dataclass
class LoadedRun:
    """A trained run read back from its folder."""

    model: nn.Module
    """The model with the checkpoint's weights, in eval mode, on ``device``."""
    cfg: Any
    """The run's resolved :class:`~hyperfrac.train.RunConfig` (from the checkpoint)."""
    checkpoint: Path
    """The checkpoint folder the weights came from."""
    train_state: dict[str, Any]
    """Step, tokens seen, loader/RNG state of that checkpoint."""
    run_dir: Path

    @property
    def step(self) -> int:
        return int(self.train_state["step"])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def data_path(self) -> Path:
        return resolve_data_path(self.cfg)


def load_run(
    run_dir: str | Path, checkpoint: str | Path | None = None, *, device: str | None = None
) -> LoadedRun:
    """Load a run folder's latest complete checkpoint (or ``checkpoint``) onto ``device``
    (default: the run's own ``train.device``)."""
    import yaml

    from hyperfrac.models import build_model
    from hyperfrac.train.checkpoint import latest_checkpoint, load_checkpoint, load_sharded
    from hyperfrac.train.config import RunConfig, from_dict

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir / "checkpoints")
    if path is None:
        raise FileNotFoundError(
            f"no complete checkpoint under {run_dir / 'checkpoints'}; is {run_dir} a run folder "
            "written by `hyperfrac train` or `hyperfrac compare`?"
        )
    ckpt = load_checkpoint(path)
    cfg = from_dict(RunConfig, yaml.safe_load(ckpt["config_yaml"]))
    model = build_model(cfg.model)
    if ckpt["format"] == "sharded":
        load_sharded(path, model)
    else:
        model.load_state_dict(ckpt["model"])
    model.to(resolve_device(device or cfg.train.device)).eval()
    return LoadedRun(model, cfg, path, ckpt["train_state"], run_dir)
