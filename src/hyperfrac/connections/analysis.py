"""Introspection the papers' analyses need: unfolded matrices, Amax gain, parameter/FLOP
overheads. Works on the paper-layout matrices of any connection kind.

Paper layout of one layer (S slots, R branch-input slots): M = [[0_{1xR}, beta], [P, Q]],
shape (S+1, R+S); HC/mHC have R = 1, FC has R = S = m.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _split(m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Paper matrix (..., S+1, R+S) -> P (..., S, R), Q (..., S, S), beta (..., S)."""
    s = m.shape[-2] - 1
    r = m.shape[-1] - s
    if r < 1:
        raise ValueError(f"not a connection matrix: shape {tuple(m.shape)}")
    return m[..., 1:, :r], m[..., 1:, r:], m[..., 0, r:]


def unfolded_connection_matrix(matrices: Sequence[Tensor]) -> dict[str, Tensor]:
    """Unfold a stack of connection matrices into layer-input weights (HC Eq. 27-29).

    The input of layer k (1-based) is a weighted sum of the embedding (j = 0) and the outputs of
    layers j = 1..k-1: c_kj = B^j (prod_{t=j+1}^{k-1} A_r^t) A_m^k. With fractions the weights
    are (R x R) blocks mapping output fractions to input fractions.

    Args:
        matrices: L paper-layout matrices (..., S+1, R+S), e.g. ``conn.connection_matrix(h)``
            per layer; leading dims (tokens) are kept.
    Returns:
        ``matrix``: (..., L, L+1, R, R), zero on and above the diagonal j >= k;
        ``per_stream``: (..., S, L, L+1, R, R), the contribution routed through each slot
        (HC Fig. 13); it sums over S to ``matrix``.
    """
    if not matrices:
        raise ValueError("need at least one connection matrix")
    ps, qs, bs = zip(*(_split(m.double()) for m in matrices), strict=True)
    s, r = ps[0].shape[-2], ps[0].shape[-1]
    lead = torch.broadcast_shapes(*(p.shape[:-2] for p in ps))
    n_layers = len(matrices)
    # E maps the embedding / a layer output (R, Ds) onto the slots: HC copies (1_S), FC splits (I).
    e = torch.ones(s, 1, dtype=torch.float64) if r == 1 else torch.eye(s, dtype=torch.float64)
    carried = [e.expand(*lead, s, r)]  # M_j (..., S, R): where output j currently sits
    per_stream = torch.zeros(*lead, s, n_layers, n_layers + 1, r, r, dtype=torch.float64)
    for k in range(n_layers):
        p, q, beta = ps[k], qs[k], bs[k]
        for j, mj in enumerate(carried):
            # slot i contributes P[i, :]^T (x) M_j[i, :] to input block (k, j)
            per_stream[..., k, j, :, :] = p.unsqueeze(-1) * mj.unsqueeze(-2)
        qt = q.transpose(-1, -2)
        carried = [qt @ mj for mj in carried]  # A_r^T M_j
        carried.append(beta.unsqueeze(-1) * e)  # diag(B) E
    # move the slot axis in front of the layer axes: (..., S, L, L+1, R, R)
    return {"matrix": per_stream.sum(dim=-5), "per_stream": per_stream}


def amax_gain(matrices: Sequence[Tensor]) -> dict[str, Tensor]:
    """Amax gain magnitudes of the residual mixing (mHC §3.1, Fig. 3).

    H_res of layer l is Q^T (A_r^T for HC, H_res for mHC). Forward gain = max absolute row sum,
    backward gain = max absolute column sum, of the single matrix and of the composite
    H_res^l ... H_res^1. Returns tensors of shape (..., L) for ``single_forward``,
    ``single_backward``, ``composite_forward``, ``composite_backward``.
    """
    if not matrices:
        raise ValueError("need at least one connection matrix")
    singles = [_split(m.double())[1].transpose(-1, -2) for m in matrices]  # H_res (..., S, S)
    out: dict[str, list[Tensor]] = {k: [] for k in ("sf", "sb", "cf", "cb")}
    comp = None
    for h in singles:
        comp = h if comp is None else h @ comp
        out["sf"].append(h.abs().sum(-1).amax(-1))
        out["sb"].append(h.abs().sum(-2).amax(-1))
        out["cf"].append(comp.abs().sum(-1).amax(-1))
        out["cb"].append(comp.abs().sum(-2).amax(-1))
    names = {
        "sf": "single_forward",
        "sb": "single_backward",
        "cf": "composite_forward",
        "cb": "composite_backward",
    }
    return {names[k]: torch.stack(v, dim=-1) for k, v in out.items()}


def overhead(kind: str, dim: int, n_modules: int, **options) -> dict[str, int]:
    """Extra parameters and forward FLOPs per token of ``n_modules`` connection modules.

    Parameters are counted on modules built on the meta device, so they are exactly what
    :func:`hyperfrac.connections.build` creates (e.g. d = 2048, 32 modules: SHC x4 768,
    DHC x4 394,048, SFC x4 1,152, DFC x4 165,056). FLOPs count multiply-adds as 2 and are
    relative to the plain residual add (D FLOPs per module).
    """
    from hyperfrac.connections.registry import build

    params = flops = 0
    with torch.device("meta"):
        for idx in range(n_modules):
            conn = build(kind, dim, layer_idx=idx, **options)
            params += conn.extra_params()
            flops += conn.flops_per_token() - dim
    return {"params": params, "flops_per_token": flops}
