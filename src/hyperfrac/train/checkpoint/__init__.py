"""Checkpoints that are atomic, verified and safe to open.

Layout of a run folder::

    RUN/checkpoints/step_00000500/
        model.pt          model state dict
        optim.pt          optimizer + LR scheduler state
        train_state.pt    step, tokens, data-loader position, RNG states, monitor state
        config.yaml       the resolved run config
        model.safetensors portable weights (tied tensors stored once)
        COMPLETE          written last: JSON with every file's size and sha256, the step and
                          whether the state is healthy (finite); only folders holding it count

The *sharded* format (``checkpoint.format=sharded``, the default under FSDP2) replaces
``model.pt``/``optim.pt``/``model.safetensors`` by ``dcp/``, a ``torch.distributed.checkpoint``
folder to which every rank writes its own shards, and ``scheduler.pt``; the other files are as
above and written by rank 0. ``COMPLETE`` lists the files of ``dcp/`` one by one.

The guarantees, each in its own module:

* **No code runs when a run folder is opened** (:mod:`.safe_io`, :mod:`.sharded`): every
  ``.pt`` file is read with ``torch.load(weights_only=True)`` and DCP metadata with an
  allow-listed unpickler; a file that needs pickle raises :class:`UnsafeCheckpointError`.
  Older folders: :func:`convert_legacy_checkpoint` (explicit, for folders you trust).
* **Damage is detected** (:mod:`.manifest`): loading checks sizes and hashes and names the
  file that differs (:func:`verify_checkpoint`).
* **Crashes leave a usable checkpoint** (:mod:`.folders`): write to a temporary folder,
  marker last, atomic rename; rotation renames before deleting and never deletes the newest
  healthy checkpoint; :func:`latest_checkpoint` falls back past broken checkpoints with a
  warning and raises if none is usable.
"""

from __future__ import annotations

import torch  # noqa: F401  (tests patch torch.save through this module)

from hyperfrac.train.checkpoint.convert import convert_legacy_checkpoint
from hyperfrac.train.checkpoint.folders import (
    begin_checkpoint,
    commit_checkpoint,
    complete_checkpoints,
    discard,
    latest_checkpoint,
    remove_leftovers,
    rotate,
    step_folders,
    temporary_dir,
    write_files,
)
from hyperfrac.train.checkpoint.manifest import MARKER, read_marker, verify_checkpoint
from hyperfrac.train.checkpoint.safe_io import (
    CheckpointError,
    UnsafeCheckpointError,
    load_state,
    save_state,
)
from hyperfrac.train.checkpoint.sharded import (
    DCP_DIR,
    is_sharded_checkpoint,
    load_sharded,
    save_sharded,
)
from hyperfrac.train.checkpoint.store import (
    export_safetensors,
    first_nonfinite,
    load_checkpoint,
    load_safetensors,
    save_checkpoint,
)

__all__ = [
    "DCP_DIR",
    "MARKER",
    "CheckpointError",
    "UnsafeCheckpointError",
    "begin_checkpoint",
    "commit_checkpoint",
    "complete_checkpoints",
    "convert_legacy_checkpoint",
    "discard",
    "export_safetensors",
    "first_nonfinite",
    "is_sharded_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_safetensors",
    "load_sharded",
    "load_state",
    "read_marker",
    "remove_leftovers",
    "rotate",
    "save_checkpoint",
    "save_sharded",
    "save_state",
    "step_folders",
    "temporary_dir",
    "verify_checkpoint",
    "write_files",
]

