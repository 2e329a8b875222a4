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
mixing matmul in fp32 and casts back); new states are cast back to the state dtype, branch
inputs to :func:`branch_dtype` (fp32 for a bf16 state under autocast).

Axis legend: N tokens (all leading dims flattened), S slots, R branch-input slots, Ds slot
width, K projection outputs.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch._functorch.config as _functorch_config
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = [
    "activation",
    "branch_dtype",
    "compiled_kernels",
    "depth_apply",
    "dynamic_width",
    "mixing_coefficients",
    "norm_project",
    "sinkhorn",
    "width_apply",
]

_NORMS = ("layernorm", "rmsnorm", "none")
_MIN_GEMM_COLS = 16
KERNEL_BACKENDS = ("eager", "compiled")
"""Connection kernel backends: eager torch ops, or :func:`compiled_kernels`."""
_COMPILED_KERNELS = [False]
_ACTIVATION_BUDGET = 0.5
_RECOMPILE_LIMIT = 64
_F = TypeVar("_F", bound=Callable)


@contextlib.contextmanager
def compiled_kernels(enabled: bool = True) -> Iterator[None]:
    """Run the connection kernels as inductor-generated fused kernels in an eager model.

    Inside, each kernel entry point (:func:`dynamic_width`, :func:`width_apply`,
    :func:`depth_apply`, the mHC coefficients) is a ``torch.compile(fullgraph=True)`` of the
    same code: inductor fuses the forward and the hand-derived backward of one half into a
    few loops (C++ on CPU, Triton on CUDA), while the model and its branches stay eager. The
    first call per shape compiles (seconds); the maths is unchanged (tested against the eager
    kernels and the float64 reference). Inside a ``torch.compile``-d model the plain kernels
    are traced instead, so this has no effect there. ``enabled=False`` turns it off inside."""
    with flag_set(_COMPILED_KERNELS, enabled):
        yield


@contextlib.contextmanager
def flag_set(flag: list[bool], enabled: bool) -> Iterator[None]:
    """Set a module-level switch (a one-element list) to ``enabled`` inside, restoring the
    previous value on exit (nested uses restore in order)."""
    previous = flag[0]
    flag[0] = bool(enabled)
    try:
        yield
    finally:
        flag[0] = previous


def kernel(fn: _F) -> _F:
    """Mark ``fn`` (tensors and constants in, tensors out; no module state) as a kernel entry
    point that :func:`compiled_kernels` may replace by its compiled form. One compiled
    function per entry point, shared by every layer: dynamo guards on shapes, dtypes and the
    constant arguments, not on a module."""
    compiled: list[Callable] = []
    broken: list[str] = []

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if not _COMPILED_KERNELS[0] or torch.compiler.is_compiling() or broken:
            return fn(*args, **kwargs)
        if _get_current_dispatch_mode() is not None:  # a probe watching every op (byte
            return fn(*args, **kwargs)  # counters, memory probes): dynamo would not compile
        if not compiled:
            compiled.append(torch.compile(fn, fullgraph=True))
        try:
            # The partitioner would save the fp32 upcast of a bf16 state for the backward
            # (2x the bytes of the state it came from); a memory budget makes it save the bf16
            # state and recompute the cast in the fused backward, as the eager kernels do
            # (read at compile time). Each (dtype, grad mode, constants) is one graph; after
            # the first change of N the token axis is dynamic: a limit of 8 graphs per entry
            # point is too few for a run that trains, evaluates and generates.
            with _functorch_config.patch(activation_memory_budget=_ACTIVATION_BUDGET), \
                    torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
                return compiled[0](*args, **kwargs)
        except Exception as exc:  # no compiler, an unsupported backend, the graph limit
            out = fn(*args, **kwargs)  # a genuine input error raises here, from eager code
            broken.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            warnings.warn(
                f"hyperfrac compiled_kernels: {fn.__name__} could not be compiled "
                f"({broken[0]}); running the eager kernel from now on", stacklevel=2,
            )
            return out

    return call  # type: ignore[return-value]


def _fp32_region(fn):
    """Run a kernel's forward/backward with autocast off: the coefficients and the mixing are
    computed in float32 even inside ``torch.autocast(dtype=bfloat16)`` (FC App. A); autocast
    would otherwise run the small matmuls, and the n-wide state, in bf16."""

    @functools.wraps(fn)
    def wrapper(ctx, *args):
        device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(ctx, *args)

    return wrapper


def _f32(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _bmm(a: Tensor, b: Tensor) -> Tensor:
    """Batched a @ b, a: (N, I, J), b: (N, J, K) -> (N, I, K).

    Eager: ``torch.bmm``. Under ``torch.compile``: the same contraction as a broadcast
    multiply and a sum over J, which inductor fuses with the neighbouring casts and
    elementwise ops into one loop (a bmm with I, J or K of 1-16 is an opaque library call
    there, and a slow one: per-token 4x4 matrices)."""
    if torch.compiler.is_compiling():
        return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(dim=-2)  # (N, I, J, 1) * (N, 1, J, K)
    return torch.bmm(a, b)


def _np_forward(h32: Tensor, w: Tensor, mode: str, eps: float):
    """logits = norm(h) @ W with the normalisation folded after the matmul (mHC Eq. 10-12).

    layernorm: (h - mu) * rstd @ W = rstd * (h @ W - mu * colsum(W)),  rstd = (var + eps)^-1/2
    rmsnorm:   h * rstd @ W       = rstd * (h @ W),                    rstd = (ms + eps)^-1/2
    The mean is one extra column of the same matmul; the mean of squares is a read-only
    reduction; no normalised copy of h is written. Returns (logits, rstd, mu).
    h32: (N, S, Ds), w: (Ds, K) -> logits (N, S, K), rstd/mu (N, S) (None when unused).
    """
    ds, k = h32.shape[-1], w.shape[1]
    extra = 1 if mode == "layernorm" else 0
    # (Ds, K') = [W | 1/Ds (layernorm: the mean) | 0 ...], padded to 16 columns: CPU GEMM
    # kernels run a 16-wide output 2-3x faster than a 6-9-wide one (docs/results.md, #16)
    cols = max(k + extra, _MIN_GEMM_COLS)
    if cols == k:
        w_ext = w
    else:
        w_ext = w.new_zeros(ds, cols)
        w_ext[:, :k] = w
        if extra:
            w_ext[:, k] = 1.0 / ds
    y_ext = h32 @ w_ext  # (N, S, K')
    y = y_ext[..., :k]  # (N, S, K)
    # own storage: a view would keep the whole (N, S, K') product alive among saved tensors
    mu = y_ext[..., k].contiguous() if extra else None  # (N, S) mean
    if mode == "none":  # contiguous: the saved logits must not pin the padded product
        return (y.contiguous() if cols != k else y), None, None
    ms = torch.linalg.vector_norm(h32, dim=-1).square_().div_(ds)  # (N, S) mean of squares
    if mu is not None:
        rstd = torch.rsqrt((ms - mu.square()).clamp_(min=0.0) + eps)
        logits = (y - mu.unsqueeze(-1) * w.sum(dim=0)) * rstd.unsqueeze(-1)
    else:
        rstd = torch.rsqrt(ms + eps)
        logits = y * rstd.unsqueeze(-1)
    return logits, rstd, mu


def _np_backward(g, h32, w, logits, rstd, mu, mode, grad_h=None, need_h=True, need_w=True):
    """Backward of :func:`_np_forward` for g = dL/dlogits (N, S, K).

    grad_h = rstd * (g @ W^T) - [rstd (g . colsum(W)) / Ds - u mu] - u h,
    with u = rstd^2 (g . logits) / Ds (the derivative through rstd); mu terms only for
    layernorm. When ``grad_h`` is given the result is accumulated into it in place.
    Returns (grad_h, grad_w).
    """
    ds = h32.shape[-1]
    k = w.shape[1]
    gs = g if mode == "none" else g * rstd.unsqueeze(-1)  # (N, S, K)
    gw = None
    if need_h:
        if mode == "layernorm":
            u = (g * logits).sum(dim=-1) * rstd.square() / ds  # (N, S)
            v = (gs @ w.sum(dim=0)) / ds - u * mu  # (N, S) per-row constant
            # fold -v into the matmul: [gs, -v] @ [W^T; 1]
            lhs = torch.cat([gs, -v.unsqueeze(-1)], dim=-1).reshape(-1, k + 1)  # (N*S, K+1)
            rhs = torch.cat([w.t(), w.new_ones(1, ds)], dim=0)  # (K+1, Ds)
        else:
            lhs, rhs = gs.reshape(-1, k), w.t()  # (N*S, K), (K, Ds)
        if grad_h is None:
            grad_h = (lhs @ rhs).view(h32.shape)  # (N, S, Ds)
        else:
            grad_h.view(-1, ds).addmm_(lhs, rhs)
        if mode == "rmsnorm":
            u = (g * logits).sum(dim=-1) * rstd.square() / ds  # (N, S)
        if mode != "none":
            grad_h.addcmul_(u.unsqueeze(-1), h32, value=-1.0)
    if need_w:
        gf = gs.reshape(-1, k)  # (N*S, K)
        # (Ds, K) = sum_rows rstd (h - mu)^T g, formed as (g^T h)^T: the (K, Ds) output keeps
        # the GEMM's long axis contiguous, 4-7x faster on CPU than h^T g for K < 16
        gw = (gf.t() @ h32.reshape(-1, ds)).t()
        if mode == "layernorm":
            gw.sub_((mu.reshape(-1, 1) * gf).sum(dim=0))
    return grad_h, gw


class _NormProject(torch.autograd.Function):
    """``norm(h) @ W`` per slot; saves h and per-row statistics only."""

    @staticmethod
    @_fp32_region
    def forward(ctx, h: Tensor, weight: Tensor, mode: str, eps: float) -> Tensor:
        h32 = _f32(h)
        logits, rstd, mu = _np_forward(h32, weight.to(h32.dtype), mode, eps)
        ctx.mode = mode
        ctx.save_for_backward(h, weight, logits, rstd, mu)
        return logits

    @staticmethod
    @_fp32_region
    def backward(ctx, g: Tensor):
        h, weight, logits, rstd, mu = ctx.saved_tensors
        h32 = _f32(h)
        grad_h, grad_w = _np_backward(
            g.to(h32.dtype).contiguous(), h32, weight.to(h32.dtype), logits, rstd, mu,
            ctx.mode, need_h=ctx.needs_input_grad[0], need_w=ctx.needs_input_grad[1],
        )
        grad_h = grad_h.to(h.dtype) if grad_h is not None else None
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
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
    @_fp32_region
    def forward(ctx, h: Tensor, p: Tensor, out_dtype: torch.dtype) -> Tensor:
        h32 = _f32(h)
        x = _bmm(p.to(h32.dtype).transpose(1, 2), h32)  # (N, R, S) @ (N, S, Ds)
        ctx.save_for_backward(h, p)
        return x.to(out_dtype)

    @staticmethod
    @_fp32_region
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
                grad_h = _bmm(p32, gx)  # (N, S, R) @ (N, R, Ds)
            grad_h = grad_h.to(h.dtype)
        if ctx.needs_input_grad[1]:
            grad_p = _bmm(h32, gx.transpose(1, 2)).to(p.dtype)  # (N, S, Ds) @ (N, Ds, R)
        return grad_h, grad_p, None


@kernel
def width_apply(h: Tensor, p: Tensor) -> Tensor:
    """Width connection ``x = P^T h`` (HC Eq. 2, FC Eq. 8). h: (N, S, Ds); P: (N, S, R) or (S, R).

    Returns (N, R, Ds) in :func:`branch_dtype`; accumulation in float32.
    """
    if p.dim() == 2:  # static: a real (not stride-0) batch keeps bmm on its fast path
        p = p.expand(h.shape[0], *p.shape).contiguous()
    return _WidthApply.apply(h, p, branch_dtype(h))


def branch_dtype(h: Tensor) -> torch.dtype:
    """dtype of the branch input computed from a state ``h``: float32 for a low-precision
    state under autocast (the mixing is accumulated in fp32 anyway; the branch, whose first op
    is a norm, then reads fp32 as the residual's branch does, which keeps the norm on its
    fused kernel and its saved input the one tensor ``recompute`` drops), else h's dtype."""
    if h.dtype in (torch.float32, torch.float64) or not torch.is_autocast_enabled(h.device.type):
        return h.dtype
    return torch.float32


def activation(logits: Tensor, tanh: bool) -> Tensor:
    """tanh of the dynamic logits (HC Eq. 11-13), or the identity (FC §5.1 ablation)."""
    return torch.tanh(logits) if tanh else logits


def mixing_coefficients(
    t: Tensor, static_alpha: Tensor, static_beta: Tensor, alpha_scale: Tensor, beta_scale: Tensor
) -> tuple[Tensor, Tensor]:
    """Dynamic HC/FC coefficients from the activated logits t (N, S, R+S+1), in t's dtype:

        [P | Q] = static_alpha + s_alpha * t[..., :R+S]    (HC Eq. 12-13, FC Eq. 13-14)
        beta    = static_beta  + s_beta  * t[..., -1]      (HC Eq. 11,    FC Eq. 12)

    static_alpha: (S, R+S), static_beta: (S,), scales: (1,). Returns alpha = [P | Q]
    (N, S, R+S) and beta (N, S). The one implementation of these equations: the module's
    :meth:`coefficients` and the fused kernel both call it.
    """
    cdt = t.dtype
    alpha = static_alpha.to(cdt) + alpha_scale.to(cdt) * t[..., :-1]
    beta = static_beta.to(cdt) + beta_scale.to(cdt) * t[..., -1]
    return alpha, beta


class _DynamicWidth(torch.autograd.Function):
    """Dynamic coefficients and the width connection in one kernel (HC Eq. 8-13 + Eq. 2,
    FC Eq. 9-14 + Eq. 8):

        t = act(norm(h) W)                          (N, S, K = R+S+1), act = tanh or identity
        [P | Q] = static_alpha + s_alpha * t[..., :R+S],   beta = static_beta + s_beta * t[..., -1]
        x = P^T h

    Returns x (N, R, Ds), P (detached, to recompute x), Q (N, S, S) and beta (N, S) for the
    depth connection. Saves h, the per-row norm statistics and the (N, S, K) logits; t and P
    are rebuilt from them in backward, where the gradient of h from both the mixing and the
    norm/projection is accumulated into one buffer.
    """

    @staticmethod
    @_fp32_region
    def forward(ctx, h, w, static_alpha, static_beta, alpha_scale, beta_scale, mode, eps, tanh,
                out_dtype):
        h32 = _f32(h)
        cdt = h32.dtype
        r = static_alpha.shape[1] - static_alpha.shape[0]
        logits, rstd, mu = _np_forward(h32, w.to(cdt), mode, eps)
        t = activation(logits, tanh)  # (N, S, K)
        alpha, beta = mixing_coefficients(t, static_alpha, static_beta, alpha_scale, beta_scale)
        p = alpha[..., :r]  # (N, S, R); alpha (N, S, R+S), beta (N, S)
        x = _bmm(p.transpose(1, 2), h32)  # (N, R, S) @ (N, S, Ds) -> (N, R, Ds)
        ctx.mode, ctx.tanh, ctx.r = mode, tanh, r
        # t and P are rebuilt from the logits in backward (cheap, (N, S, K)): less saved memory
        ctx.save_for_backward(
            h, w, logits, rstd, mu, static_alpha, static_beta, alpha_scale, beta_scale
        )
        p_out = p.detach().contiguous()  # for recomputing x; gradients flow through x only
        ctx.mark_non_differentiable(p_out)
        return x.to(out_dtype), p_out, alpha[..., r:].contiguous(), beta

    @staticmethod
    @_fp32_region
    def backward(ctx, gx, _gp, gq, gbeta):
        h, w, logits, rstd, mu, static_alpha, static_beta, alpha_scale, beta_scale = (
            ctx.saved_tensors
        )
        h32 = _f32(h)
        cdt = h32.dtype
        n, s, _ = h.shape
        r = ctx.r
        t = activation(logits, ctx.tanh)  # (N, S, K)
        alpha, _ = mixing_coefficients(t, static_alpha, static_beta, alpha_scale, beta_scale)
        p = alpha[..., :r]  # (N, S, R)
        gx = gx.to(cdt).contiguous()  # (N, R, Ds)
        gq = gq.to(cdt) if gq is not None else h32.new_zeros(n, s, s)
        gbeta = gbeta.to(cdt) if gbeta is not None else h32.new_zeros(n, s)
        gp = _bmm(h32, gx.transpose(1, 2))  # (N, S, Ds) @ (N, Ds, R) -> (N, S, R)
        g_alpha = torch.cat([gp, gq], dim=-1)  # (N, S, R+S)
        grad_sa = g_alpha.sum(dim=0)  # (S, R+S)
        grad_sb = gbeta.sum(dim=0)  # (S,)
        grad_scale_a = (g_alpha * t[..., :-1]).sum()
        grad_scale_b = (gbeta * t[..., -1]).sum()
        g_t = torch.cat([g_alpha * alpha_scale.to(cdt), (gbeta * beta_scale.to(cdt)).unsqueeze(-1)],
                        dim=-1)  # (N, S, K)
        g_logits = g_t * (1.0 - t * t) if ctx.tanh else g_t
        # mixing term first, then the norm/projection term accumulated in place
        grad_h = p * gx if r == 1 else _bmm(p, gx)  # (N, S, Ds)
        grad_h, grad_w = _np_backward(
            g_logits, h32, w.to(cdt), logits, rstd, mu, ctx.mode, grad_h=grad_h,
            need_w=ctx.needs_input_grad[1],
        )
        return (grad_h.to(h.dtype), None if grad_w is None else grad_w.to(w.dtype),
                grad_sa.to(static_alpha.dtype), grad_sb.to(static_beta.dtype),
                grad_scale_a.to(alpha_scale.dtype).reshape(alpha_scale.shape),
                grad_scale_b.to(beta_scale.dtype).reshape(beta_scale.shape), None, None, None,
                None)


@kernel
def dynamic_width(h, w, static_alpha, static_beta, alpha_scale, beta_scale, *, norm="layernorm",
                  eps=1e-5, tanh=True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused dynamic HC/FC width connection; see :class:`_DynamicWidth`.

    h: (N, S, Ds); w: (Ds, R+S+1) = [W_alpha | W_beta]; static_alpha: (S, R+S);
    static_beta: (S,); scales: 0-dim. Returns x (N, R, Ds), P (N, S, R) (detached, to recompute
    x), Q (N, S, S) and beta (N, S).
    """
    if norm not in _NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {_NORMS}")
    return _DynamicWidth.apply(h, w, static_alpha, static_beta, alpha_scale, beta_scale, norm,
                               eps, tanh, branch_dtype(h))


class _DepthApply(torch.autograd.Function):
    """Depth connection h' = Q^T h + beta * o (HC Eq. 4, FC Eq. 7, mHC Eq. 3 with Q = H_res^T).

    h: (N, S, Ds), Q: (N, S, S), beta: (N, S), o: (N, R, Ds) with R in {1, S}.
    Saves h, Q, beta, o (h is the same storage the width connection keeps).
    """

    @staticmethod
    @_fp32_region
    def forward(ctx, h: Tensor, q: Tensor, beta: Tensor, o: Tensor) -> Tensor:
        h32 = _f32(h)
        cdt = h32.dtype
        q32, b32, o32 = q.to(cdt), beta.to(cdt), _f32(o).to(cdt)
        # beta * o broadcast over S when R == 1; eager: one baddbmm instead of bmm + addcmul_
        bo = b32.unsqueeze(-1) * o32  # (N, S, Ds)
        if torch.compiler.is_compiling():
            out = _bmm(q32.transpose(1, 2), h32) + bo  # (N, S, Ds)
        else:
            out = torch.baddbmm(bo, q32.transpose(1, 2), h32)  # (N, S, Ds)
        ctx.save_for_backward(h, q, beta, o)
        return out.to(h.dtype)

    @staticmethod
    @_fp32_region
    def backward(ctx, g: Tensor):
        h, q, beta, o = ctx.saved_tensors
        h32 = _f32(h)
        cdt = h32.dtype
        g = g.to(cdt).contiguous()  # autograd may hand us a stride-0 view (e.g. from reduce)
        q32, b32, o32 = q.to(cdt), beta.to(cdt), _f32(o).to(cdt)
        grad_h = grad_q = grad_b = grad_o = None
        if ctx.needs_input_grad[0]:
            grad_h = _bmm(q32, g).to(h.dtype)  # (N, S, Ds)
        if ctx.needs_input_grad[1]:
            grad_q = _bmm(h32, g.transpose(1, 2)).to(q.dtype)  # (N, S, S)
        broadcast = o.shape[1] == 1 and g.shape[1] != 1
        if ctx.needs_input_grad[2]:
            if broadcast:
                grad_b = _bmm(g, o32.transpose(1, 2)).squeeze(-1)  # (N, S)
            else:
                grad_b = (g * o32).sum(dim=-1)  # (N, S)
            grad_b = grad_b.to(beta.dtype)
        if ctx.needs_input_grad[3]:
            if broadcast:
                grad_o = _bmm(b32.unsqueeze(1), g)  # (N, 1, Ds)
            else:
                grad_o = g * b32.unsqueeze(-1)  # (N, S, Ds)
            grad_o = grad_o.to(o.dtype)
        return grad_h, grad_q, grad_b, grad_o


@kernel
def depth_apply(h: Tensor, q: Tensor, beta: Tensor, o: Tensor) -> Tensor:
    """``Q^T h + beta * o``; see :class:`_DepthApply` for shapes."""
    n = h.shape[0]
    if q.dim() == 2:  # static coefficients: materialise the (small) batch, see width_apply
        q = q.expand(n, *q.shape).contiguous()
    if beta.dim() == 1:
        beta = beta.expand(n, beta.shape[0]).contiguous()
    return _DepthApply.apply(h, q, beta, o)


class _Sinkhorn(torch.autograd.Function):
    """Sinkhorn-Knopp on flattened (N, S*S) matrices with an exact, recomputing backward.

    Row and column sums are one small matmul each with a 0/1 block matrix that also broadcasts
    the sums back to every entry ((N, S^2) @ (S^2, S^2)): two kernels per normalisation instead
    of a strided reduction plus a broadcast division, which on CPU is 3-4x faster for the tiny
    matrices mHC uses. Autograd through the loop would keep 2 x iters intermediates per layer
    alive until backward; here only the logits are saved and the iterates are rebuilt in
    backward, then differentiated step by step in reverse.
    """

    @staticmethod
    def _sum_operators(s: int, like: Tensor) -> tuple[Tensor, Tensor]:
        eye = torch.eye(s, dtype=like.dtype, device=like.device)
        ones = torch.ones(s, s, dtype=like.dtype, device=like.device)
        # flattened index a = i*S + j; column sums group equal j, row sums group equal i
        return torch.kron(ones, eye), torch.kron(eye, ones)  # (S^2, S^2) each, symmetric

    @staticmethod
    def _group_sums(x: Tensor, op: Tensor, s: int, axis: int) -> Tensor:
        """Each entry's column (axis 1) or row (axis 2) sum, broadcast back: x (N, S^2).
        Eager: ``x @ op``; under torch.compile a reduction over the (N, S, S) view, which
        inductor fuses into the loop (a (N, 16) @ (16, 16) matmul is a library call there)."""
        if torch.compiler.is_compiling():
            v = x.view(-1, s, s)  # (N, S, S)
            return v.sum(dim=axis, keepdim=True).expand_as(v).reshape(x.shape)  # (N, S^2)
        return x @ op

    @staticmethod
    def _iterates(x: Tensor, s: int, iters: int, keep: bool):
        """x: flattened logits (N, S^2)."""
        col, row = _Sinkhorn._sum_operators(s, x)
        m = torch.exp(x - x.amax(dim=-1, keepdim=True))  # M^0, (N, S^2)
        steps = []
        for _ in range(iters):
            for op, axis in ((col, 1), (row, 2)):  # T_c then T_r (mHC Eq. 9)
                sums = _Sinkhorn._group_sums(m, op, s, axis)  # each entry's column (row) sum
                m = m / sums
                if keep:
                    steps.append((op, axis, sums, m))
        return m, steps

    @staticmethod
    @_fp32_region
    def forward(ctx, logits: Tensor, iters: int) -> Tensor:
        s = logits.shape[-1]
        x = _f32(logits).reshape(-1, s * s)  # (N, S^2)
        m, _ = _Sinkhorn._iterates(x, s, iters, keep=False)
        ctx.iters = iters
        ctx.save_for_backward(logits)
        return m.reshape(logits.shape)

    @staticmethod
    @_fp32_region
    def backward(ctx, g: Tensor):
        (logits,) = ctx.saved_tensors
        s = logits.shape[-1]
        x = _f32(logits).reshape(-1, s * s)
        _, steps = _Sinkhorn._iterates(x, s, ctx.iters, keep=True)
        g = g.to(x.dtype).reshape(-1, s * s)
        for op, axis, sums, y in reversed(steps):
            # y = m / (m @ op): dL/dm = (g - (g * y) @ op) / sums   (op symmetric, sums
            # constant within each group)
            g = (g - _Sinkhorn._group_sums(g * y, op, s, axis)) / sums
        m0 = torch.exp(x - x.amax(dim=-1, keepdim=True))  # dM^0/dx = M^0 (shift cancels)
        return (g * m0).reshape(logits.shape).to(logits.dtype), None


def sinkhorn(logits: Tensor, iters: int = 20) -> Tensor:
    """Sinkhorn-Knopp projection onto doubly stochastic matrices (mHC Eq. 9).

    M^0 = exp(logits) (shifted by the max for stability, which the normalisation cancels),
    then ``iters`` rounds of column normalisation followed by row normalisation. Rows therefore
    sum to 1 exactly (up to rounding) and columns approximately; computed in float32 at least.
    The backward pass is exact for the finite loop (recomputed, see :class:`_Sinkhorn`).
    logits: (..., S, S) -> (..., S, S).
    """
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"sinkhorn_iters must be an integer >= 1, got {iters!r}")
    return _Sinkhorn.apply(logits, iters)
