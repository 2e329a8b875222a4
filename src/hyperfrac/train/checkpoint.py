"""Atomic checkpoints with keep-last-k and latest-complete discovery.

Layout of a run folder::

    RUN/checkpoints/step_00000500/
        model.pt          model state dict (torch.save)
        optim.pt          optimizer + LR scheduler state
        train_state.pt    step, tokens, data-loader position, RNG states, monitor state
        config.yaml       the resolved run config
        model.safetensors portable weights (tied tensors stored once)
        COMPLETE          written last: only folders holding it count as checkpoints

The *sharded* format (``checkpoint.format=sharded``, the default under FSDP2) replaces
``model.pt``/``optim.pt``/``model.safetensors`` by ``dcp/``, a ``torch.distributed.checkpoint``
folder to which every rank writes its own shards of the model and optimizer state (keyed by
parameter name, so it loads on any number of processes, sharded or not), and
``scheduler.pt``; the other files are as above and written by rank 0.

A checkpoint is written into ``.tmp-step_XXXXXXXX`` (every file flushed and fsync'ed), the
``COMPLETE`` marker is written, and only then is the folder renamed to its final name. A crash
at any point leaves the previous checkpoint as the latest complete one; leftover temporary
folders are removed by the next save. (Atomic rename as in OLMo-core's ``checkpoint.py``;
marker-last validity as in torchtitan and Megatron.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

_STEP_DIR = re.compile(r"^step_(\d{8})$")
MARKER = "COMPLETE"
DCP_DIR = "dcp"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = complete_checkpoints(ckpt_dir)
    return done[-1] if done else None


def temporary_dir(ckpt_dir: Path, step: int) -> Path:
    """Where checkpoint ``step`` is written before its atomic rename."""
    return Path(ckpt_dir) / f".tmp-step_{step:08d}"


def begin_checkpoint(ckpt_dir: Path, step: int) -> Path:
    """Create (empty) and return :func:`temporary_dir`, removing stale temporary folders."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_dir.glob(".tmp-step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = temporary_dir(ckpt_dir, step)
    tmp.mkdir()
    return tmp


def commit_checkpoint(ckpt_dir: Path, step: int, tmp: Path, files: list[str], keep: int) -> Path:
    """Marker last, then atomic rename of ``tmp`` to ``step_XXXXXXXX``; keep the last ``keep``."""
    (tmp / MARKER).write_text(json.dumps({"step": step, "files": sorted(files)}) + "\n")
    _fsync_file(tmp / MARKER)
    _fsync_dir(tmp)
    final = ckpt_dir / f"step_{step:08d}"
    if final.exists():  # re-saving the same step (e.g. resumed and stopped again)
        old = ckpt_dir / f".tmp-old-{final.name}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(ckpt_dir)
    for old in complete_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_files(folder: Path, files: dict[str, Any]) -> list[str]:
    """Call each ``write(path)`` of ``{name: write}`` into ``folder``, fsync'ing each file."""
    for name, write in files.items():
        write(folder / name)
        _fsync_file(folder / name)
    return list(files)


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
) -> Path:
    """Write full-format checkpoint ``step`` atomically, then delete all but the last ``keep``."""
    tmp = begin_checkpoint(ckpt_dir, step)
    files = {
        "model.pt": lambda p: torch.save(model.state_dict(), p),
        "optim.pt": lambda p: torch.save(optim_state, p),
        "train_state.pt": lambda p: torch.save(train_state, p),
        "config.yaml": lambda p: p.write_text(config_yaml),
    }
    if safetensors:
        files["model.safetensors"] = lambda p: export_safetensors(model, p, config_yaml)
    return commit_checkpoint(ckpt_dir, step, tmp, write_files(tmp, files), keep)


# ------------------------------------------------------------------------- sharded format


@contextlib.contextmanager
def _dcp_mode() -> Iterator[bool]:
    """Yields DCP's ``no_dist`` (True without a process group: one process saves or loads
    everything) and silences DCP's warning that it assumes exactly that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield not (torch.distributed.is_available() and torch.distributed.is_initialized())


def is_sharded_checkpoint(path: Path) -> bool:
    """True for a checkpoint folder in the sharded (``torch.distributed.checkpoint``) format."""
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: every rank writes its shards of model and optimizer state to
    ``folder/dcp`` (works in a single process too)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _dcp_mode() as no_dist:
        dcp.save(
            {"model": model_sd, "optim": optim_sd},
            checkpoint_id=str(folder / DCP_DIR),
            no_dist=no_dist,
        )


def load_sharded(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Collective: load ``folder/dcp`` into ``model`` (and ``optimizer``) in place, resharding
    to this run's processes and sharding (FSDP2 or none)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    cid = str(Path(folder) / DCP_DIR)
    if optimizer is None:
        model_sd = get_model_state_dict(model)
        with _dcp_mode() as no_dist:
            dcp.load({"model": model_sd}, checkpoint_id=cid, no_dist=no_dist)
        set_model_state_dict(model, model_sd)
        return
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _dcp_mode() as no_dist:
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=cid, no_dist=no_dist)
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a complete checkpoint folder (CPU tensors). ``format`` says which: ``full`` holds
    ``model`` and ``optim`` state dicts; ``sharded`` holds ``scheduler`` and leaves model and
    optimizer to :func:`load_sharded`."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")

    def load(name: str) -> Any:
        try:
            return torch.load(path / name, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated or overwritten file: say which one
            raise RuntimeError(f"checkpoint file {path / name} is unreadable ({e})") from e

    common = {
        "train_state": load("train_state.pt"),
        "config_yaml": (path / "config.yaml").read_text(),
    }
    if is_sharded_checkpoint(path):
        return {"format": "sharded", "scheduler": load("scheduler.pt"), **common}
    return {"format": "full", "model": load("model.pt"), "optim": load("optim.pt"), **common}


def load_run(run_dir: Path, checkpoint: Path | None = None) -> tuple[nn.Module, Any, Path, dict]:
    """``(model with the checkpoint's weights on CPU, RunConfig, checkpoint path, train_state)``
    of a run folder written by ``hyperfrac train`` or ``hyperfrac compare`` (latest complete
    checkpoint unless ``checkpoint`` is given)."""
    import yaml

    from hyperfrac.models import build_model
    from hyperfrac.train.config import RunConfig, from_dict

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    path = checkpoint or latest_checkpoint(run_dir / "checkpoints")
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
    return model, cfg, Path(path), ckpt["train_state"]


def export_safetensors(model: nn.Module, path: Path, config_yaml: str = "") -> None:
    """Model weights as safetensors; tied tensors are stored once (``save_model``)."""
    from safetensors.torch import save_model

    save_model(model, str(path), metadata={"format": "pt", "hyperfrac_config": config_yaml})


def load_safetensors(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    load_model(model, str(path))
