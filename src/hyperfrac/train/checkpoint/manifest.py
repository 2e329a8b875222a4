"""The ``COMPLETE`` marker of a checkpoint folder: written last, it lists every file with its
size and sha256 so that a load can tell a good checkpoint from a damaged one.

``COMPLETE`` is JSON::

    {"version": 2, "step": 500, "healthy": true, "hash": "sha256",
     "files": {"model.pt": {"size": 1234, "sha256": "9f86..."},
               "dcp/.metadata": {...}, "dcp/__0_0.distcp": {...}}}

Folders (``dcp/``) are listed file by file, recursively. :func:`verify_checkpoint` re-hashes
every file and raises :class:`CheckpointError` naming the first one that is missing, has
another size (truncated, replaced) or another hash (bit flips, a stale copy from another
step). Markers written by hyperfrac before this format hold file names only
(``{"step": 500, "files": ["model.pt", ...]}``): they load with a warning that they cannot be
verified.

Hashing costs one read of each file, right after it was written (from the page cache) and
once per verification; sha256 runs at about 1-2 GB/s on one core.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from hyperfrac.train.checkpoint.safe_io import CheckpointError

MARKER = "COMPLETE"
MARKER_VERSION = 2
_CHUNK = 1 << 20


def hash_file(path: Path, *, fsync: bool = False) -> dict[str, Any]:
    """``{"size", "sha256"}`` of ``path`` in one read (``fsync``: also flush it to disk)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(f.fileno())
    return {"size": size, "sha256": h.hexdigest()}


def _expand(folder: Path, names: list[str]) -> list[str]:
    """File paths (relative, ``/``-separated) of ``names`` in ``folder``; folders recursively."""
    out = []
    for name in names:
        p = folder / name
        if p.is_dir():
            out += [q.relative_to(folder).as_posix() for q in sorted(p.rglob("*")) if q.is_file()]
        elif p.is_file():
            out.append(name)
        else:
            raise CheckpointError(f"checkpoint file {p} was not written; cannot commit {folder}")
    return sorted(out)


def write_marker(folder: Path, step: int, names: list[str], *, healthy: bool = True) -> None:
    """Hash every file of ``names`` in ``folder`` and write ``COMPLETE`` last (fsync'ed, and
    atomically replacing an existing one)."""
    files = {rel: hash_file(folder / rel, fsync=True) for rel in _expand(folder, names)}
    record = {
        "version": MARKER_VERSION,
        "step": int(step),
        "healthy": bool(healthy),
        "hash": "sha256",
        "files": files,
    }
    tmp = folder / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, folder / MARKER)


def read_marker(folder: Path) -> dict[str, Any]:
    """The parsed ``COMPLETE`` of ``folder``, with ``verifiable`` (False for an old marker
    without sizes and hashes) and ``healthy`` (True when the marker predates the flag)."""
    path = Path(folder) / MARKER
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a complete checkpoint (no {MARKER} marker)")
    try:
        record = json.loads(path.read_text())
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint marker {path} is unreadable ({e})") from None
    if isinstance(files, list):  # hyperfrac 0.1.0: names only
        return {**record, "files": {n: None for n in files}, "verifiable": False, "healthy": True}
    if not isinstance(files, dict) or record.get("hash") != "sha256":
        raise CheckpointError(f"checkpoint marker {path} is unreadable (unknown layout)")
    return {**record, "verifiable": True, "healthy": bool(record.get("healthy", True))}


def marker_step(folder: Path) -> int | None:
    """The step ``COMPLETE`` records (None when absent)."""
    step = read_marker(folder).get("step")
    return None if step is None else int(step)


def verify_checkpoint(path: Path, *, expected_step: int | None = None) -> None:
    """Check every file ``COMPLETE`` lists against its recorded size and sha256.

    Raises :class:`CheckpointError` naming the file (or the marker) that does not match.
    ``expected_step``: the step the folder name says; a marker for another step (a folder
    copied over another) is refused. An old marker without hashes warns that it cannot be
    verified and only checks that its files exist.
    """
    path = Path(path)
    record = read_marker(path)
    if expected_step is not None and record.get("step") != expected_step:
        raise CheckpointError(
            f"checkpoint marker {path / MARKER} is for step {record.get('step')}, not "
            f"{expected_step} as the folder name says (a stale copy?)"
        )
    for rel, want in record["files"].items():
        f = path / rel
        if not (f.exists() if want is None else f.is_file()):
            raise CheckpointError(f"checkpoint file {f} is missing (deleted or not copied)")
        if want is None:
            continue
        size = f.stat().st_size
        if size != want["size"]:
            raise CheckpointError(
                f"checkpoint file {f} is unreadable: {size} bytes where {MARKER} records "
                f"{want['size']} (truncated or replaced)"
            )
        if hash_file(f)["sha256"] != want["sha256"]:
            raise CheckpointError(
                f"checkpoint file {f} is unreadable: its sha256 differs from the one {MARKER} "
                "records (corrupted, or a stale copy from another step)"
            )
    if not record["verifiable"]:
        warnings.warn(
            f"checkpoint {path} has an old {MARKER} marker without sizes or hashes, so it cannot "
            "be verified; re-save it (or run hyperfrac.train.checkpoint.convert_legacy_checkpoint "
            "on it) to add them",
            stacklevel=2,
        )
