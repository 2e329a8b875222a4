"""mHC: Manifold-Constrained Hyper-Connections (Xie et al., DeepSeek, arXiv 2512.24880).

n streams as in HC, but the coefficients come from the whole flattened state and are
projected onto constraint sets (mHC Eq. 7-9):

    x' = RMSNorm(vec(x))                                   x: (n, C), vec(x): (n*C,)
    H_pre  = sigmoid(alpha_pre  * x' phi_pre  + b_pre)                (1, n)
    H_post = 2 * sigmoid(alpha_post * x' phi_post + b_post)           (1, n)
    H_res  = SinkhornKnopp(alpha_res * mat(x' phi_res) + b_res)       (n, n), doubly stochastic
    x_new  = H_res x + H_post^T F(H_pre x)                            (mHC Eq. 3)

Transpose convention: mHC applies H_res without a transpose, HC applies A_r^T. In the HC
layout used by :meth:`connection_matrix` this module therefore reports A_m = H_pre^T,
B = H_post and **A_r = H_res^T**. Sinkhorn ends with a row normalisation, so the rows of
H_res (the forward direction: each new stream is a convex combination of the old streams)
sum to 1 exactly; the columns (backward gain) are approximate, as in the paper.

Initialisation (the paper publishes only alpha = 0.01; see docs/connections.md): phi = 0 so
the coefficients start static; b_post = 0 so H_post = 1 (HC's B = 1); b_pre puts weight
``pre_init`` on stream (layer_idx mod n) and (1 - pre_init)/(n-1) on each other stream, so
H_pre sums to 1 (HC's one-hot A_m, softened); b_res = c * I with c chosen so that
H_res = Sinkhorn(exp(b_res)) has diagonal ``res_init_diag``. At init every stream holds the
same vector, H_pre sums to 1 and every doubly stochastic H_res maps identical streams to
themselves, so the network computes exactly the Pre-Norm function (for n >= 2; with n = 1 the
branch input is scaled by ``pre_init``, which a branch that starts with a norm ignores).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from hyperfrac.connections import functional as kernels
from hyperfrac.connections.streams import CopiedStreams


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def pre_gate_logits(n: int, stream: int, pre_init: float) -> Tensor:
    """b_pre of mHC's softened HC Eq. 14: sigmoid gives ``pre_init`` on ``stream`` and
    (1 - pre_init)/(n-1) on the others (sums to 1, so identical streams give the Pre-Norm
    input); n = 1 keeps the single gate at ``pre_init``."""
    if n == 1:
        return torch.full((1,), _logit(pre_init))
    b_pre = torch.full((n,), _logit((1.0 - pre_init) / (n - 1)))
    b_pre[stream] = _logit(pre_init)
    return b_pre


def project_gates(pre: Tensor, post: Tensor, res: Tensor, iters: int) -> tuple[Tensor, ...]:
    """mHC Eq. 8 -> HC layout (P = H_pre^T, Q = H_res^T, beta = H_post)."""
    h_pre = torch.sigmoid(pre)
    h_post = 2.0 * torch.sigmoid(post)
    h_res = kernels.sinkhorn(res, iters)
    return h_pre.unsqueeze(-1), h_res.transpose(-1, -2), h_post


@kernels.kernel
def dynamic_coefficients(hb, phi, b_pre, b_post, b_res, alpha_pre, alpha_post, alpha_res, *,
                         norm: str, eps: float, tanh: bool, iters: int) -> tuple[Tensor, ...]:
    """mHC Eq. 7-9 for a flattened state hb (N, n, C): P (N, n, 1), Q (N, n, n), beta (N, n)."""
    n = hb.shape[1]
    flat = hb.reshape(hb.shape[0], 1, n * hb.shape[2])  # (N, 1, n*C)
    logits = kernels.norm_project(flat, phi, norm, eps)  # (N, 1, n^2 + 2n), mHC Eq. 7
    logits = kernels.activation(logits, tanh)[:, 0]  # (N, n^2 + 2n)
    pre = alpha_pre * logits[:, :n] + b_pre  # (N, n)
    post = alpha_post * logits[:, n : 2 * n] + b_post  # (N, n)
    res = alpha_res * logits[:, 2 * n :].unflatten(-1, (n, n)) + b_res  # (N, n, n)
    return project_gates(pre, post, res, iters)


class ManifoldHyperConnection(CopiedStreams):
    """mHC with ``n_streams`` streams. Parameters: phi (n*C, n^2+2n), b_pre, b_post, b_res,
    alpha_pre, alpha_post, alpha_res (names from mHC Eq. 7)."""

    kind = "mhc"

    def __init__(
        self,
        dim: int,
        *,
        n_streams: int = 4,
        layer_idx: int = 0,
        dynamic: bool = True,
        norm: bool = True,
        tanh: bool = False,
        sinkhorn_iters: int = 20,
        scale_init: float = 0.01,
        pre_init: float = 0.9,
        res_init_diag: float = 0.9,
        recompute: bool = False,
        channel_first: bool = False,
        stream_embed: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(dim, layer_idx=layer_idx, channel_first=channel_first)
        self.recompute = bool(recompute)
        n = n_streams
        self.n_slots, self.slot_dim, self.n_inputs = n, dim, 1
        self._init_stream_embed(stream_embed)
        self.dynamic = bool(dynamic)
        self.sinkhorn_iters = sinkhorn_iters
        self.eps = float(eps)

        b_pre = pre_gate_logits(n, self.layer_stream, pre_init)  # (n,)
        # Sinkhorn(exp(c I)) has diagonal e^c / (e^c + n - 1): solve for the target diagonal.
        c = math.log(res_init_diag * (n - 1) / (1.0 - res_init_diag)) if n > 1 else 0.0
        self.b_pre = nn.Parameter(b_pre)
        self.b_post = nn.Parameter(torch.zeros(n))
        self.b_res = nn.Parameter(c * torch.eye(n))
        if self.dynamic:
            self.phi = nn.Parameter(torch.zeros(n * dim, n * n + 2 * n))
            self.alpha_pre = nn.Parameter(torch.full((1,), float(scale_init)))
            self.alpha_post = nn.Parameter(torch.full((1,), float(scale_init)))
            self.alpha_res = nn.Parameter(torch.full((1,), float(scale_init)))
            self.norm_mode = "rmsnorm" if norm else "none"
            self.tanh = bool(tanh)

    def coefficients(self, hb: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if not self.dynamic or hb is None:
            return project_gates(self.b_pre, self.b_post, self.b_res, self.sinkhorn_iters)
        return dynamic_coefficients(
            hb, self.phi, self.b_pre, self.b_post, self.b_res, self.alpha_pre, self.alpha_post,
            self.alpha_res, norm=self.norm_mode, eps=self.eps, tanh=self.tanh,
            iters=self.sinkhorn_iters,
        )

    def decay_parameters(self) -> Iterator[nn.Parameter]:
        if self.dynamic:
            yield self.phi

    def _coefficient_flops(self) -> int:
        if not self.dynamic:
            return 0
        s, ds = self.n_slots, self.slot_dim
        k = s * s + 2 * s
        flops = 2 * s * ds * k + 2 * s * ds  # projection of vec(x) + RMS statistics
        return flops + 4 * s * s * self.sinkhorn_iters + 8 * k  # Sinkhorn + gates

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_streams={self.n_slots}, iters={self.sinkhorn_iters}"
