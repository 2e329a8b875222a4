"""Saving and loading one checkpoint folder: full format, verified, without pickle.

:func:`save_checkpoint` writes the full format (``model.pt``, ``optim.pt``,
``train_state.pt``, ``config.yaml``, ``model.safetensors``) through
:func:`~hyperfrac.train.checkpoint.safe_io.save_state`, so every file loads with
``weights_only=True``; it refuses to mark a model with non-finite weights healthy.
:func:`load_checkpoint` verifies the folder against ``COMPLETE`` and then reads it safely.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyperfrac.train.checkpoint.folders import (
    begin_checkpoint,
    commit_checkpoint,
    folder_step,
    write_files,
)
from hyperfrac.train.checkpoint.manifest import MARKER, read_marker, verify_checkpoint
from hyperfrac.train.checkpoint.safe_io import CheckpointError, load_state, save_state
from hyperfrac.train.checkpoint.sharded import is_sharded_checkpoint


def first_nonfinite(state_dict: dict[str, Any]) -> str | None:
    """Name of the first floating tensor in ``state_dict`` holding NaN or inf (None if none)."""
    for name, t in state_dict.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            if not bool(torch.isfinite(t).all()):
                return name
    return None


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    *,
    model: nn.Module,
    optim_state: dict[str, Any],
    train_state: dict[str, Any],
    config_yaml: str,
    safetensors: bool = True,
    keep: int = 2,
    healthy: bool = True,
) -> Path:
    """Write full-format checkpoint ``step`` atomically, then delete all but the last ``keep``
    (never the newest healthy one).

    ``healthy=False`` records a state kept for debugging (e.g. after a non-finite step);
    :func:`~hyperfrac.train.checkpoint.latest_checkpoint` skips it by default. With
    ``healthy=True`` a model state holding NaN or inf raises :class:`CheckpointError` and
    nothing is written.
    """
    model_sd = model.state_dict()
    if healthy and (bad := first_nonfinite(model_sd)) is not None:
        raise CheckpointError(
            f"model weight {bad!r} holds NaN or inf at step {step}; refusing to save it as a "
            "healthy checkpoint (pass healthy=False to keep it for debugging)"
        )
    tmp = begin_checkpoint(ckpt_dir, step)
    files = {
        "model.pt": lambda p: save_state(model_sd, p),
        "optim.pt": lambda p: save_state(optim_state, p),
        "train_state.pt": lambda p: save_state(train_state, p),
        "config.yaml": lambda p: p.write_text(config_yaml),
    }
    if safetensors:
        files["model.safetensors"] = lambda p: export_safetensors(model, p, config_yaml)
    return commit_checkpoint(ckpt_dir, step, tmp, write_files(tmp, files), keep, healthy=healthy)


def load_checkpoint(path: Path, *, verify: bool = True) -> dict[str, Any]:
    """Read a complete checkpoint folder (CPU tensors) after checking every file against
    ``COMPLETE`` (``verify=False`` skips the hashes). ``format`` says which: ``full`` holds
    ``model`` and ``optim`` state dicts; ``sharded`` holds ``scheduler`` and leaves model and
    optimizer to :func:`~hyperfrac.train.checkpoint.load_sharded`. ``healthy`` is what the
    marker records.

    Raises :class:`CheckpointError` naming the file that is missing, damaged or needs pickle.
    """
    path = Path(path)
    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    if verify:
        verify_checkpoint(path, expected_step=folder_step(path))
    healthy = read_marker(path)["healthy"]

    def load(name: str) -> Any:
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint file {path / name} is missing")
        return load_state(path / name)

    common = {
        "train_state": load("train_state.pt"),
        "config_yaml": (path / "config.yaml").read_text(),
        "healthy": healthy,
    }
    if is_sharded_checkpoint(path):
        return {"format": "sharded", "scheduler": load("scheduler.pt"), **common}
    return {"format": "full", "model": load("model.pt"), "optim": load("optim.pt"), **common}


def export_safetensors(model: nn.Module, path: Path, config_yaml: str = "") -> None:
    """Model weights as safetensors; tied tensors are stored once (``save_model``)."""
    from safetensors.torch import save_model

    save_model(model, str(path), metadata={"format": "pt", "hyperfrac_config": config_yaml})


def load_safetensors(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    load_model(model, str(path))
