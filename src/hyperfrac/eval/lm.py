"""Validation loss and bits-per-byte of a language model on a token stream.

``bits per byte = sum over predicted tokens of NLL (nats) / ln 2 / sum of their UTF-8 bytes``
(the byte length of every token id comes from the byte-level tokenizer, see
:func:`hyperfrac.data.tokenizer.token_bytes`), so numbers are comparable across tokenizers and
vocabulary sizes. The split is read as consecutive non-overlapping windows; every token except
the first of each window is predicted exactly once.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyperfrac.data.loader import IGNORE_INDEX, eval_batches
from hyperfrac.precision import autocast as precision_autocast


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    tokens: np.ndarray,
    token_bytes: np.ndarray,
    *,
    seq_len: int,
    batch_size: int = 16,
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """Returns ``{"loss": mean NLL per token (nats), "bpb": bits per byte, "tokens", "bytes"}``
    summed over this rank's windows (all-reduce the sums yourself for several ranks)."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    tb = torch.from_numpy(np.asarray(token_bytes, dtype=np.int64))
    autocast = precision_autocast(device.type, precision)
    nll = 0.0
    n_tok = 0
    n_bytes = 0
    for x, y in eval_batches(
        tokens, seq_len, batch_size, rank=rank, world_size=world_size, max_batches=max_batches
    ):
        with autocast:
            logits = model(x.to(device)).logits
        loss = F.cross_entropy(
            logits.float().flatten(0, 1),
            y.to(device).flatten(),
            reduction="sum",
            ignore_index=IGNORE_INDEX,
        )
        valid = y != IGNORE_INDEX  # (b, T); all False in a rank's padding batch
        nll += float(loss)
        n_tok += int(valid.sum())
        n_bytes += int((tb[y.clamp_min(0)] * valid).sum())
    model.train(was_training)
    return {
        "loss": nll / max(n_tok, 1),
        "bpb": nll / math.log(2) / max(n_bytes, 1),
        "tokens": n_tok,
        "bytes": n_bytes,
    }
