"""Transformer building blocks in the OLMo-2 style: norm, rotary embedding, attention, SwiGLU.

Read top to bottom: ``build_norm`` -> ``Rotary`` -> ``Attention`` -> ``SwiGLU`` -> ``Block``.

* Norms: RMSNorm (OLMo-2, OLMoE) or LayerNorm, each with or without learnable weight. OLMo-1B/7B
  use a *non-parametric* LayerNorm (no weight, no bias), which is why they have no norm params.
* RoPE (Su et al. 2021, "RoFormer"), rotate-half convention as in Llama/OLMo, computed in fp32.
* Attention: one fused QKV projection, optional grouped-query heads, optional QK-norm over the
  full projected width (OLMo-2 / OLMoE), causal or bidirectional
  ``F.scaled_dot_product_attention``. Without a padding mask SDPA runs with ``is_causal``; a
  padded batch passes a boolean mask (B, 1, T, S) built by :func:`padding_mask`.
* SwiGLU MLP (Shazeer 2020): one fused input projection D -> 2H (gate and up), output H -> D.
* Block: two stream connections (attention, FFN) from :mod:`hyperfrac.connections`. The block
  owns the pre-norms and hands the connection a *branch* callable; with ``postnorm`` the
  connection normalises after the add itself, so the block skips its pre-norm.
* KVCache: keys and values of earlier tokens for incremental decoding. Its two methods
  (``update``, ``get_seq_length``) are those of transformers' ``DynamicCache``, so either can
  be passed as ``cache``.

Axis legend: B batch, T time (tokens), D width, H heads / hidden, Dh head width.
Model code here knows nothing about devices, precision or distribution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMS = ("rmsnorm", "layernorm")


def build_norm(kind: str, dim: int, *, eps: float = 1e-5, affine: bool = True) -> nn.Module:
    """RMSNorm or LayerNorm over the last axis; ``affine=False`` gives the parameter-free
    variant used by OLMo-1B/7B (``layernorm``, no weight, no bias)."""
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps, elementwise_affine=affine)
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, elementwise_affine=affine, bias=False)
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


class Rotary(nn.Module):
    """Rotary position embedding tables (RoFormer Eq. 34), rotate-half layout.

    ``cos``/``sin`` are non-persistent buffers of shape (max_seq_len, Dh): they are rebuilt on
    construction and never stored in checkpoints.

    ``scaling`` rescales the frequencies for models trained that way (as in transformers):
    ``{"rope_type": "linear", "factor": f}`` divides every frequency by f (position
    interpolation); ``{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"}`` divides the low frequencies by ``factor``, keeps the
    high ones and interpolates in between (Llama 3.1).
    """

    SCALINGS = ("default", "linear", "llama3")

    def __init__(
        self,
        head_dim: int,
        max_seq_len: int,
        theta: float = 10_000.0,
        scaling: dict | None = None,
    ) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head width, got head_dim={head_dim}")
        kind = (scaling or {}).get("rope_type", "default")
        if kind not in self.SCALINGS:
            raise ValueError(f"rope scaling {kind!r} is not supported; choose from {self.SCALINGS}")
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        self.scaling = dict(scaling or {})
        cos, sin = self.tables()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def tables(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """Freshly computed (cos, sin), each (max_seq_len, Dh), float32."""
        dh = self.head_dim
        exponent = torch.arange(0, dh, 2, dtype=torch.float32, device=device) / dh  # (Dh/2,)
        inv_freq = _scale_frequencies(1.0 / self.theta**exponent, self.scaling)  # (Dh/2,)
        t = torch.arange(self.max_seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)  # (T, Dh/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (T, Dh)
        return emb.cos(), emb.sin()

    def forward(self, T: int, offset: int = 0) -> tuple[Tensor, Tensor]:
        """Tables for positions ``offset .. offset+T-1`` (offset > 0 when decoding with a cache)."""
        if offset + T > self.max_seq_len:
            raise ValueError(
                f"sequence length {offset + T} exceeds max_seq_len={self.max_seq_len}; "
                "raise model.max_seq_len"
            )
        return self.cos[offset : offset + T], self.sin[offset : offset + T]

    def at(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Tables for per-sequence positions (B, T) (padded batches): each (B, 1, T, Dh)."""
        if positions.numel() and int(positions.max()) >= self.max_seq_len:
            raise ValueError(
                f"position {int(positions.max())} exceeds max_seq_len={self.max_seq_len}; "
                "raise model.max_seq_len"
            )
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def _scale_frequencies(inv_freq: Tensor, scaling: dict) -> Tensor:
    """RoPE frequency scaling (``Rotary``'s docstring); the identity without ``scaling``."""
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor, low, high = (
            scaling["factor"],
            scaling["low_freq_factor"],
            scaling["high_freq_factor"],
        )
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, H, T, Dh); cos/sin: (T, Dh) or (B, 1, T, Dh). Rotation in fp32, result in x's
    dtype."""
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Keys and values of the tokens seen so far, one entry per attention layer.

    Same interface as transformers' ``DynamicCache`` (``update``, ``get_seq_length``), so the
    HF wrapper hands its cache straight to the model.
    """

    def __init__(self) -> None:
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[-2] if layer_idx < len(self.keys) else 0

    def update(self, k: Tensor, v: Tensor, layer_idx: int, *_args) -> tuple[Tensor, Tensor]:
        """Append k, v (B, Hkv, T, Dh) of layer ``layer_idx``; return all keys and values."""
        if layer_idx == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        elif layer_idx < len(self.keys):
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], k], dim=-2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], v], dim=-2)
        else:
            raise ValueError(f"KVCache: layer {layer_idx} updated before layer {len(self.keys)}")
        return self.keys[layer_idx], self.values[layer_idx]


def padding_mask(attention_mask: Tensor, T: int) -> Tensor:
    """Boolean SDPA mask (B, 1, T, S) for the T newest of S tokens, True = may attend.

    ``attention_mask`` (B, S) marks real tokens 1 and pads 0 (HF convention; S counts the
    cached tokens too). Query i sits at position S - T + i and sees the real keys up to it.
    It always sees itself: a pad query (left padding) would otherwise have no key at all and
    SDPA would return NaN; its output is never read by a real token.
    """
    B, S = attention_mask.shape
    keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    q_pos = torch.arange(S - T, S, device=attention_mask.device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=attention_mask.device)[None, :]  # (1, S)
    return (keys & (k_pos <= q_pos)) | (k_pos == q_pos)  # (B, 1, T, S)


class Attention(nn.Module):
    """Multi-head self-attention with fused QKV, optional GQA and optional QK-norm."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        *,
        qk_norm: bool = False,
        norm: str = "rmsnorm",
        norm_eps: float = 1e-5,
        bias: bool = False,
        causal: bool = True,
        qkv_bias: bool | None = None,
        layer_idx: int = 0,
    ) -> None:
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if dim % n_heads:
            raise ValueError(f"n_heads={n_heads} does not divide dim={dim}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} does not divide n_heads={n_heads}")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = dim // n_heads
        self.causal = causal
        self.layer_idx = layer_idx  # index of this layer's entry in a KVCache
        kv_dim = n_kv_heads * self.head_dim
        qkv_bias = bias if qkv_bias is None else qkv_bias  # Qwen2: bias on QKV only
        self.qkv = nn.Linear(dim, dim + 2 * kv_dim, bias=qkv_bias)
        self.out = nn.Linear(dim, dim, bias=bias)
        # OLMo-2 / OLMoE QK-norm: one norm over the full projected q (and k) width.
        self.q_norm = build_norm(norm, dim, eps=norm_eps) if qk_norm else None
        self.k_norm = build_norm(norm, kv_dim, eps=norm_eps) if qk_norm else None

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """x: (B, T, D). With a ``cache``, x holds the T newest tokens, ``rope`` their positions,
        and the keys/values of earlier tokens come from the cache (which is updated). ``mask``
        (B, 1, T, S) boolean (:func:`padding_mask`) replaces the causal rule (padded batches)."""
        B, T, D = x.shape
        kv_dim = self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([D, kv_dim, kv_dim], dim=-1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        causal = self.causal and mask is None  # a padding mask holds the causal rule itself
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, Hkv, S, Dh), S = past + T
            S = k.shape[-2]
            if S > T and causal:  # query i sits at position S - T + i
                causal = False
                if T > 1:
                    mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=self.n_kv_heads != self.n_heads
        )  # (B, H, T, Dh)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.out(y)


class SwiGLU(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): out(silu(gate(x)) * up(x)), gate/up fused."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = False) -> None:
        super().__init__()
        self.hidden = hidden
        self.w_in = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w_out = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w_in(x).chunk(2, dim=-1)  # 2 x (..., hidden)
        return self.w_out(F.silu(gate) * up)


class Block(nn.Module):
    """One transformer block: attention then FFN, each wrapped by a stream connection.

    ``h`` is the connection's stream state (HC: (B, T, n, D); FC: (B, T, m, D/m); residual:
    (B, T, D)). The branch seen by the connection is ``attn(norm(x))`` (pre-norm), or
    ``attn(x)`` for connections that normalise themselves (``postnorm``). The FFN may be a
    dense :class:`SwiGLU` or an MoE layer; an MoE returns ``(out, aux)`` and its ``aux`` is
    appended to the ``aux`` list handed to :meth:`forward`.

    Padded batches: ``mask`` (B, 1, T, S) goes to the attention, ``token_mask`` (B, T) (real
    tokens) to an MoE FFN, which then routes only the real tokens.
    """

    def __init__(
        self,
        attn: nn.Module,
        ffn: nn.Module,
        attn_conn: nn.Module,
        ffn_conn: nn.Module,
        attn_norm: nn.Module,
        ffn_norm: nn.Module,
    ) -> None:
        super().__init__()
        self.attn, self.ffn = attn, ffn
        self.attn_conn, self.ffn_conn = attn_conn, ffn_conn
        # Post-norm connections normalise after the add: no block pre-norm (and no params).
        self.attn_norm = attn_norm if attn_conn.uses_prenorm else None
        self.ffn_norm = ffn_norm if ffn_conn.uses_prenorm else None

    def forward(
        self,
        h: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        aux: list | None = None,
        cache: KVCache | None = None,
        mask: Tensor | None = None,
        token_mask: Tensor | None = None,
    ) -> Tensor:
        def attn_branch(x: Tensor) -> Tensor:
            if self.attn_norm is not None:
                x = self.attn_norm(x)
            if mask is not None:
                return self.attn(x, rope, cache, mask)
            return self.attn(x, rope) if cache is None else self.attn(x, rope, cache)

        def ffn_branch(x: Tensor) -> Tensor:
            if self.ffn_norm is not None:
                x = self.ffn_norm(x)
            y = self.ffn(x) if token_mask is None else self.ffn(x, token_mask)
            if isinstance(y, tuple):  # MoE: (out, aux dict)
                y, a = y
                if aux is not None:
                    aux.append(a)
            return y

        h = self.attn_conn(h, attn_branch)
        return self.ffn_conn(h, ffn_branch)


def init_linear(module: nn.Linear, std: float) -> None:
    """Normal(0, std) weights truncated at ±3 std (OLMo-2), zero bias."""
    nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
