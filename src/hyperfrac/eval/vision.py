"""Top-1 accuracy (with a 95 % Wilson interval) and loss of an image classifier.

Axis legend: N images, B batch, C classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyperfrac.data.loader import shard_batches
from hyperfrac.data.vision import to_tensor
from hyperfrac.eval.scoring import wilson_interval
from hyperfrac.precision import autocast as precision_autocast


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 256,
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """``{"loss", "accuracy", "correct", "n", "ci95", "chance"}`` over this rank's images
    (image i belongs to rank ``i % world_size``), in order."""
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"need as many labels as images, got {len(images)} and {len(labels)}")
    was_training = model.training
    model.eval()
    device = torch.device(device)
    autocast = precision_autocast(device.type, precision)
    nll, correct, n, n_classes = 0.0, 0, 0, 0
    for idx, real in shard_batches(
        len(images), batch_size, rank=rank, world_size=world_size, max_batches=max_batches
    ):
        idx = idx.numpy()
        x = to_tensor(images[idx]).to(device)  # (B, 1, H, W)
        y = torch.from_numpy(labels[idx].astype(np.int64)).to(device)  # (B,)
        with autocast:
            logits = model(x).float()  # (B, C)
        n_classes = logits.shape[-1]
        if not real:  # this rank's share ran out; the forward only keeps FSDP ranks in step
            continue
        nll += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        n += len(idx)
    model.train(was_training)
    lo, hi = wilson_interval(correct, n)
    return {
        "loss": nll / max(n, 1),
        "accuracy": correct / max(n, 1),
        "correct": correct,
        "n": n,
        "ci95": [lo, hi],
        "chance": 1.0 / max(n_classes, 1),
    }
