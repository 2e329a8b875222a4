"""The sharded checkpoint format: ``torch.distributed.checkpoint`` (DCP) with safe reading.

``checkpoint.format=sharded`` (the default under FSDP2) stores model and optimizer state in
``dcp/``, to which every rank writes its own shards (keyed by parameter name, so it loads on any
number of processes, sharded or not).

DCP itself reads ``dcp/.metadata`` with ``pickle.load`` and non-tensor entries with
``torch.load(weights_only=False)``; both could run code from a shared run folder. Here the
metadata is read by an unpickler that only knows DCP's own metadata records (dataclasses and
enums of its ``metadata`` and ``filesystem`` modules), ``torch.Size``,
torch dtypes and layouts and ``pathlib`` paths, and non-tensor entries with
``weights_only=True``; anything else raises :class:`UnsafeCheckpointError` before it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import pickle
import warnings
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyperfrac.train.checkpoint.safe_io import (
    UnsafeCheckpointError,
    refusal_message,
    unpickler_reason,
)

DCP_DIR = "dcp"

_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_DCP_METADATA_CLASSES = {
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only the globals a DCP ``.metadata`` file uses."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _DCP_METADATA_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module in _DCP_MODULES:  # DCP's own record types: dataclasses and enums only
            cls = getattr(importlib.import_module(module), name, None)
            if isinstance(cls, type) and (dataclasses.is_dataclass(cls) or issubclass(cls, Enum)):
                return cls
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"it references {module}.{name}")


def read_dcp_metadata(path: Path) -> Any:
    """The DCP ``Metadata`` in ``path`` (``dcp/.metadata``), unpickled with an allow-list."""
    try:
        with open(path, "rb") as f:
            return _MetadataUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            refusal_message(Path(path), str(e), convertible=False)
        ) from None


def _safe_reader(checkpoint_id: str) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        """``FileSystemReader`` whose ``read_metadata`` uses :func:`read_dcp_metadata`."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = read_dcp_metadata(Path(self._get_metadata_path(kwargs.get("rank"))))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(checkpoint_id)


def _safe_planner(checkpoint_id: str) -> Any:
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class SafeLoadPlanner(DefaultLoadPlanner):
        """``DefaultLoadPlanner`` that reads non-tensor entries with ``weights_only=True``."""

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            try:
                obj = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as e:
                where = Path(checkpoint_id)
                detail = f"entry {read_item.dest_index.fqn}: {unpickler_reason(e)}"
                raise UnsafeCheckpointError(
                    refusal_message(where, detail, convertible=False)
                ) from None
            super().load_bytes(read_item, _as_bytes(obj))

    return SafeLoadPlanner()


def _as_bytes(obj: Any) -> io.BytesIO:
    """Re-serialise an already safely loaded object so the parent ``load_bytes`` (which uses
    ``weights_only=False``) only ever sees bytes written here."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


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
            checkpoint_id=str(Path(folder) / DCP_DIR),
            no_dist=no_dist,
        )


def load_sharded(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Collective: load ``folder/dcp`` into ``model`` (and ``optimizer``) in place, resharding
    to this run's processes and sharding (FSDP2 or none). Verify the folder first
    (:func:`~hyperfrac.train.checkpoint.load_checkpoint` does)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    cid = str(Path(folder) / DCP_DIR)
    read_dcp_metadata(Path(cid) / ".metadata")  # refuse an unsafe file before DCP sees it
    if optimizer is None:
        model_sd = get_model_state_dict(model)
        state = {"model": model_sd}
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
    with _dcp_mode() as no_dist:
        try:
            dcp.load(
                state, storage_reader=_safe_reader(cid), planner=_safe_planner(cid), no_dist=no_dist
            )
        except CheckpointException as e:  # DCP wraps every rank's error: surface a refusal
            for exc, _ in e.failures.values():
                if isinstance(exc, UnsafeCheckpointError):
                    raise exc from None
            raise
    if optimizer is None:
        set_model_state_dict(model, model_sd)
    else:
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
