"""The papers' diagnostics from probe records.

* adjacent-layer cosine similarity of layer inputs, median and 5-95% band (HC Fig. 3,
  FC Fig. 2);
* unfolded connection matrices averaged over tokens (HC Fig. 7, 13);
* Amax gain of the residual mixing, single and composite, averaged over tokens (mHC Fig. 3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hyperfrac.connections import amax_gain, unfolded_connection_matrix


def adjacent_cosine(layer_inputs: list[Tensor]) -> Tensor:
    """Per-token cosine similarity between the inputs of layers k and k+1.

    layer_inputs: L tensors (N, D) (same tokens in each). Returns (L-1, N).
    """
    if len(layer_inputs) < 2:
        raise ValueError("need the inputs of at least two layers")
    sims = [torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
            for a, b in zip(layer_inputs[:-1], layer_inputs[1:], strict=True)]
    return torch.stack(sims)


def band(values: Tensor, low: float = 0.05, high: float = 0.95) -> dict[str, list[float]]:
    """Median and [low, high] quantiles along the last axis: the figures' line and band."""
    q = torch.tensor([low, 0.5, high], dtype=values.dtype)
    lo, med, hi = torch.quantile(values, q, dim=-1)
    return {"median": med.tolist(), "low": lo.tolist(), "high": hi.tolist()}


def connection_summary(matrices: list[Tensor]) -> dict[str, Tensor]:
    """Token-averaged unfolded matrices and Amax gains from per-token matrices (N, S+1, R+S).

    Unfolding is done per token and then averaged (the expected weight of each earlier output
    in each layer input). Returns ``unfolded`` (L, L+1, R, R), ``unfolded_per_stream``
    (S, L, L+1, R, R) and the four Amax gain curves (L,).
    """
    u = unfolded_connection_matrix(matrices)
    g = amax_gain(matrices)
    out = {"unfolded": u["matrix"].mean(0), "unfolded_per_stream": u["per_stream"].mean(0)}
    out.update({k: v.mean(0) for k, v in g.items()})
    return out
