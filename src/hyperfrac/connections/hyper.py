"""Hyper-Connections (Zhu et al., arXiv 2409.19606): static (SHC) and dynamic (DHC).

The hidden state is widened into n streams, H (n, D). Per layer the matrix
``[[0, B], [A_m, A_r]]`` (HC Eq. 1) mixes the streams into the layer input (A_m), mixes the
streams among themselves (A_r) and writes the layer output back (B):

    h0 = A_m^T H,   H' = A_r^T H,   H_new = B^T T(h0) + H'                (HC Eq. 2-7)

Dynamic HC adds an input-dependent part computed per stream from the normalised stream
(HC Eq. 8-13): B(H) = s_beta * tanh(norm(H) W_beta)^T + B,
A_m(H) = s_alpha * tanh(norm(H) W_m) + A_m, A_r(H) = s_alpha * tanh(norm(H) W_r) + A_r.

Initialisation equals Pre-Norm (HC Eq. 14): W = 0, B = 1, A_m = e_(layer_idx mod n), A_r = I,
s_alpha = s_beta = 0.01.

:class:`~hyperfrac.connections.mixing.DynamicMixing` holds the coefficients shared with
Frac-Connections, :class:`~hyperfrac.connections.streams.CopiedStreams` the n-copy stream layout
shared with mHC. Axes: n streams, D width (one stream = one slot of width D, R = 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hyperfrac.connections.mixing import DynamicMixing
from hyperfrac.connections.streams import CopiedStreams


class HyperConnection(CopiedStreams, DynamicMixing):
    """HC with ``n_streams`` copies of the hidden state; ``dynamic`` selects DHC (default)."""

    kind = "dhc"

    def __init__(
        self,
        dim: int,
        *,
        n_streams: int = 4,
        layer_idx: int = 0,
        stream_embed: bool = False,
        **options,
    ) -> None:
        super().__init__(
            dim, n_slots=n_streams, slot_dim=dim, n_inputs=1, layer_idx=layer_idx, **options
        )
        self._init_stream_embed(stream_embed)
        self.kind = "dhc" if self.dynamic else "hc"

    def _init_input(self) -> Tensor:
        a_m = torch.zeros(self.n_slots, 1)
        a_m[self.layer_stream, 0] = 1.0  # HC Eq. 14: A_m = e_(k mod n)
        return a_m

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_streams={self.n_slots}, frozen={self.frozen}"
