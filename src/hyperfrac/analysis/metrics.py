"""The papers' diagnostics from probe records.

* adjacent-layer cosine similarity of layer inputs, median and 5-95% band (HC Fig. 3,
  FC Fig. 2);
* unfolded connection matrices averaged over tokens (HC Fig. 7, 13), with the weights of the
  model's final output (after the connection's ``reduce``) as one more row;
* Amax gain of the residual mixing, single and composite, averaged over tokens (mHC Fig. 3);
* stream collapse (arXiv 2606.03483): the share of the stream state's energy in its largest
  stream, max_s ||h_s||^2 / sum_s ||h_s||^2 per token (1/n balanced, 1 collapsed).
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


def final_output_weights(
    matrices: list[Tensor], reduce: Tensor | None = None
) -> dict[str, Tensor]:
    """Weight of the embedding and of every layer output in the model's final output.

    Follows where each output sits in the stream state after the last layer (the recursion of
    HC Eq. 27 carried one layer further) and applies the model's reduce: by default the
    connection's own, HC / mHC sum the streams (R = 1), FC joins the fractions (R = S,
    identity). Pre-Norm gives a row of ones, HC×n at its Pre-Norm-equivalent init a row of n.
    A learned reduce (AttnRes' final read, DeepSeek-V4's HyperHead) is passed as ``reduce``.

    Args:
        matrices: L paper-layout matrices (..., S+1, R+S), as for the unfolded matrix.
        reduce: the reduce as a matrix (..., R, S) (``reduce_weights`` of the module that
            collapses the state), broadcast against the matrices' leading dims; None for the
            connection's fixed sum / join.
    Returns:
        ``matrix`` (..., L+1, R, R) (output fraction x source fraction) and ``per_stream``
        (..., S, L+1, R, R), the part that leaves through each slot; it sums over S.
    """
    if not matrices:
        raise ValueError("need at least one connection matrix")
    mats = [m.double() for m in matrices]
    s = mats[0].shape[-2] - 1
    r = mats[0].shape[-1] - s
    lead = torch.broadcast_shapes(*(m.shape[:-2] for m in mats))
    e = torch.ones(s, 1, dtype=torch.float64) if r == 1 else torch.eye(s, dtype=torch.float64)
    carried = [e.expand(*lead, s, r)]  # (..., S, R): where output j sits in the state
    for m in mats:
        q, beta = m[..., 1:, r:], m[..., 0, r:]  # Q (..., S, S), beta (..., S)
        carried = [q.transpose(-1, -2) @ mj for mj in carried]
        carried.append(beta.unsqueeze(-1) * e)
    if reduce is None:  # (R, S): sum of the streams (R = 1) or the fractions joined (R = S)
        red = torch.ones(1, s, dtype=torch.float64) if r == 1 else torch.eye(s, dtype=torch.float64)
    else:
        red = reduce.double()
        if tuple(red.shape[-2:]) != (r, s):
            raise ValueError(f"reduce has shape {tuple(red.shape)}, expected (..., {r}, {s})")
    red_t = red.transpose(-1, -2).unsqueeze(-1)  # (..., S, R, 1): entry [i, a] = red[a, i]
    per = torch.stack([red_t * mj.unsqueeze(-2) for mj in carried], -3)
    # per: (..., S, L+1, R, R) with entry [i, j, a, b] = red[a, i] * M_j[i, b]
    return {"matrix": per.sum(-4), "per_stream": per}


def connection_summary(
    matrices: list[Tensor], reduce: Tensor | None = None
) -> dict[str, Tensor]:
    """Token-averaged unfolded matrices and Amax gains from per-token matrices (N, S+1, R+S);
    ``reduce`` (N, R, S) is a learned reduce per token (:func:`final_output_weights`).

    Unfolding is done per token and then averaged (the expected weight of each earlier output
    in each layer input). Returns ``unfolded`` (L, L+1, R, R), ``unfolded_per_stream``
    (S, L, L+1, R, R), the final output's row ``final`` (L+1, R, R) and ``final_per_stream``
    (S, L+1, R, R), and the four Amax gain curves (L,).
    """
    u = unfolded_connection_matrix(matrices)
    f = final_output_weights(matrices, reduce)
    g = amax_gain(matrices)
    out = {"unfolded": u["matrix"].mean(0), "unfolded_per_stream": u["per_stream"].mean(0),
           "final": f["matrix"].mean(0), "final_per_stream": f["per_stream"].mean(0)}
    out.update({k: v.mean(0) for k, v in g.items()})
    return out


def stream_energy_max_share(h: Tensor, *, channel_first: bool = False) -> Tensor:
    """Per token, the share of the stream state's energy in its largest stream.

    ``h``: n-stream state (..., n, D), or (B, n, C, *spatial) with ``channel_first`` (a token
    is then one spatial position). Returns max_s ||h_s||^2 / sum_s ||h_s||^2 in float64, shape
    (...) or (B, *spatial): 1/n when every stream carries the same energy, 1 when one stream
    carries all of it (collapse). A token whose state is all zeros counts as balanced (1/n).
    """
    if channel_first:
        h = h.movedim(1, -1).movedim(1, -1)  # (B, n, C, *sp) -> (B, *sp, n, C)
    energy = h.double().square().sum(-1)  # (..., n)
    total = energy.sum(-1)
    share = energy.amax(-1) / total.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(total > 0, share, torch.full_like(share, 1.0 / energy.shape[-1]))

