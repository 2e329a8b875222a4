"""Training toolkit: typed configs, tasks, the trainer loop, optimizer groups, verified
checkpoints, stability guards and metrics logging. Entry point: ``hyperfrac train CONFIG``.

Needs the ``train`` extra (``pip install 'hyperfrac[train]'``). The names below are imported
on first use, so ``hyperfrac.train.bench`` (the torch-only training-step benchmark) loads
without it.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "RunConfig": "hyperfrac.train.config",
    "dump_config": "hyperfrac.train.config",
    "load_config": "hyperfrac.train.config",
    "Trainer": "hyperfrac.train.trainer",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hyperfrac.train' has no attribute {name!r}")
    from hyperfrac.extras import require

    require("train")
    return getattr(importlib.import_module(_LAZY[name]), name)
