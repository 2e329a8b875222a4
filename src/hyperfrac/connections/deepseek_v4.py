"""mHC as DeepSeek-V4 ships it: ``build("mhc", dim, n_streams=n, flavor="deepseek-v4")``.

The same construction as the paper's mHC (:mod:`hyperfrac.connections.mhc`, arXiv 2512.24880)
with the numerics of V4's released code, and weight-compatible with
``transformers.models.deepseek_v4.modeling_deepseek_v4.DeepseekV4HyperConnection``: the state
dict holds exactly ``fn`` ((2+n)n, n*D), ``base`` ((2+n)n,) and ``scale`` (3,), so
``conn.load_state_dict(v4.state_dict())`` works both ways. Per token, with the stream state
h (n, D) and eps = ``eps`` (V4 ``hc_eps``), eps_n = ``norm_eps`` (V4 ``rms_norm_eps``):

    x'    = vec(h) / sqrt(mean(vec(h)^2) + eps_n)        unweighted RMSNorm of all n*D values
    z     = x' fn^T                                       ((2+n)n,) = [z_pre | z_post | z_comb]
    pre   = sigmoid(scale[0] * z_pre  + base_pre) + eps                   (n,)
    post  = 2 * sigmoid(scale[1] * z_post + base_post)                    (n,)
    comb  = softmax(scale[2] * mat(z_comb) + base_comb, over the last axis) + eps    (n, n)
    comb  = comb / (column sums + eps), then iters-1 rounds of
            comb = comb / (row sums + eps); comb = comb / (column sums + eps)
    branch input  x    = sum_i pre_i h_i
    new state     h'_k = post_k * F(x) + sum_j comb[j, k] h_j,   i.e.  h' = comb^T h + post^T F(x)

The coefficients are computed in float32 (float64 for float64 states), autocast off, as V4
does. V4's decoder layer then rounds post and comb to the state dtype and mixes in that dtype;
here the mixing accumulates in float32 and rounds once (the shared kernels), so bf16 states
agree with V4 to a few bf16 ulps rather than bit for bit.

**H_res orientation.** V4 consumes ``comb`` transposed: new stream k sums *column* k of comb
over the old streams j. In the mHC paper's notation (x' = H_res x + H_post^T F(H_pre x)) that is
**H_res = comb^T**; in HC's layout used by :meth:`connection_matrix` it is **A_r = comb**
(HC applies A_r^T). The normalisation ends with the columns of comb, so the rows of H_res (each
new stream a convex combination of the old ones) sum to 1 up to eps; the rows of comb (the
backward gain) are approximate. Applying comb untransposed (as Megatron-core once shipped it,
NVIDIA/Megatron-LM#4957) is a different function off init: a test here would catch it.

**Initialisation** (V4 publishes none; transformers fills fn with N(0, 0.02), base 0, scale 1,
which starts with input-dependent, non-identity mixing). For training from scratch this module
starts near the Pre-Norm network, like the paper flavour: fn = 0 (coefficients static at init),
scale = ``scale_init`` (mHC's alpha = 0.01), base_post = 0 so post = 1, base_pre puts
``pre_init`` on stream (layer_idx mod n) and (1 - pre_init)/(n-1) on the others, *including*
V4's + eps, so pre sums to 1; base_comb = c I with softmax(c I) having diagonal
``res_init_diag`` (softmax(c I) is already doubly stochastic). With identical streams the branch
then sees exactly the Pre-Norm input and every stream gets x + F(x), except that V4's eps in the
Sinkhorn denominators shrinks the carried residual by about eps per sublayer (column sums
1 - ~1e-6): the stack equals Pre-Norm to a relative ~L*eps (tested).

Axes: N tokens (all leading dims flattened), n streams, D width.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperfrac.connections.mhc import _logit
from hyperfrac.connections.streams import CopiedStreams


def v4_sinkhorn(logits: Tensor, iters: int, eps: float) -> Tensor:
    """V4's projection of comb logits (..., n, n) towards doubly stochastic: softmax over the
    last axis plus eps, one column normalisation, then ``iters - 1`` row/column rounds, every
    denominator plus eps. Ends on the columns."""
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"sinkhorn_iters must be an integer >= 1, got {iters!r}")
    m = torch.softmax(logits, dim=-1) + eps
    m = m / (m.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        m = m / (m.sum(dim=-1, keepdim=True) + eps)
        m = m / (m.sum(dim=-2, keepdim=True) + eps)
    return m


def unweighted_rms_norm(x: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x^2) + eps) over the last axis (V4's norm of the flattened state)."""
    return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 at least: V4 computes the coefficients in float32; float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


class DeepseekV4HyperConnection(CopiedStreams):
    """mHC with V4's numerics and state dict (``fn``, ``base``, ``scale``); see the module
    docstring for the equations, the H_res orientation and the initialisation."""

    kind = "mhc"
    flavor = "deepseek-v4"
    dynamic = True

    def __init__(
        self,
        dim: int,
        *,
        n_streams: int = 4,
        layer_idx: int = 0,
        sinkhorn_iters: int = 20,
        eps: float = 1e-6,
        norm_eps: float = 1e-6,
        scale_init: float = 0.01,
        pre_init: float = 0.9,
        res_init_diag: float = 0.9,
        recompute: bool = False,
        channel_first: bool = False,
        stream_embed: bool = False,
    ) -> None:
        super().__init__(dim, layer_idx=layer_idx, channel_first=channel_first)
        n = n_streams
        self.n_slots, self.slot_dim, self.n_inputs = n, dim, 1
        self._init_stream_embed(stream_embed)
        self.recompute = bool(recompute)
        self.sinkhorn_iters = sinkhorn_iters
        self.eps = float(eps)
        self.norm_eps = float(norm_eps)
        k = (2 + n) * n
        self.fn = nn.Parameter(torch.zeros(k, n * dim))
        self.base = nn.Parameter(self._init_base(pre_init, res_init_diag))
        self.scale = nn.Parameter(torch.full((3,), float(scale_init)))

    def _init_base(self, pre_init: float, res_init_diag: float) -> Tensor:
        n, eps = self.n_slots, self.eps
        # pre = sigmoid(b) + eps hits the target weights exactly, so they sum to 1
        if n == 1:
            b_pre = torch.full((1,), _logit(1.0 - eps))
        else:
            other = (1.0 - pre_init) / (n - 1)
            if other <= eps:
                raise ValueError(
                    f"mhc (deepseek-v4): pre_init={pre_init} leaves each other stream the weight "
                    f"{other:.3g}, not above eps={eps} (pre = sigmoid + eps); choose a smaller "
                    "pre_init"
                )
            b_pre = torch.full((n,), _logit(other - eps))
            b_pre[self.layer_stream] = _logit(pre_init - eps)
        b_post = torch.zeros(n)  # post = 2 sigmoid(0) = 1
        # softmax(c I) has diagonal e^c / (e^c + n - 1): solve for the target diagonal
        c = math.log(res_init_diag * (n - 1) / (1.0 - res_init_diag)) if n > 1 else 0.0
        return torch.cat([b_pre, b_post, (c * torch.eye(n)).flatten()])

    # ------------------------------------------------------------ coefficients
    def _gates(self, logits: Tensor | None, cdt: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Logits (..., (2+n)n), or None for the static part -> P = pre (..., n, 1),
        Q = comb (..., n, n), beta = post (..., n): the HC layout of :class:`StreamConnection`."""
        n = self.n_slots
        sizes = [n, n, n * n]
        z_pre, z_post, z_comb = self.base.to(cdt).split(sizes)
        if logits is not None:
            l_pre, l_post, l_comb = logits.split(sizes, dim=-1)
            s_pre, s_post, s_comb = self.scale.to(cdt).unbind(0)
            z_pre = l_pre * s_pre + z_pre
            z_post = l_post * s_post + z_post
            z_comb = l_comb * s_comb + z_comb
        pre = torch.sigmoid(z_pre) + self.eps
        post = 2.0 * torch.sigmoid(z_post)
        comb = v4_sinkhorn(z_comb.unflatten(-1, (n, n)), self.sinkhorn_iters, self.eps)
        return pre.unsqueeze(-1), comb, post

    def coefficients(self, hb: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(pre, comb, post) per token for a flattened state hb (N, n, D); the static part
        (logits 0) when hb is None."""
        if hb is None:
            return self._gates(None, compute_dtype(self.base.dtype))
        cdt = compute_dtype(hb.dtype)
        with torch.autocast(hb.device.type, enabled=False):
            flat = hb.reshape(hb.shape[0], self.n_slots * self.slot_dim).to(cdt)  # (N, n*D)
            logits = F.linear(unweighted_rms_norm(flat, self.norm_eps), self.fn.to(cdt))
            return self._gates(logits, cdt)  # logits: (N, (2+n)n)

    def decay_parameters(self) -> Iterator[nn.Parameter]:
        yield self.fn

    def _coefficient_flops(self) -> int:
        n, d = self.n_slots, self.slot_dim
        k = (2 + n) * n
        flops = 2 * n * d * k + 3 * n * d  # projection of vec(h) + RMS statistics and scaling
        flops += 5 * n * n + 2 * n * n * (2 * self.sinkhorn_iters - 1)  # softmax+eps, rounds
        return flops + 6 * k  # scale, base, gates

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, flavor={self.flavor}, n_streams={self.n_slots}, "
            f"iters={self.sinkhorn_iters}"
        )
