"""The baselines behind the same interface: Pre-Norm residual and Post-Norm.

Pre-Norm:  h' = h + f(norm(h))   (the block's own norm sits inside the branch; HC §3: the
           HC matrix [[0, 1], [1, 1]] with n = 1).
Post-Norm: h' = norm(h + f(h))   (the connection owns the norm; blocks must not pre-normalise,
           signalled by ``uses_prenorm = False``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperfrac.connections.base import Connection


class Residual(Connection):
    """Pre-Norm residual ``h + branch(h)``; the stream state is the hidden state itself."""

    kind = "residual"

    def expand(self, x: Tensor) -> Tensor:
        self._check_input(x, "input")
        return x

    def reduce(self, h: Tensor) -> Tensor:
        return h

    def width_connection(self, h: Tensor) -> tuple[Tensor, Any]:
        self._check_input(h, "hidden state")
        return h, h

    def depth_connection(self, out: Tensor, state: Any) -> Tensor:
        self._check_branch_output(out, tuple(state.shape))  # no silent broadcasting
        return state + out

    def connection_matrix(self, h: Tensor | None = None) -> Tensor:
        """[[0, 1], [1, 1]] (HC §3), one per token when ``h`` is given."""
        m = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
        if h is None:
            return m
        lead = h.shape[:1] + h.shape[2:] if self.channel_first else h.shape[:-1]
        return m.to(h.device).expand(*lead, 2, 2)


class PostNorm(Residual):
    """Post-Norm ``norm(h + branch(h))`` with a LayerNorm over the model width.

    Its connection matrix depends on the statistics of h and f(h) (HC §3:
    B = A_r = 1/sqrt(var)); :meth:`connection_matrix` returns the un-normalised
    [[0, 1], [1, 1]] part, which is what the unfolded-matrix analysis uses.
    """

    kind = "postnorm"
    uses_prenorm = False

    def __init__(
        self, dim: int, *, layer_idx: int = 0, channel_first: bool = False, eps: float = 1e-5
    ) -> None:
        super().__init__(dim, layer_idx=layer_idx, channel_first=channel_first)
        self.norm_weight = nn.Parameter(torch.ones(dim))
        self.norm_bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def depth_connection(self, out: Tensor, state: Any) -> Tensor:
        y = super().depth_connection(out, state)
        if self.channel_first:
            y = y.movedim(1, -1)
        y = F.layer_norm(y, (self.dim,), self.norm_weight, self.norm_bias, self.eps)
        return y.movedim(-1, 1) if self.channel_first else y
