"""Frac-Connections (Zhu et al., arXiv 2503.14125): static (SFC) and dynamic (DFC).

The hidden state h (D,) is split into m = 1/n fractions H (m, D/m) instead of being copied, so
the state costs no extra activation memory. The matrix ``[[0, B], [Y, A]]`` of shape
(m+1, 2m) (FC Eq. 6) acts as

    layer input  = Reshape(Y^T H, (D,))                                      (FC Eq. 8)
    H_new        = B^T * Reshape(T(input), (m, D/m)) + A^T H                  (FC Eq. 7)

where B scales output fraction i into slot i (elementwise, FC Alg. 2). The dynamic part is
computed per fraction from a d/m-wide norm (FC Eq. 9-14, App. A); init W = 0, B = 1, Y = A = I
(FC Eq. 15), which is exactly Pre-Norm. With m = 1 it coincides with HC at n = 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hyperfrac.connections import functional as kernels
from hyperfrac.connections.mixing import DynamicMixing
from hyperfrac.connections.streams import state_in_training_precision


class FracConnection(DynamicMixing):
    """FC with ``n_fracs`` fractions of the hidden state; ``dynamic`` selects DFC (default).

    The default norm is an RMSNorm with a learnable d/m-wide weight, the form whose parameter
    count FC §4.4 reports (|theta_norm| = d/m); ``recompute`` defaults to True (see below).
    """

    kind = "dfc"
    slot_option = "n_fracs"

    def __init__(self, dim: int, *, n_fracs: int = 4, layer_idx: int = 0, **options) -> None:
        if dim % n_fracs != 0:
            raise ValueError(
                f"n_fracs={n_fracs} does not divide dim={dim}; choose n_fracs among the "
                f"divisors of {dim}"
            )
        options.setdefault("norm_type", "rmsnorm")
        options.setdefault("norm_affine", True)
        # FC's point is a state no wider than the residual's; recomputing the branch input
        # from it (x = Y^T H, one small pass in backward) keeps the step's saved activations
        # and live tensors within 1.02x the residual's at no measurable speed cost
        # (docs/results.md, issue #16). recompute=False keeps x saved.
        options.setdefault("recompute", True)
        super().__init__(
            dim,
            n_slots=n_fracs,
            slot_dim=dim // n_fracs,
            n_inputs=n_fracs,
            layer_idx=layer_idx,
            **options,
        )
        self.kind = "dfc" if self.dynamic else "fc"

    @property
    def n_fracs(self) -> int:
        return self.n_slots

    def _init_input(self) -> Tensor:
        return torch.eye(self.n_slots)  # FC Eq. 15: Y = I

    def expand(self, x: Tensor) -> Tensor:
        """Split the hidden state into m fractions (FC Eq. 6), in the training precision
        (:func:`~hyperfrac.connections.streams.state_in_training_precision`)."""
        self._check_input(x, "input")
        x = state_in_training_precision(x)
        m, ds = self.n_slots, self.slot_dim
        if self.channel_first:
            return x.unflatten(1, (m, ds))  # (B, C, *sp) -> (B, m, C/m, *sp)
        return x.unflatten(-1, (m, ds))  # (..., D) -> (..., m, D/m)

    def reduce(self, h: Tensor) -> Tensor:
        """Join the fractions back into the hidden state (FC Alg. 1); fp32 for a bf16 state
        under autocast (:func:`~hyperfrac.connections.functional.branch_dtype`)."""
        self._check_state(h)
        x = h.flatten(1, 2) if self.channel_first else h.flatten(-2)
        return x.to(kernels.branch_dtype(h))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_fracs={self.n_slots}, frozen={self.frozen}"
