"""Training/evaluation precision names and the autocast context each one means.

``fp32`` runs as is; ``bf16`` autocasts the forward to bfloat16 (fp32 master weights and
optimizer state stay as they are). Model code knows nothing about this: the trainer, the
evaluators, the benchmarks and the analyses open this context around a forward.
"""

from __future__ import annotations

import torch

PRECISIONS = ("fp32", "bf16")


def autocast(device_type: str, precision: str) -> torch.autocast:
    """The autocast context of ``precision`` on ``device_type`` ("cpu", "cuda"); disabled for
    fp32 (so an enclosing autocast does not leak into an fp32 forward either)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; choose one of {PRECISIONS}")
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
