"""KromHC: mHC with H_res a Kronecker product of 2x2 doubly-stochastic factors (arXiv 2601.21579).

mHC (arXiv 2512.24880) with its Sinkhorn step replaced; everything else as in
:mod:`hyperfrac.connections.mhc`. For n = 2^K streams:

    x' = RMSNorm(vec(x))                                  x: (n, C), vec(x): (n*C,)
    H_pre  = sigmoid(alpha_pre  * x' phi_pre  + b_pre)               (1, n)
    H_post = 2 * sigmoid(alpha_post * x' phi_post + b_post)          (1, n)
    p      = sigmoid(alpha_res * x' phi_res + b_res)                 (K,)
    U_k    = p_k I_2 + (1 - p_k) J_2       J_2 = [[0, 1], [1, 0]]    (2, 2)
    H_res  = U_1 (x) U_2 (x) ... (x) U_K                             (n, n)
    x_new  = H_res x + H_post^T F(H_pre x)                           (mHC Eq. 3)

Each U_k is doubly stochastic (a convex mix of the two 2x2 permutations; the paper's 2-way
softmax over (I, J) is this sigmoid of the logit difference), and a Kronecker product of
doubly-stochastic matrices is doubly stochastic, so H_res is exact with no iterations. The
res projection has K = log2 n columns: parameters n*C*(2n + log2 n), O(n^2 C), against mHC's
n*C*(n^2 + 2n). The price is expressiveness: H_res spans a K-dimensional subset of the
Birkhoff polytope. n must be a power of two (ConnectionSpecError otherwise); n = 1 gives
H_res = [[1]] and has no res parameters. Orientation as mHC: :meth:`connection_matrix`
reports A_r = H_res^T (H_res is symmetric here, so the two coincide); ``residual_matrix``
gives H_res.

**Initialisation.** phi = 0, alpha_* = 0.01, b_pre and b_post as mHC, and every factor at
p = res_init_diag^(1/K), so H_res has diagonal ``res_init_diag`` (default 0.9, as mhc; at
n = 4 each factor is 0.949 I + 0.051 J). p > 1/2 (the identity dominating every factor) is
exactly res_init_diag > 1/n. As for mhc and mhc-lite, the network is exactly the Pre-Norm
network at init whatever H_res is (identical streams, row-stochastic H_res, H_pre summing to
1, H_post = 1); the test holds it to 1e-12 in float64 for n = 2, 4, 8.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hyperfrac.connections.doubly_stochastic import (
    ExactManifoldHyperConnection,
    kronecker_swap_mix,
)


class KromHC(ExactManifoldHyperConnection):
    """KromHC with ``n_streams`` = 2^K streams. Parameters: phi (n*C, 2n + K), b_pre, b_post,
    b_res (K,), alpha_pre, alpha_post, alpha_res (no res parameters when n = 1)."""

    kind = "kromhc"
    power_of_two = True

    @staticmethod
    def n_res_logits(n: int) -> int:
        return n.bit_length() - 1  # K = log2 n

    @staticmethod
    def init_res_logits(n: int, diag: float) -> Tensor:
        k = n.bit_length() - 1
        p = diag ** (1.0 / k)
        return torch.full((k,), math.log(p) - math.log1p(-p))

    def res_matrix(self, logits: Tensor) -> Tensor:
        return kronecker_swap_mix(torch.sigmoid(logits))  # (..., n, n)

    def _res_flops(self) -> int:
        k, n = self.n_res_logits(self.n_slots), self.n_slots
        return 4 * k + 4 * (n * n - 1) // 3  # factors + sum_i 4^i products of the Kronecker chain
