"""mHC-lite: mHC with H_res an exact convex combination of permutations (arXiv 2601.05732).

mHC (arXiv 2512.24880) with its Sinkhorn step replaced by the Birkhoff-von Neumann
parameterisation; everything else as in :mod:`hyperfrac.connections.mhc`:

    x' = RMSNorm(vec(x))                                  x: (n, C), vec(x): (n*C,)
    H_pre  = sigmoid(alpha_pre  * x' phi_pre  + b_pre)               (1, n)
    H_post = 2 * sigmoid(alpha_post * x' phi_post + b_post)          (1, n)
    a      = softmax(alpha_res * x' phi_res + b_res)                 (n!,)
    H_res  = sum_k a_k P_k        P_k the n! permutation matrices    (n, n)
    x_new  = H_res x + H_post^T F(H_pre x)                           (mHC Eq. 3)

H_res is non-negative with unit row and column sums exactly (up to float rounding), with no
iterations: every P_k is doubly stochastic and a is on the simplex. Orientation as mHC:
:meth:`connection_matrix` reports A_r = H_res^T in the HC layout; ``residual_matrix`` gives
H_res itself.

**Why n_streams <= 6.** phi_res has n! columns, so the projection costs n*C*n! parameters and
2*n*C*n! FLOPs per token per sublayer, and the softmax and the (n!, n^2) permutation matmul
n! more: 24 at n = 4, 720 at n = 6 (already 4.3k*C parameters per sublayer), 5040 at n = 7
and 40320 at n = 8, where the H_res logits alone outweigh a d x d attention projection.
n >= 7 is refused with a ConnectionSpecError that points to kromhc and mhc.

**Initialisation.** phi = 0 (coefficients start static), alpha_* = 0.01, b_pre and b_post as
mHC (H_pre sums to 1 with weight ``pre_init`` on stream layer_idx mod n; H_post = 1), and
b_res = c on the identity permutation, 0 on the others, with c solved so that H_res has
diagonal ``res_init_diag`` (default 0.9, the value mhc uses, so the two start from the same
H_res): diag = (e^c + (n-1)! - 1) / (e^c + n! - 1). The identity permutation's weight is then
e^c / (e^c + n! - 1) (0.872 at n = 4). A softmax cannot put all its mass on one permutation
(H_res = I exactly) without infinite logits, which would also zero every gradient of the res
logits; mHC-lite's code uses -8 on the others (diagonal 0.994 at n = 4,
``res_init_diag=0.994``). The *network* is nevertheless exactly the Pre-Norm network at init,
for any res_init_diag: all n streams hold the same vector, every row-stochastic H_res maps
identical streams to themselves, H_pre sums to 1 and H_post = 1, so each stream receives
x + F(x). The test holds a float64 stack of 6 sublayers to 1e-12 of Pre-Norm (n = 2..6);
n = 1 has the same small gap as mhc (H_pre = pre_init scales the branch input).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from hyperfrac.connections.doubly_stochastic import (
    ExactManifoldHyperConnection,
    birkhoff,
    permutation_matrices,
)

#: the largest n_streams mHC-lite accepts (6! = 720 permutations; see the module docstring)
MAX_STREAMS = 6


class MHCLite(ExactManifoldHyperConnection):
    """mHC-lite with ``n_streams`` <= 6 streams. Parameters: phi (n*C, 2n + n!), b_pre,
    b_post, b_res (n!,), alpha_pre, alpha_post, alpha_res; the n! permutation matrices are a
    non-persistent buffer (not in the state dict)."""

    kind = "mhc-lite"
    stream_limit = MAX_STREAMS

    def __init__(self, dim: int, **options: Any) -> None:
        """Options as :class:`ExactManifoldHyperConnection` (``build('mhc-lite', ...)``)."""
        super().__init__(dim, **options)
        self.register_buffer("perms", permutation_matrices(self.n_slots), persistent=False)

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Rebuild the permutation matrices (a non-persistent buffer: a model materialised from
        the meta device, e.g. by ``from_pretrained``, has them uninitialised)."""
        device = "cpu" if self.perms.is_meta else self.perms.device
        self.perms = permutation_matrices(self.n_slots).to(device)

    @staticmethod
    def n_res_logits(n: int) -> int:
        return math.factorial(n) if n > 1 else 0

    @staticmethod
    def init_res_logits(n: int, diag: float) -> Tensor:
        # logit c on the identity (index 0), 0 elsewhere: solve
        # diag = (e^c + (n-1)! - 1) / (e^c + n! - 1) for e^c; > 1 exactly when diag > 1/n
        total, fixing = math.factorial(n), math.factorial(n - 1)
        ec = (diag * (total - 1) - (fixing - 1)) / (1.0 - diag)
        b = torch.zeros(total)
        b[0] = math.log(ec)
        return b

    def res_matrix(self, logits: Tensor) -> Tensor:
        return birkhoff(torch.softmax(logits, dim=-1), self.perms)  # (..., n, n)

    def _res_flops(self) -> int:
        k, n = self.n_res_logits(self.n_slots), self.n_slots
        return 4 * k + 2 * k * n * n  # softmax + sum_k a_k P_k
