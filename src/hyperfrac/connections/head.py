"""HyperHead: DeepSeek-V4's learned collapse of the n streams before the final norm.

The stream-state reducer alternative to :meth:`CopiedStreams.reduce` (a plain sum). Weight-
compatible with ``transformers``' ``DeepseekV4HyperHead`` (state dict ``hc_fn`` (n, n*D),
``hc_base`` (n,), ``hc_scale`` (1,)). Per token, with the state h (n, D):

    x'  = vec(h) / sqrt(mean(vec(h)^2) + norm_eps)       unweighted RMSNorm of all n*D values
    w   = sigmoid(hc_scale * x' hc_fn^T + hc_base) + eps             (n,)  (pre-only, no Sinkhorn)
    out = sum_i w_i h_i                                               (D,)

computed in float32 (float64 for float64 states) and returned in the state's dtype, as V4 does.

Initialisation (V4 publishes none; transformers draws hc_fn from N(0, 0.02), hc_base 0,
hc_scale 1): hc_fn = 0, hc_scale = ``scale_init`` (0.01) and hc_base such that
w_i = sigmoid(hc_base) + eps = 1/n exactly: the head starts as the mean of the streams, which
for the identical streams of a Pre-Norm-equivalent stack is the Pre-Norm residual itself
(``reduce`` sums them: n times that, the same after a final norm).

Axes: ... leading dims, n streams, D width.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperfrac.connections.deepseek_v4 import compute_dtype, unweighted_rms_norm


class HyperHead(nn.Module):
    """Learned sigmoid-weighted sum of the n streams: (..., n, D) -> (..., D)."""

    def __init__(
        self,
        dim: int,
        *,
        n_streams: int = 4,
        eps: float = 1e-6,
        norm_eps: float = 1e-6,
        scale_init: float = 0.01,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("n_streams", n_streams)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HyperHead: {name} must be an integer >= 1, got {value!r}")
        if not 0.0 < eps < 1.0 / n_streams:
            raise ValueError(f"HyperHead: eps must lie in (0, 1/n_streams), got {eps!r}")
        self.dim, self.n_streams = dim, n_streams
        self.eps, self.norm_eps = float(eps), float(norm_eps)
        target = torch.full((n_streams,), 1.0 / n_streams - self.eps, dtype=torch.float64)
        self.hc_fn = nn.Parameter(torch.zeros(n_streams, n_streams * dim))
        self.hc_base = nn.Parameter((torch.log(target) - torch.log1p(-target)).float())
        self.hc_scale = nn.Parameter(torch.full((1,), float(scale_init)))

    def weights(self, h: Tensor) -> Tensor:
        """Collapse weights w (..., n) for a state h (..., n, D), in float32 at least."""
        if h.dim() < 2 or tuple(h.shape[-2:]) != (self.n_streams, self.dim):
            raise ValueError(
                f"HyperHead: stream state has shape {tuple(h.shape)}, expected "
                f"(..., {self.n_streams}, {self.dim})"
            )
        cdt = compute_dtype(h.dtype)
        with torch.autocast(h.device.type, enabled=False):
            flat = unweighted_rms_norm(h.flatten(-2).to(cdt), self.norm_eps)  # (..., n*D)
            mixes = F.linear(flat, self.hc_fn.to(cdt))  # (..., n)
            return torch.sigmoid(mixes * self.hc_scale.to(cdt) + self.hc_base.to(cdt)) + self.eps

    def reduce_weights(self, h: Tensor) -> Tensor:
        """The collapse as a (..., R=1, S=n) matrix, for the analyses' final-output row."""
        return self.weights(h).unsqueeze(-2)

    def forward(self, h: Tensor) -> Tensor:
        w = self.weights(h)
        cdt = w.dtype
        with torch.autocast(h.device.type, enabled=False):
            return (w.unsqueeze(-1) * h.to(cdt)).sum(dim=-2).to(h.dtype)  # (..., D)

    def decay_parameters(self) -> Iterator[nn.Parameter]:
        yield self.hc_fn

    def no_decay_parameters(self) -> Iterator[nn.Parameter]:
        yield self.hc_base
        yield self.hc_scale

    def extra_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Forward FLOPs per token: projection, RMS statistics, gates and the weighted sum."""
        n, d = self.n_streams, self.dim
        return 2 * n * d * n + 3 * n * d + 4 * n + 2 * n * d

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_streams={self.n_streams}"
