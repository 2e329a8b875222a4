"""Pure-math kernels shared by every stream connection (HC, FC, mHC).

All three papers apply the same two linear maps to a stream state ``h`` of shape (N, S, Ds)
(N flattened tokens, S slots = streams or fractions, Ds = per-slot width):

* width connection (HC Eq. 1-3, FC Eq. 8):   x = P^T h          P: (N, S, R), x: (N, R, Ds)
* depth connection (HC Eq. 4-7, FC Eq. 7):   h' = Q^T h + beta * o    Q: (N, S, S), beta: (N, S),
  with the branch output o: (N, R, Ds), R = 1 (HC/mHC: broadcast to every stream) or R = S
  (FC: fraction i of the output goes to slot i).

plus the dynamic-coefficient projection ``norm(h) @ W`` (HC Eq. 8-10, FC Eq. 10-14, mHC Eq. 7).
The kernels below are written as ``torch.autograd.Function`` with hand-derived backward passes
so that autograd keeps exactly one reference to ``h`` per layer (no normalised copy, no mixed
copy) and the gradient of ``h`` is produced in as few memory passes as possible. Their forward
and backward are checked against a float64 transcription of the equations and ``gradcheck``.

Coefficients and mixing are computed in float32 whatever the input dtype (FC App. A does the
mixing matmul in fp32 and casts back); results are cast back to the state dtype.

Axis legend: N tokens (all leading dims flattened), S slots, R branch-input slots, Ds slot
width, K projection outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["norm_project", "width_apply", "depth_apply", "sinkhorn"]

_NORMS = ("layernorm", "rmsnorm", "none")


def _f32(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class _NormProject(torch.autograd.Function):
    """logits = norm(h) @ W with the normalisation folded after the matmul (mHC Eq. 10-12).

    layernorm: (h - mu) * rstd @ W = rstd * (h @ W - mu * colsum(W)),  rstd = (var + eps)^-1/2
    rmsnorm:   h * rstd @ W       = rstd * (h @ W),                    rstd = (ms + eps)^-1/2
    A learnable norm weight g is folded into W by the caller (W <- diag(g) W).
    Only ``h`` (and per-row statistics) are saved; no normalised copy of ``h`` is stored.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, mode: str, eps: float) -> Tensor:
        # h: (N, S, Ds), weight: (Ds, K) -> logits (N, S, K), always float32 or float64
        h32 = _f32(h)
        w = weight.to(h32.dtype)
        ds = h.shape[-1]
        y = h32 @ w  # (N, S, K)
        if mode == "none":
            ctx.save_for_backward(h, weight)
            ctx.mode = mode
            return y
        ms = torch.linalg.vector_norm(h32, dim=-1).square_().div_(ds)  # (N, S) mean of squares
        if mode == "layernorm":
            mu = h32.mean(dim=-1)  # (N, S)
            var = (ms - mu.square()).clamp_(min=0.0)
            colsum = w.sum(dim=0)  # (K,)
            rstd = torch.rsqrt(var + eps)
            logits = (y - mu.unsqueeze(-1) * colsum).mul_(rstd.unsqueeze(-1))
        else:
            mu = None
            rstd = torch.rsqrt(ms + eps)
            logits = y.mul(rstd.unsqueeze(-1))
        ctx.mode = mode
        ctx.save_for_backward(h, weight, rstd, logits, mu if mu is not None else rstd)
        return logits

    @staticmethod
    def backward(ctx, g: Tensor):
        mode = ctx.mode
        if mode == "none":
            h, weight = ctx.saved_tensors
            h32 = _f32(h)
            g = g.to(h32.dtype)
            w = weight.to(h32.dtype)
            grad_h = (g @ w.t()).to(h.dtype) if ctx.needs_input_grad[0] else None
            grad_w = None
            if ctx.needs_input_grad[1]:
                grad_w = (h32.reshape(-1, h.shape[-1]).t() @ g.reshape(-1, g.shape[-1]))
                grad_w = grad_w.to(weight.dtype)
            return grad_h, grad_w, None, None
        h, weight, rstd, logits, mu = ctx.saved_tensors
        h32 = _f32(h)
        g = g.to(h32.dtype).contiguous()
        w = weight.to(h32.dtype)
        ds = h.shape[-1]
        grs = g * rstd.unsqueeze(-1)  # (N, S, K)  dL/d(h_hat @ W)
        # q = sum_K g * logits / rstd^2 ... derived per row: d logits / d rstd = logits / rstd
        q = (g * logits).sum(dim=-1)  # (N, S)
        grad_h = grad_w = None
        if ctx.needs_input_grad[0]:
            # d rstd / dh = -rstd^3 (h - mu) / Ds  (layernorm) or -rstd^3 h / Ds (rmsnorm)
            # grad_h = rstd * (g @ W^T) [- rstd * (g . colsum) / Ds] - (q * rstd^2 / Ds) (h - mu)
            u = q * rstd.square() / ds  # (N, S)
            if mode == "layernorm":
                # fold the per-row constant -v into the matmul: [grs, -v] @ [W^T; 1]
                v = (grs @ w.sum(dim=0)) / ds - u * mu  # (N, S)
                lhs = torch.cat([grs, -v.unsqueeze(-1)], dim=-1)  # (N, S, K+1)
                rhs = torch.cat([w.t(), w.new_ones(1, ds)], dim=0)  # (K+1, Ds)
                grad_h = lhs @ rhs  # (N, S, Ds)
            else:
                grad_h = grs @ w.t()  # (N, S, Ds)
            grad_h.addcmul_(u.unsqueeze(-1), h32, value=-1.0)
            grad_h = grad_h.to(h.dtype)
        if ctx.needs_input_grad[1]:
            # logits = rstd * (h - mu) @ W  ->  dW = sum_rows rstd (h - mu)^T g
            gf = grs.reshape(-1, grs.shape[-1])  # (N*S, K)
            grad_w = h32.reshape(-1, ds).t() @ gf  # (Ds, K)
            if mode == "layernorm":
                grad_w.sub_((mu.reshape(-1, 1) * gf).sum(dim=0))
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None


def norm_project(h: Tensor, weight: Tensor, norm: str = "layernorm", eps: float = 1e-6) -> Tensor:
    """``norm(h) @ weight`` per slot, in float32. h: (N, S, Ds); weight: (Ds, K) -> (N, S, K)."""
    if norm not in _NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {_NORMS}")
    return _NormProject.apply(h, weight, norm, eps)


class _WidthApply(torch.autograd.Function):
    """Width connection x = P^T h with a backward that avoids CPU bmm's slow layouts.

    h: (N, S, Ds), P: (N, S, R) -> x: (N, R, Ds). Saves h and P.
    """

    @staticmethod
    def forward(ctx, h: Tensor, p: Tensor) -> Tensor:
        h32 = _f32(h)
        x = torch.bmm(p.to(h32.dtype).transpose(1, 2), h32)  # (N, R, S) @ (N, S, Ds)
        ctx.save_for_backward(h, p)
        return x.to(h.dtype)

    @staticmethod
    def backward(ctx, gx: Tensor):
        h, p = ctx.saved_tensors
        h32 = _f32(h)
        gx = gx.to(h32.dtype).contiguous()  # (N, R, Ds); autograd may hand us stride-0 views
        p32 = p.to(h32.dtype)
        grad_h = grad_p = None
        if ctx.needs_input_grad[0]:
            if p.shape[-1] == 1:  # HC/mHC: an outer product, cheaper as a broadcast multiply
                grad_h = p32 * gx  # (N, S, 1) * (N, 1, Ds) -> (N, S, Ds)
            else:
                grad_h = torch.bmm(p32, gx)  # (N, S, R) @ (N, R, Ds)
            grad_h = grad_h.to(h.dtype)
        if ctx.needs_input_grad[1]:
            grad_p = torch.bmm(h32, gx.transpose(1, 2)).to(p.dtype)  # (N, S, Ds) @ (N, Ds, R)
        return grad_h, grad_p


def width_apply(h: Tensor, p: Tensor) -> Tensor:
    """Width connection ``x = P^T h`` (HC Eq. 2, FC Eq. 8). h: (N, S, Ds); P: (N, S, R) or (S, R).

    Returns (N, R, Ds) in the dtype of ``h``; accumulation in float32.
    """
    if p.dim() == 2:  # static: a real (not stride-0) batch keeps bmm on its fast path
        p = p.expand(h.shape[0], *p.shape).contiguous()
    return _WidthApply.apply(h, p)


class _DepthApply(torch.autograd.Function):
    """Depth connection h' = Q^T h + beta * o (HC Eq. 4, FC Eq. 7, mHC Eq. 3 with Q = H_res^T).

    h: (N, S, Ds), Q: (N, S, S), beta: (N, S), o: (N, R, Ds) with R in {1, S}.
    Saves h, Q, beta, o (h is the same storage the width connection keeps).
    """

    @staticmethod
    def forward(ctx, h: Tensor, q: Tensor, beta: Tensor, o: Tensor) -> Tensor:
        h32 = _f32(h)
        cdt = h32.dtype
        q32, b32, o32 = q.to(cdt), beta.to(cdt), _f32(o).to(cdt)
        out = torch.bmm(q32.transpose(1, 2), h32)  # (N, S, Ds)
        out.addcmul_(b32.unsqueeze(-1), o32)  # broadcast over S when R == 1
        ctx.save_for_backward(h, q, beta, o)
        return out.to(h.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        h, q, beta, o = ctx.saved_tensors
        h32 = _f32(h)
        cdt = h32.dtype
        g = g.to(cdt).contiguous()  # autograd may hand us a stride-0 view (e.g. from reduce)
        q32, b32, o32 = q.to(cdt), beta.to(cdt), _f32(o).to(cdt)
        grad_h = grad_q = grad_b = grad_o = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.bmm(q32, g).to(h.dtype)  # (N, S, Ds)
        if ctx.needs_input_grad[1]:
            grad_q = torch.bmm(h32, g.transpose(1, 2)).to(q.dtype)  # (N, S, S)
        broadcast = o.shape[1] == 1 and g.shape[1] != 1
        if ctx.needs_input_grad[2]:
            if broadcast:
                grad_b = torch.bmm(g, o32.transpose(1, 2)).squeeze(-1)  # (N, S)
            else:
                grad_b = (g * o32).sum(dim=-1)  # (N, S)
            grad_b = grad_b.to(beta.dtype)
        if ctx.needs_input_grad[3]:
            if broadcast:
                grad_o = torch.bmm(b32.unsqueeze(1), g)  # (N, 1, Ds)
            else:
                grad_o = g * b32.unsqueeze(-1)  # (N, S, Ds)
            grad_o = grad_o.to(o.dtype)
        return grad_h, grad_q, grad_b, grad_o


def depth_apply(h: Tensor, q: Tensor, beta: Tensor, o: Tensor) -> Tensor:
    """``Q^T h + beta * o``; see :class:`_DepthApply` for shapes."""
    n = h.shape[0]
    if q.dim() == 2:  # static coefficients: materialise the (small) batch, see width_apply
        q = q.expand(n, *q.shape).contiguous()
    if beta.dim() == 1:
        beta = beta.expand(n, beta.shape[0]).contiguous()
    return _DepthApply.apply(h, q, beta, o)


def sinkhorn(logits: Tensor, iters: int = 20) -> Tensor:
    """Sinkhorn-Knopp projection onto doubly stochastic matrices (mHC Eq. 9).

    M^0 = exp(logits) (shifted by the row max for stability, which the normalisation cancels),
    then ``iters`` rounds of column normalisation followed by row normalisation. Rows therefore
    sum to 1 exactly (up to rounding) and columns approximately; computed in float32 at least.
    The backward pass is autograd through the unrolled iterations (exact for the finite loop).
    logits: (..., S, S) -> (..., S, S).
    """
    if iters < 1:
        raise ValueError(f"sinkhorn_iters must be >= 1, got {iters}")
    x = _f32(logits)
    m = torch.exp(x - x.amax(dim=(-1, -2), keepdim=True))
    for _ in range(iters):
        m = m / m.sum(dim=-2, keepdim=True)  # T_c: columns sum to 1
        m = m / m.sum(dim=-1, keepdim=True)  # T_r: rows sum to 1
    return m
