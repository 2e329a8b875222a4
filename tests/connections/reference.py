"""Float64 transcriptions of the papers' equations, independent of the library's kernels.

Each function takes one layer's parameters as plain tensors and a branch, and applies the
equation literally (explicit norms, einsums over named axes), so the tests compare the fused
kernels against the maths rather than against themselves.
"""

from __future__ import annotations

import torch


def layernorm(x, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps)


def rmsnorm(x, eps):
    return x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps)


def _norm(x, kind, eps, weight=None):
    y = {"layernorm": layernorm, "rmsnorm": rmsnorm, "none": lambda t, e: t}[kind](x, eps)
    return y if weight is None else y * weight


def hc_layer(H, branch, *, A_m, A_r, B, W_m=None, W_r=None, W_b=None, s_a=None, s_b=None,
             norm="layernorm", norm_weight=None, tanh=True, eps=1e-5):
    """HC Eq. 1-13 for H (..., n, D): returns the new H."""
    act = torch.tanh if tanh else (lambda t: t)
    A_m = A_m.squeeze(-1)  # (n,)
    if W_m is not None:
        Hn = _norm(H, norm, eps, norm_weight)  # (..., n, D)
        B = B + s_b * act(torch.einsum("...nd,d->...n", Hn, W_b))
        A_m = A_m + s_a * act(torch.einsum("...nd,d->...n", Hn, W_m))
        A_r = A_r + s_a * act(torch.einsum("...nd,dj->...nj", Hn, W_r))
    h0 = torch.einsum("...i,...id->...d", A_m, H)  # A_m^T H
    Hp = torch.einsum("...ij,...id->...jd", A_r, H)  # A_r^T H
    out = branch(h0)
    return torch.einsum("...i,...d->...id", B, out) + Hp  # B^T out + H'


def fc_layer(H, branch, *, Y, A, B, W_y=None, W_a=None, W_b=None, s_a=None, s_b=None,
             norm="rmsnorm", norm_weight=None, tanh=True, eps=1e-5):
    """FC Eq. 6-14 for H (..., m, D/m): returns the new H."""
    act = torch.tanh if tanh else (lambda t: t)
    m, dm = H.shape[-2:]
    if W_y is not None:
        Hn = _norm(H, norm, eps, norm_weight)
        B = B + s_b * act(torch.einsum("...nd,d->...n", Hn, W_b))
        Y = Y + s_a * act(torch.einsum("...nd,dj->...nj", Hn, W_y))
        A = A + s_a * act(torch.einsum("...nd,dj->...nj", Hn, W_a))
    x = torch.einsum("...ij,...id->...jd", Y, H).reshape(*H.shape[:-2], m * dm)  # Y^T H
    out = branch(x).reshape(*H.shape[:-2], m, dm)
    return B.unsqueeze(-1) * out + torch.einsum("...ij,...id->...jd", A, H)


def sinkhorn(logits, iters):
    """mHC Eq. 9: M0 = exp(logits), then (column-normalise, row-normalise) x iters."""
    M = torch.exp(logits)
    for _ in range(iters):
        M = M / M.sum(-2, keepdim=True)
        M = M / M.sum(-1, keepdim=True)
    return M


def mhc_layer(x, branch, *, phi, b_pre, b_post, b_res, a_pre, a_post, a_res, iters,
              norm=True, tanh=False, eps=1e-6):
    """mHC Eq. 3 and 7-9 for x (..., n, C): returns the new x (``tanh``: on the projection)."""
    n, c = x.shape[-2:]
    v = x.reshape(*x.shape[:-2], n * c)  # vec(x)
    if norm:
        v = rmsnorm(v, eps)
    proj = v @ phi  # (..., n^2 + 2n)
    if tanh:
        proj = torch.tanh(proj)
    H_pre = torch.sigmoid(a_pre * proj[..., :n] + b_pre)
    H_post = 2 * torch.sigmoid(a_post * proj[..., n : 2 * n] + b_post)
    H_res = sinkhorn(a_res * proj[..., 2 * n :].reshape(*x.shape[:-2], n, n) + b_res, iters)
    out = branch(torch.einsum("...i,...ic->...c", H_pre, x))
    return torch.einsum("...ij,...jc->...ic", H_res, x) + H_post.unsqueeze(-1) * out.unsqueeze(-2)


def hc_args(c):
    """A built HC module's parameters as :func:`hc_layer` keyword arguments."""
    a = dict(A_m=c.static_alpha[:, :1], A_r=c.static_alpha[:, 1:], B=c.static_beta)
    if c.dynamic:
        a.update(W_m=c.dynamic_alpha[:, 0], W_r=c.dynamic_alpha[:, 1:], W_b=c.dynamic_beta,
                 s_a=c.alpha_scale, s_b=c.beta_scale, norm=c.norm_mode,
                 norm_weight=c.norm_weight, tanh=c.tanh, eps=c.eps)
    return a


def fc_args(c):
    """A built FC module's parameters as :func:`fc_layer` keyword arguments."""
    m = c.n_fracs
    a = dict(Y=c.static_alpha[:, :m], A=c.static_alpha[:, m:], B=c.static_beta)
    if c.dynamic:
        a.update(W_y=c.dynamic_alpha[:, :m], W_a=c.dynamic_alpha[:, m:], W_b=c.dynamic_beta,
                 s_a=c.alpha_scale, s_b=c.beta_scale, norm=c.norm_mode,
                 norm_weight=c.norm_weight, tanh=c.tanh, eps=c.eps)
    return a


def mhc_args(c):
    """A built mHC module's parameters as :func:`mhc_layer` keyword arguments."""
    return dict(phi=c.phi, b_pre=c.b_pre, b_post=c.b_post, b_res=c.b_res, a_pre=c.alpha_pre,
                a_post=c.alpha_post, a_res=c.alpha_res, iters=c.sinkhorn_iters,
                norm=c.norm_mode != "none", tanh=c.tanh, eps=c.eps)


def permutation_matrix(sigma):
    """P with P[i, sigma(i)] = 1, so (P x)_i = x_{sigma(i)} (mHC-lite's P_k)."""
    n = len(sigma)
    P = torch.zeros(n, n, dtype=torch.float64)
    for i, j in enumerate(sigma):
        P[i, j] = 1.0
    return P


def _exact_ds_layer(x, branch, H_res_fn, *, phi, b_pre, b_post, b_res, a_pre, a_post, a_res,
                    norm, tanh, eps):
    """mHC Eq. 3, 7, 8 with H_res = H_res_fn(res logits) in place of Sinkhorn."""
    n, c = x.shape[-2:]
    v = x.reshape(*x.shape[:-2], n * c)  # vec(x)
    if norm:
        v = rmsnorm(v, eps)
    proj = v @ phi  # (..., 2n + K)
    if tanh:
        proj = torch.tanh(proj)
    H_pre = torch.sigmoid(a_pre * proj[..., :n] + b_pre)
    H_post = 2 * torch.sigmoid(a_post * proj[..., n : 2 * n] + b_post)
    H_res = H_res_fn(a_res * proj[..., 2 * n :] + b_res)
    out = branch(torch.einsum("...i,...ic->...c", H_pre, x))
    return torch.einsum("...ij,...jc->...ic", H_res, x) + H_post.unsqueeze(-1) * out.unsqueeze(-2)


def mhc_lite_res(logits, n):
    """mHC-lite: H_res = sum_k softmax(logits)_k P_k over itertools' order of the n! perms."""
    import itertools

    perms = [permutation_matrix(s) for s in itertools.permutations(range(n))]
    a = torch.exp(logits - logits.max(-1, keepdim=True).values)
    a = a / a.sum(-1, keepdim=True)
    return sum(a[..., k, None, None] * P.to(a.dtype) for k, P in enumerate(perms))


def kromhc_res(logits, n):
    """KromHC: (U_1 (x) ... (x) U_K)[i, j] = prod_k (p_k if bit k of i == bit k of j else
    1 - p_k), bits counted from the most significant (factor 1), p = sigmoid(logits)."""
    K = n.bit_length() - 1
    p = 1 / (1 + torch.exp(-logits))  # (..., K)
    rows = []
    for i in range(n):
        row = []
        for j in range(n):
            entry = torch.ones_like(logits[..., 0])
            for k in range(K):
                bit = K - 1 - k
                same = ((i >> bit) & 1) == ((j >> bit) & 1)
                entry = entry * (p[..., k] if same else 1 - p[..., k])
            row.append(entry)
        rows.append(torch.stack(row, -1))
    return torch.stack(rows, -2)  # (..., n, n)


def mhc_lite_layer(x, branch, *, norm=True, tanh=False, eps=1e-6, **params):
    """mHC-lite (arXiv 2601.05732) for x (..., n, C): returns the new x."""
    n = x.shape[-2]
    return _exact_ds_layer(x, branch, lambda z: mhc_lite_res(z, n), norm=norm, tanh=tanh,
                           eps=eps, **params)


def kromhc_layer(x, branch, *, norm=True, tanh=False, eps=1e-6, **params):
    """KromHC (arXiv 2601.21579) for x (..., n, C), n a power of two: returns the new x."""
    n = x.shape[-2]
    return _exact_ds_layer(x, branch, lambda z: kromhc_res(z, n), norm=norm, tanh=tanh,
                           eps=eps, **params)


def exact_ds_args(c):
    """A built mhc-lite/kromhc module's parameters as :func:`mhc_lite_layer` /
    :func:`kromhc_layer` keyword arguments."""
    return dict(phi=c.phi, b_pre=c.b_pre, b_post=c.b_post, b_res=c.b_res, a_pre=c.alpha_pre,
                a_post=c.alpha_post, a_res=c.alpha_res, norm=c.norm_mode != "none", tanh=c.tanh,
                eps=c.eps)


def attnres_read(sources, w, g, eps):
    """AttnRes (arXiv 2603.15031): softmax_i(w^T RMSNorm(v_i)) and sum_i alpha_i v_i over a
    list of sources (..., D); g is the keys' RMSNorm weight (None: none)."""
    V = torch.stack(sources, 0)  # (S, ..., D)
    K = rmsnorm(V, eps) * (1.0 if g is None else g)
    a = torch.softmax(torch.einsum("d,s...d->s...", w, K), dim=0)  # (S, ...)
    return torch.einsum("s...,s...d->...d", a, V), a


def attnres_full(x, branches, queries, norm_weights, final_query, final_norm_weight, eps):
    """Full AttnRes: sublayer l attends over [x, v_1, ..., v_l]; returns (y, branch inputs)."""
    sources, inputs = [x], []
    for f, w, g in zip(branches, queries, norm_weights, strict=True):
        h, _ = attnres_read(sources, w, g, eps)
        inputs.append(h)
        sources.append(f(h))
    y, _ = attnres_read(sources, final_query, final_norm_weight, eps)
    return y, inputs


def attnres_block(x, branches, queries, norm_weights, final_query, final_norm_weight, eps, k):
    """Block AttnRes after Kimi's pseudo-code: ``blocks`` (the embedding, then completed sums of
    k sublayer outputs) and ``partial`` (the current block's sum); each read attends over
    blocks + [partial]; returns (y, branch inputs)."""
    blocks, partial, inputs = [x], None, []
    for l, (f, w, g) in enumerate(zip(branches, queries, norm_weights, strict=True)):
        if l % k == 0 and partial is not None:  # block boundary: commit the partial sum
            blocks, partial = blocks + [partial], None
        h, _ = attnres_read(blocks + ([] if partial is None else [partial]), w, g, eps)
        inputs.append(h)
        o = f(h)
        partial = o if partial is None else partial + o
    y, _ = attnres_read(blocks + ([] if partial is None else [partial]), final_query,
                        final_norm_weight, eps)
    return y, inputs


def attnres_args(conns):
    """A stack of built attnres modules as attnres_full / attnres_block keyword arguments."""
    return dict(queries=[c.pseudo_query for c in conns],
                norm_weights=[c.norm_weight for c in conns],
                final_query=conns[0].final_query, final_norm_weight=conns[0].final_norm_weight,
                eps=conns[0].eps)
