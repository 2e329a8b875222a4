"""Exactly doubly-stochastic H_res without Sinkhorn: the maths mHC-lite and KromHC share.

mHC (arXiv 2512.24880) projects H_res onto the Birkhoff polytope with 20 Sinkhorn-Knopp
rounds, so its column sums are only approximately 1. Two 2026 parameterisations are exact by
construction, with no iterations:

* mHC-lite (arXiv 2601.05732): Birkhoff-von Neumann, H_res = sum_k a_k P_k over the n!
  permutation matrices P_k, a = softmax(logits) (:func:`birkhoff`);
* KromHC (arXiv 2601.21579): H_res = U_1 (x) U_2 (x) ... (x) U_K, n = 2^K, each 2x2 factor
  U_k = p_k I + (1 - p_k) J (J the swap), a Kronecker product of doubly-stochastic matrices
  being doubly stochastic (:func:`kronecker_swap_mix`).

:class:`ExactManifoldHyperConnection` is mHC (Eq. 3, 7, 8: flattened RMSNorm, one projection,
H_pre = sigmoid, H_post = 2 sigmoid) with the Sinkhorn step replaced by one of the two; the
subclasses say how many H_res logits they need and how the logits become H_res.

Axis legend: N tokens, n streams, C = D width per stream, K number of H_res logits
(n! for mHC-lite, log2 n for KromHC).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from hyperfrac.connections import functional as kernels
from hyperfrac.connections.mhc import pre_gate_logits
from hyperfrac.connections.options import ConnectionSpecError, Count
from hyperfrac.connections.streams import CopiedStreams

# ---------------------------------------------------------------------------- the maths


def permutation_matrices(n: int) -> Tensor:
    """The n! permutation matrices (n!, n, n), lexicographic, so index 0 is the identity.
    P_k[i, sigma_k(i)] = 1: (P_k x)_i = x_{sigma_k(i)}."""
    perms = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)  # (n!, n)
    return torch.eye(n)[perms]  # (n!, n, n): row i of P_k is e_{sigma_k(i)}


def _f32(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def birkhoff(weights: Tensor, perms: Tensor) -> Tensor:
    """mHC-lite: H_res = sum_k a_k P_k. weights (..., n!) on the simplex, perms (n!, n, n)
    -> (..., n, n) in float32 at least; non-negative with unit row and column sums up to
    rounding."""
    n = perms.shape[-1]
    # autocast would run this matmul in bf16 and lose exactness (sums off by ~1e-3)
    with torch.autocast(device_type=weights.device.type, enabled=False):
        flat = _f32(weights) @ perms.reshape(perms.shape[0], n * n).to(_f32(weights).dtype)
    return flat.unflatten(-1, (n, n))  # (..., n, n)


def kronecker_swap_mix(p: Tensor) -> Tensor:
    """KromHC: U_1 (x) ... (x) U_K with U_k = [[p_k, 1-p_k], [1-p_k, p_k]].

    p (..., K) in [0, 1] -> (..., 2^K, 2^K); K = 0 gives the 1x1 identity. Entry (i, j) is
    prod_k (p_k if bit k of i equals bit k of j else 1 - p_k), most significant bit first.
    """
    m = p.new_ones(*p.shape[:-1], 1, 1)  # (..., 1, 1)
    for k in range(p.shape[-1]):
        pk = p[..., k, None, None]  # (..., 1, 1)
        eye = torch.eye(2, dtype=p.dtype, device=p.device)
        u = pk * eye + (1.0 - pk) * (1.0 - eye)  # (..., 2, 2)
        s = m.shape[-1]
        # kron(M, U)[(a, c), (b, d)] = M[a, b] U[c, d]
        m = (m[..., :, None, :, None] * u[..., None, :, None, :]).reshape(
            *m.shape[:-2], 2 * s, 2 * s
        )  # (..., 2s, 2s)
    return m


# ------------------------------------------------------------------- stream-count options


@dataclass(frozen=True)
class StreamCount(Count):
    """``n_streams`` for a kind that restricts it: at most ``limit`` and/or a power of two."""

    limit: int | None = None
    power_of_two: bool = False

    def check(self, kind: str, name: str, value: Any) -> int:
        n = super().check(kind, name, value)
        check_stream_count(kind, n, limit=self.limit, power_of_two=self.power_of_two)
        return n


def check_stream_count(kind: str, n: int, *, limit: int | None, power_of_two: bool) -> None:
    if limit is not None and n > limit:
        raise ConnectionSpecError(
            f"{kind}: n_streams={n} needs {n}! = {math.factorial(n)} permutation matrices and "
            f"logits per token; {kind} allows n_streams <= {limit} ({math.factorial(limit)}). "
            "Use kromhc (n a power of two) or mhc for more streams"
        )
    if power_of_two and n & (n - 1):
        lo = 1 << (n.bit_length() - 1)
        raise ConnectionSpecError(
            f"{kind}: n_streams={n} is not a power of two; H_res is a Kronecker product of 2x2 "
            f"factors, so n_streams must be 1, 2, 4, 8, ... (try {lo} or {2 * lo})"
        )


# ------------------------------------------------------------------------------ the module


class ExactManifoldHyperConnection(CopiedStreams):
    """mHC with an exactly doubly-stochastic H_res (mHC Eq. 3, 7, 8; Sinkhorn replaced).

    Parameters (mHC Eq. 7 names): phi (n*C, 2n + K), b_pre (n,), b_post (n,), b_res (K,),
    alpha_pre, alpha_post, alpha_res (1,) each — 1-D, never 0-d, so FSDP2 can shard them.
    Subclasses set ``stream_limit``/``power_of_two`` and implement :meth:`n_res_logits`,
    :meth:`init_res_logits` and :meth:`res_matrix`.
    """

    stream_limit: ClassVar[int | None] = None
    power_of_two: ClassVar[bool] = False

    def __init__(
        self,
        dim: int,
        *,
        n_streams: int = 4,
        layer_idx: int = 0,
        dynamic: bool = True,
        norm: bool = True,
        tanh: bool = False,
        scale_init: float = 0.01,
        pre_init: float = 0.9,
        res_init_diag: float = 0.9,
        recompute: bool = False,
        channel_first: bool = False,
        eps: float = 1e-6,
        stream_embed: bool = False,
    ) -> None:
        super().__init__(dim, layer_idx=layer_idx, channel_first=channel_first)
        n = n_streams
        Count("").check(self.kind, "n_streams", n)
        check_stream_count(self.kind, n, limit=self.stream_limit, power_of_two=self.power_of_two)
        if n > 1 and not 1.0 / n < res_init_diag < 1.0:
            raise ConnectionSpecError(
                f"{self.kind}: res_init_diag={res_init_diag!r} must lie in (1/n, 1) = "
                f"({1.0 / n:.4g}, 1) for n_streams={n}: 1/n is the uniform matrix, and only "
                "above it does the identity dominate H_res at init"
            )
        self.recompute = bool(recompute)
        self.n_slots, self.slot_dim, self.n_inputs = n, dim, 1
        self._init_stream_embed(stream_embed)
        self.dynamic = bool(dynamic)
        self.eps = float(eps)
        k_res = self.n_res_logits(n)

        self.b_pre = nn.Parameter(pre_gate_logits(n, self.layer_stream, pre_init))  # as mhc
        self.b_post = nn.Parameter(torch.zeros(n))
        # n = 1 (and KromHC's K = 0): H_res = [[1]] has nothing to learn, so no empty tensor
        self.b_res = nn.Parameter(self.init_res_logits(n, res_init_diag)) if k_res else None
        if self.dynamic:
            self.phi = nn.Parameter(torch.zeros(n * dim, 2 * n + k_res))
            self.alpha_pre = nn.Parameter(torch.full((1,), float(scale_init)))
            self.alpha_post = nn.Parameter(torch.full((1,), float(scale_init)))
            if k_res:
                self.alpha_res = nn.Parameter(torch.full((1,), float(scale_init)))
            self.norm_mode = "rmsnorm" if norm else "none"
            self.tanh = bool(tanh)

    # -------------------------------------------------------------- per kind
    @staticmethod
    def n_res_logits(n: int) -> int:
        """K, the number of H_res logits per token."""
        raise NotImplementedError

    @staticmethod
    def init_res_logits(n: int, diag: float) -> Tensor:
        """Static logits b_res (K,) whose H_res has diagonal ``diag`` (identity dominant)."""
        raise NotImplementedError

    def res_matrix(self, logits: Tensor) -> Tensor:
        """H_res (..., n, n) from logits (..., K); doubly stochastic by construction."""
        raise NotImplementedError

    def _res_flops(self) -> int:
        """FLOPs per token of :meth:`res_matrix`."""
        raise NotImplementedError

    # ------------------------------------------------------------ coefficients
    def _project(self, pre: Tensor, post: Tensor, res: Tensor | None) -> tuple[Tensor, ...]:
        """mHC Eq. 8 -> HC layout (P = H_pre^T, Q = H_res^T, beta = H_post)."""
        h_pre = torch.sigmoid(pre)
        h_post = 2.0 * torch.sigmoid(post)
        if res is None:  # n = 1
            h_res = h_pre.new_ones(*h_pre.shape[:-1], 1, 1)
        else:
            h_res = self.res_matrix(res)
        return h_pre.unsqueeze(-1), h_res.transpose(-1, -2), h_post

    def coefficients(self, hb: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        n = self.n_slots
        if not self.dynamic or hb is None:
            return self._project(self.b_pre, self.b_post, self.b_res)
        flat = hb.reshape(hb.shape[0], 1, n * self.slot_dim)  # (N, 1, n*C)
        logits = kernels.norm_project(flat, self.phi, self.norm_mode, self.eps)  # mHC Eq. 7
        logits = kernels.activation(logits, self.tanh)[:, 0]  # (N, 2n + K)
        pre = self.alpha_pre * logits[:, :n] + self.b_pre  # (N, n)
        post = self.alpha_post * logits[:, n : 2 * n] + self.b_post  # (N, n)
        res = None
        if self.b_res is not None:
            res = self.alpha_res * logits[:, 2 * n :] + self.b_res  # (N, K)
        return self._project(pre, post, res)

    def residual_matrix(self, h: Tensor | None = None) -> Tensor:
        """H_res in the paper's orientation (x_new = H_res x): (n, n), or per token
        (*leading dims of h, n, n) for a stream state ``h``."""
        return self.connection_matrix(h)[..., 1:, 1:].transpose(-1, -2)

    # ------------------------------------------------------- accounting, groups
    def decay_parameters(self) -> Iterator[nn.Parameter]:
        if self.dynamic:
            yield self.phi

    def _coefficient_flops(self) -> int:
        if not self.dynamic:
            return 0
        s, ds = self.n_slots, self.slot_dim
        k = 2 * s + self.n_res_logits(s)
        flops = 2 * s * ds * k + 2 * s * ds  # projection of vec(x) + RMS statistics
        return flops + self._res_flops() + 8 * k  # H_res construction + gates

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_streams={self.n_slots}"
