"""Where a report came from: the exact command, the hyperfrac version and the git commit of the
source tree that produced it (None when the package is not run from a git checkout)."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def git_commit(folder: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the checkout holding ``folder`` (default: this package's
    source), with ``-dirty`` appended when tracked files differ from it; None outside git."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=folder, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def provenance(command: Sequence[str] | None) -> dict[str, Any]:
    """``{"command", "version", "commit"}`` of this process; ``command`` is e.g. ``sys.argv``
    (the program's folder dropped, shell-quoted)."""
    from hyperfrac import __version__

    cmd = shlex.join([Path(command[0]).name, *command[1:]]) if command else None
    return {"command": cmd, "version": __version__, "commit": git_commit()}
