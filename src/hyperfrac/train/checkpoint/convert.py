"""Explicit, trusted conversion of checkpoints written before safe and verified checkpoints.

Run it yourself, only on a folder you trust (it unpickles files that need pickle)::

    python -c "from hyperfrac.train.checkpoint import convert_legacy_checkpoint as c; c('RUN')"

Each ``.pt`` file that :func:`~hyperfrac.train.checkpoint.safe_io.load_state` refuses is read
with ``weights_only=False`` and re-saved in the safe format; then ``COMPLETE`` is rewritten
with every file's size and sha256. Nothing else in hyperfrac ever loads with pickle.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hyperfrac.train.checkpoint.folders import complete_checkpoints
from hyperfrac.train.checkpoint.manifest import MARKER, read_marker, verify_checkpoint, write_marker
from hyperfrac.train.checkpoint.safe_io import (
    CheckpointError,
    UnsafeCheckpointError,
    load_state,
    save_state,
)


def _checkpoint_folders(path: Path) -> list[Path]:
    if (path / MARKER).is_file():
        return [path]
    for ckpt_dir in (path, path / "checkpoints"):
        found = complete_checkpoints(ckpt_dir)
        if found:
            return found
    raise CheckpointError(
        f"{path} holds no complete checkpoint; pass a checkpoint folder (with {MARKER}), a "
        "checkpoints folder or a run folder"
    )


def _convert_folder(folder: Path) -> list[Path]:
    record = read_marker(folder)
    if record["verifiable"]:
        verify_checkpoint(folder)  # never "convert" a damaged checkpoint into a good one
    converted = []
    for f in sorted(folder.glob("*.pt")):
        try:
            load_state(f)
        except UnsafeCheckpointError:
            obj = torch.load(f, map_location="cpu", weights_only=False)  # trusted by the caller
            tmp = f.with_name(f.name + ".converting")
            save_state(obj, tmp)
            tmp.replace(f)
            converted.append(f)
    write_marker(folder, record["step"], list(record["files"]), healthy=record["healthy"])
    return converted


def convert_legacy_checkpoint(path: Path | str) -> list[Path]:
    """Convert every checkpoint in ``path`` (a checkpoint folder, a ``checkpoints`` folder or a
    run folder) to the safe, verified format in place; returns the ``.pt`` files rewritten.

    Only for folders you trust: files that need pickle are unpickled here (and only here).
    Afterwards every file loads with ``weights_only=True`` and ``COMPLETE`` records sizes and
    sha256 hashes. A checkpoint whose verified marker does not match its files is refused.
    """
    path = Path(path)
    if path.name == "dcp" and (path.parent / MARKER).is_file():
        path = path.parent
    out: list[Path] = []
    for folder in _checkpoint_folders(path):
        out += _convert_folder(folder)
    return out
