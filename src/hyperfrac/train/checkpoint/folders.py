"""Checkpoint folders: atomic commit, keep-last-k rotation and discovery of the newest good one.

A checkpoint is written into ``.tmp-step_XXXXXXXX`` (every file flushed and fsync'ed), the
``COMPLETE`` marker with each file's size and sha256 is written last, and only then is the
folder renamed to ``step_XXXXXXXX``. A crash at any point leaves the previous checkpoint as the
newest complete one. (Atomic rename as in OLMo-core's ``checkpoint.py``; marker-last validity
as in torchtitan and Megatron.)

Rotation (keep the last ``keep``) first renames a doomed folder to ``.trash-step_...`` and
only then deletes it, so a kill mid-delete never leaves a folder that looks complete with files
missing. It never deletes the newest *healthy* checkpoint (``healthy`` is recorded in
``COMPLETE``; a run that went non-finite keeps its last good state). Leftover ``.tmp-*`` and
``.trash-*`` folders are removed at the next save.

:func:`latest_checkpoint` returns the newest checkpoint that verifies and is healthy. Broken
ones are skipped with a warning naming the folder and the reason; when step folders exist but
none is usable it raises :class:`CheckpointError` instead of returning None, so that a resume
never silently starts afresh.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyperfrac.train.checkpoint.manifest import MARKER, read_marker, verify_checkpoint, write_marker
from hyperfrac.train.checkpoint.safe_io import CheckpointError

_STEP_DIR = re.compile(r"^step_(\d{8})$")
_LEFTOVERS = (".tmp-step_*", ".tmp-old-*", ".trash-*")


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


def folder_step(path: Path) -> int | None:
    """The step a ``step_XXXXXXXX`` folder name says (None for any other name)."""
    m = _STEP_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


def step_folders(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``step_XXXXXXXX`` folder, complete or not, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint folders holding a ``COMPLETE`` marker, oldest first (not verified)."""
    return [p for _, p in step_folders(ckpt_dir) if (p / MARKER).is_file()]


def _why_unusable(step: int, folder: Path, *, verify: bool, healthy: bool) -> str | None:
    """None when ``folder`` can be resumed from, else the reason in one sentence."""
    try:
        if verify:
            verify_checkpoint(folder, expected_step=step)
        record = read_marker(folder)
    except CheckpointError as e:
        return str(e)
    if healthy and not record["healthy"]:
        return f"{folder} is marked unhealthy (saved with non-finite state)"
    return None


def latest_checkpoint(ckpt_dir: Path, *, verify: bool = True, healthy: bool = True) -> Path | None:
    """The newest checkpoint under ``ckpt_dir`` that verifies (every file's size and sha256
    match ``COMPLETE``; ``verify=False`` only checks the marker) and, with ``healthy`` (the
    default), is not marked unhealthy.

    Returns None only when there is no ``step_*`` folder at all. Skipped folders are reported
    with a warning naming each and why; if none is usable, raises :class:`CheckpointError`.
    """
    ckpt_dir = Path(ckpt_dir)
    folders = step_folders(ckpt_dir)
    if not folders:
        return None
    skipped: list[str] = []
    for step, folder in reversed(folders):
        why = _why_unusable(step, folder, verify=verify, healthy=healthy)
        if why is None:
            if skipped:
                warnings.warn(
                    f"skipping {len(skipped)} newer checkpoint(s) that cannot be used: "
                    + "; ".join(skipped)
                    + f". Using {folder} instead",
                    stacklevel=2,
                )
            return folder
        skipped.append(f"{folder.name}: {why}")
    raise CheckpointError(
        f"none of the {len(folders)} checkpoint(s) under {ckpt_dir} can be used: "
        + "; ".join(skipped)
        + ". Restore a good copy, or move the folder away (or set checkpoint.resume=never) "
        "to start afresh"
    )


def temporary_dir(ckpt_dir: Path, step: int) -> Path:
    """Where checkpoint ``step`` is written before its atomic rename."""
    return Path(ckpt_dir) / f".tmp-step_{step:08d}"


def remove_leftovers(ckpt_dir: Path) -> None:
    """Delete temporary and trash folders left by an interrupted save or rotation."""
    for pattern in _LEFTOVERS:
        for stale in Path(ckpt_dir).glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def begin_checkpoint(ckpt_dir: Path, step: int) -> Path:
    """Create (empty) and return :func:`temporary_dir`, removing leftover folders first."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(ckpt_dir)
    tmp = temporary_dir(ckpt_dir, step)
    tmp.mkdir()
    return tmp


def discard(folder: Path) -> None:
    """Rename ``folder`` to a ``.trash-*`` name (so it no longer counts as a checkpoint), then
    delete it; an interruption leaves only trash for :func:`remove_leftovers`."""
    folder = Path(folder)
    trash = folder.parent / f".trash-{folder.name}-{uuid.uuid4().hex[:8]}"
    os.rename(folder, trash)
    _fsync_dir(folder.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _is_healthy(folder: Path) -> bool:
    try:
        return read_marker(folder)["healthy"]
    except CheckpointError:
        return False


def rotate(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the last ``keep`` complete checkpoints (``keep <= 0``: keep all), never
    the newest healthy one."""
    if keep <= 0:
        return
    done = complete_checkpoints(ckpt_dir)
    newest_healthy = next((p for p in reversed(done) if _is_healthy(p)), None)
    for old in done[:-keep]:
        if old != newest_healthy:
            discard(old)


def commit_checkpoint(
    ckpt_dir: Path, step: int, tmp: Path, files: list[str], keep: int, *, healthy: bool = True
) -> Path:
    """Marker last (sizes and hashes of ``files``, folders recursively, and ``healthy``), then
    atomic rename of ``tmp`` to ``step_XXXXXXXX``; then keep the last ``keep``."""
    ckpt_dir = Path(ckpt_dir)
    write_marker(tmp, step, files, healthy=healthy)
    _fsync_dir(tmp)
    final = ckpt_dir / f"step_{step:08d}"
    if final.exists():  # re-saving the same step (e.g. resumed and stopped again)
        old = ckpt_dir / f".trash-{final.name}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(ckpt_dir)
    rotate(ckpt_dir, keep)
    return final


def write_files(folder: Path, files: dict[str, Callable[[Path], Any]]) -> list[str]:
    """Call each ``write(path)`` of ``{name: write}`` into ``folder``, fsync'ing each file."""
    for name, write in files.items():
        write(folder / name)
        _fsync_file(folder / name)
    return list(files)
