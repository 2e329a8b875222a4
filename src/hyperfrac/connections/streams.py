"""n copies of the hidden state: the stream layout HC and mHC share (HC §2.1, mHC §2).

``expand`` copies the hidden state into n identical streams, ``reduce`` sums them (HC Alg. 1),
and the branches' output projections start sqrt(n) larger (HC §4), since the n streams are
summed at the end. Layouts: (..., D) -> (..., n, D); channel-first (B, C, *sp) ->
(B, n, C, *sp).
"""

from __future__ import annotations

import math

from torch import Tensor

from hyperfrac.connections.base import StreamConnection


class CopiedStreams(StreamConnection):
    """Stream layout of n identical copies; the subclass supplies the coefficients."""

    slot_option = "n_streams"

    @property
    def n_streams(self) -> int:
        return self.n_slots

    @property
    def layer_stream(self) -> int:
        """The stream this layer reads at init: layer_idx mod n (HC Eq. 14)."""
        return self.layer_idx % self.n_slots

    @property
    def output_scale(self) -> float:
        return math.sqrt(self.n_slots)

    def expand(self, x: Tensor) -> Tensor:
        """Copy the hidden state into n identical streams (HC §2.1)."""
        self._check_input(x, "input")
        n = self.n_slots
        # materialised (not a stride-0 view): the kernels' bmm falls off its fast path otherwise
        if self.channel_first:
            return x.unsqueeze(1).expand(x.shape[0], n, *x.shape[1:]).contiguous()  # (B,n,C,*sp)
        return x.unsqueeze(-2).expand(*x.shape[:-1], n, x.shape[-1]).contiguous()  # (..., n, D)

    def reduce(self, h: Tensor) -> Tensor:
        """Sum the streams (HC Alg. 1)."""
        self._check_state(h)
        return h.sum(dim=1 if self.channel_first else -2)
