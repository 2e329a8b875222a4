"""Decoder-only language models: dense (OLMo / OLMo-2 style) and MoE (OLMoE style).

Architecture (every choice is a field of :class:`LMConfig`):

* token embedding (no scaling, no positional embedding) -> ``conn.expand`` into the stream
  state -> ``n_layers`` blocks (attention, then FFN, each wrapped by a stream connection) ->
  ``conn.reduce`` back to width D (or, with ``stream_head: learned``, DeepSeek-V4's learned
  collapse :class:`~hyperfrac.connections.HyperHead`) -> final norm -> LM head (tied to the
  embedding or not);
* attention: fused QKV, RoPE, causal SDPA, optional GQA and QK-norm (OLMo-2, OLMoE);
* FFN: SwiGLU, or top-k routed SwiGLU experts (:mod:`hyperfrac.models.moe`);
* norms: RMSNorm or LayerNorm, with or without weights (OLMo-1B/7B: parameter-free LayerNorm);
* init: truncated normal(0, ``init_std``); the output projections of every branch (attention
  ``out``, FFN ``w_out``) use ``init_std * conn.output_scale``, i.e. √n for HC/DHC/mHC
  (HC §4, "Implementation": the streams are summed at the output, so each layer's output
  module std is scaled by √n).

The residual stream is whatever the configured connection says
(``connection: {kind: dhc, n_streams: 4}``); ``kind: residual`` gives the plain Pre-Norm model.

Run it::

    from hyperfrac.models import LMConfig, TransformerLM
    model = TransformerLM(LMConfig(vocab_size=8192, dim=256, n_layers=6, n_heads=4,
                                   connection={"kind": "dhc", "n_streams": 4}))
    out = model(idx, targets)          # out.loss, out.logits, out.aux_loss, out.moe_stats

Padded batches: ``model(idx, attention_mask=mask)`` with ``mask`` (B, S) 1 for real tokens, 0
for pads, left or right padding (S counts cached tokens too). Positions count real tokens only
(a left-padded prompt gets the positions it would have alone), pads are never attended to and an
MoE routes only the real tokens, so the logits of the real positions equal those of each
sequence run alone. Without a mask (or with an all-ones one) attention runs SDPA's
``is_causal`` path unchanged.

Activation checkpointing: ``model.gradient_checkpointing = True`` recomputes each block in the
backward pass (``torch.utils.checkpoint``, non-reentrant; set from outside, by hyperfrac's trainer
with ``train.activation_checkpointing`` or by HF's ``gradient_checkpointing_enable``). It
composes with a connection's own ``recompute``; gradients are those without it.

Axis legend: B batch, T time, D width, V vocabulary, n streams (HC), m fractions (FC).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from hyperfrac.connections import build, connection_class, options_for, validate_spec
from hyperfrac.connections.head import HyperHead
from hyperfrac.models.layers import (
    NORMS,
    Attention,
    Block,
    KVCache,
    Rotary,
    SwiGLU,
    build_norm,
    init_linear,
    padding_mask,
)
from hyperfrac.models.moe import MoE


@dataclass
class MoEConfig:
    """Routed-expert FFN (OLMoE). Replaces the dense SwiGLU in every block."""

    n_experts: int = 8
    """E, number of experts."""
    top_k: int = 2
    """k, experts per token."""
    expert_hidden: int = 256
    """SwiGLU hidden width H of one expert."""
    capacity_factor: float | None = 1.25
    """Slots per expert = ceil(cf * N * k / E); overflow is dropped (logged). None: dropless."""
    lb_loss_weight: float = 0.01
    """Coefficient of the load-balancing loss (OLMoE: 0.01)."""
    z_loss_weight: float = 0.001
    """Coefficient of the router z-loss (OLMoE: 0.001)."""
    norm_topk_prob: bool = False
    """Renormalise the top-k router probabilities to sum to 1 (OLMoE: False)."""


STREAM_HEADS = ("sum", "learned")
"""Values of ``LMConfig.stream_head``."""


@dataclass
class LMConfig:
    """Decoder LM shape and architecture. Field docstrings are the documentation."""

    vocab_size: int = 8192
    """Embedding rows; must be >= the tokenizer's vocabulary (pad up, e.g. to a multiple of 64)."""
    dim: int = 256
    """Model width D."""
    n_layers: int = 6
    """Number of blocks (each has 2 sublayers: attention and FFN)."""
    n_heads: int = 4
    """Attention heads; head width = dim / n_heads."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; None = n_heads (plain MHA)."""
    mlp_hidden: int | None = None
    """SwiGLU hidden width H; None = 8/3 * dim rounded up to ``multiple_of``."""
    multiple_of: int = 64
    """Rounding for the default ``mlp_hidden``."""
    max_seq_len: int = 1024
    """Longest sequence the RoPE tables cover."""
    rope_theta: float = 10_000.0
    """RoPE base (OLMo-1: 1e4, OLMo-2: 5e5)."""
    rope_scaling: dict[str, Any] | None = None
    """RoPE frequency scaling: None, ``{rope_type: linear, factor: F}`` or Llama 3.1's
    ``{rope_type: llama3, factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings}`` (see ``layers.Rotary``)."""
    norm: str = "rmsnorm"
    """Norm kind: rmsnorm | layernorm."""
    norm_affine: bool = True
    """Learnable norm weights. False = parameter-free norm (OLMo-1B/7B)."""
    norm_eps: float = 1e-5
    """Norm epsilon."""
    final_norm_eps: float | None = None
    """Epsilon of the final norm; None = ``norm_eps``. Converted HC/mHC models use
    ``n_streams**2 * norm_eps``: the final norm then sees the sum of n equal streams exactly as
    the source model saw one (see docs/huggingface.md)."""
    qk_norm: bool = False
    """Normalise projected queries and keys (OLMo-2, OLMoE)."""
    tie_embeddings: bool = True
    """Share the embedding matrix with the LM head."""
    bias: bool = False
    """Biases in the linear layers (OLMo: none)."""
    qkv_bias: bool | None = None
    """Bias on the fused QKV projection; None = ``bias``. Qwen2: True with ``bias: false``."""
    init_std: float = 0.02
    """Std of the truncated-normal init; branch output projections get × conn.output_scale."""
    connection: dict[str, Any] = field(default_factory=lambda: {"kind": "residual"})
    """Stream connection: ``kind`` (residual, postnorm, hc, dhc, fc, dfc, mhc) plus the options
    of :func:`hyperfrac.connections.build` (n_streams, n_fracs, tanh, norm, ...)."""
    moe: MoEConfig | None = None
    """Routed experts instead of the dense FFN (OLMoE); None = dense."""
    stream_head: str = "sum"
    """Stream reducer before the final norm: ``sum`` (the connection's ``reduce``, HC Alg. 1) or
    ``learned`` (DeepSeek-V4's ``HyperHead``: a sigmoid-weighted sum of the n streams that
    starts as their mean; n-stream kinds only). The mean is 1/n of the sum: after an RMSNorm
    only its eps sees the difference, so with ``learned`` the final norm sees one stream's
    scale and ``final_norm_eps`` needs no ``n_streams**2`` factor."""

    def resolved_mlp_hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        h = int(8 * self.dim / 3)
        return self.multiple_of * math.ceil(h / self.multiple_of)

    def validate(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} does not divide dim={self.dim}")
        if self.norm not in NORMS:
            raise ValueError(f"model.norm={self.norm!r}; choose one of {NORMS}")
        spec = validate_spec(self.connection)
        if self.stream_head not in STREAM_HEADS:
            raise ValueError(
                f"model.stream_head={self.stream_head!r}; choose one of {STREAM_HEADS}"
            )
        if self.stream_head == "learned":
            if connection_class(spec["kind"]).slot_option != "n_streams":
                raise ValueError(
                    f"model.stream_head='learned' collapses n streams, but connection kind "
                    f"{spec['kind']!r} has none; use an n-stream kind (hc, dhc, mhc, mhc-lite, "
                    f"kromhc) or stream_head='sum'"
                )
            if spec.get("channel_first"):
                raise ValueError(
                    "model.stream_head='learned' needs the (..., n, D) state layout; drop "
                    "connection.channel_first"
                )


class LMOutput(NamedTuple):
    logits: Tensor
    """(B, T, V) next-token logits."""
    loss: Tensor | None
    """Mean cross-entropy over targets != ignore_index (None without targets)."""
    aux_loss: Tensor
    """Weighted MoE balance + z losses summed over layers (0 for dense models)."""
    moe_stats: dict[str, Tensor]
    """Detached MoE statistics (lb_loss, z_loss, dropped, load (L, E)); empty when dense."""
    hidden_states: tuple[Tensor, ...] | None = None
    """With ``output_hidden_states``: n_layers + 1 tensors (B, T, D), the *reduced* stream
    state ``conn.collapse(h)`` after the embedding and after each block; the last one is
    before the final norm (and before a learned ``stream_head``). ``collapse`` is the
    connection's ``reduce`` (HC/mHC sum the n streams, so a converted model's states are n times
    the source model's) except for AttnRes, where it is the sum of the sources so far (Pre-Norm's
    residual stream). None otherwise."""


def _run_block(block: nn.Module, h: Tensor, rope, cache, mask, token_mask):
    """One block for ``torch.utils.checkpoint``: the MoE aux dicts are returned rather than
    appended to the caller's list, so the recompute in backward leaves that list alone."""
    aux: list[dict[str, Tensor]] = []
    return block(h, rope, aux, cache, mask, token_mask), aux


def build_connection(spec: dict[str, Any], dim: int, layer_idx: int,
                     n_sublayers: int | None = None) -> nn.Module:
    """Resolve ``{"kind": ..., **options}`` through the connection registry (which checks it).
    A kind that takes ``n_sublayers`` (AttnRes: its slot layout and final read) gets the
    model's count unless the spec sets it."""
    options = dict(spec)
    kind = options.pop("kind", None)
    if n_sublayers is not None and "n_sublayers" in options_for(kind):
        options.setdefault("n_sublayers", n_sublayers)
    return build(kind, dim, layer_idx=layer_idx, **options)


class TransformerLM(nn.Module):
    """Decoder LM; see the module docstring for the architecture."""

    gradient_checkpointing = False
    """Recompute each block in backward (see the module docstring); set from outside."""
    _gradient_checkpointing_func = functools.partial(
        torch.utils.checkpoint.checkpoint, use_reentrant=False
    )

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        D = cfg.dim
        self.embed = nn.Embedding(cfg.vocab_size, D)
        self.rotary = Rotary(D // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
        blocks = []
        for i in range(cfg.n_layers):
            attn = Attention(
                D,
                cfg.n_heads,
                cfg.n_kv_heads,
                qk_norm=cfg.qk_norm,
                norm=cfg.norm,
                norm_eps=cfg.norm_eps,
                bias=cfg.bias,
                qkv_bias=cfg.qkv_bias,
                layer_idx=i,
            )
            if cfg.moe is None:
                ffn: nn.Module = SwiGLU(D, cfg.resolved_mlp_hidden(), bias=cfg.bias)
            else:
                m = cfg.moe
                ffn = MoE(
                    D,
                    m.n_experts,
                    m.top_k,
                    m.expert_hidden,
                    capacity_factor=m.capacity_factor,
                    lb_loss_weight=m.lb_loss_weight,
                    z_loss_weight=m.z_loss_weight,
                    norm_topk_prob=m.norm_topk_prob,
                )
            norm = dict(eps=cfg.norm_eps, affine=cfg.norm_affine)
            blocks.append(
                Block(
                    attn,
                    ffn,
                    attn_conn=build_connection(cfg.connection, D, 2 * i, 2 * cfg.n_layers),
                    ffn_conn=build_connection(cfg.connection, D, 2 * i + 1, 2 * cfg.n_layers),
                    attn_norm=build_norm(cfg.norm, D, **norm),
                    ffn_norm=build_norm(cfg.norm, D, **norm),
                )
            )
        self.blocks = nn.ModuleList(blocks)
        final_eps = cfg.norm_eps if cfg.final_norm_eps is None else cfg.final_norm_eps
        self.norm = build_norm(cfg.norm, D, eps=final_eps, affine=cfg.norm_affine)
        self.stream_head: HyperHead | None = None
        if cfg.stream_head == "learned":
            n = self.streams.n_streams
            self.stream_head = HyperHead(D, n_streams=n, **_head_eps(cfg.connection))
        self.lm_head = nn.Linear(D, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.reset_parameters()

    @property
    def streams(self) -> nn.Module:
        """The connection whose ``expand``/``reduce`` enter and leave the stream state (all
        connections of a model share them)."""
        return self.blocks[0].attn_conn

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Embedding, LM head and branch weights; the connections and the stream head keep
        their own (Pre-Norm-equivalent) initialisation."""
        std = self.cfg.init_std
        nn.init.trunc_normal_(self.embed.weight, std=std, a=-3 * std, b=3 * std)
        if not self.cfg.tie_embeddings:
            init_linear(self.lm_head, std)
        for block in self.blocks:
            out_std = std * float(block.attn_conn.output_scale)
            init_linear(block.attn.qkv, std)
            init_linear(block.attn.out, out_std)
            ffn_std = std * float(block.ffn_conn.output_scale)
            if isinstance(block.ffn, MoE):
                init_linear(block.ffn.router, std)
                nn.init.trunc_normal_(block.ffn.w_in, std=std, a=-3 * std, b=3 * std)
                nn.init.trunc_normal_(block.ffn.w_out, std=ffn_std, a=-3 * ffn_std, b=3 * ffn_std)
            else:
                init_linear(block.ffn.w_in, std)
                init_linear(block.ffn.w_out, ffn_std)

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        ignore_index: int = -100,
        cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> LMOutput:
        """idx: (B, T) token ids; targets: (B, T) next-token ids or None.

        With a ``cache`` (:class:`~hyperfrac.models.layers.KVCache` or a transformers
        ``DynamicCache``) idx holds only the new tokens; their positions continue after the
        cached ones and the cache is extended in place. ``attention_mask`` (B, past + T), 1 =
        real token, 0 = pad, for padded batches; ``position_ids`` (B, T) overrides the positions
        (by default the count of real tokens before each one)."""
        B, T = idx.shape
        past = cache.get_seq_length() if cache is not None else 0
        mask = token_mask = None
        if attention_mask is not None:
            if attention_mask.shape != (B, past + T):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}; expected "
                    f"(batch, cached + new tokens) = {(B, past + T)}"
                )
            if bool(attention_mask.all()):
                attention_mask = None  # nothing padded: the plain causal path
        if attention_mask is not None:
            mask = padding_mask(attention_mask, T)  # (B, 1, T, S)
            if self.cfg.moe is not None:
                token_mask = attention_mask[:, past:].bool()  # (B, T)
            if position_ids is None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, past:]
        if position_ids is not None:
            rope = self.rotary.at(position_ids.expand(B, T))  # 2 x (B, 1, T, Dh)
        else:
            rope = self.rotary(T, past)
        x = self.embed(idx)  # (B, T, D)
        h = self.streams.expand(x)  # HC: (B, T, n, D); FC: (B, T, m, D/m); residual: (B, T, D)
        aux: list[dict[str, Tensor]] = []
        hidden = [self.streams.collapse(h)] if output_hidden_states else None
        checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if checkpoint and self.cfg.moe is not None and getattr(
            self._gradient_checkpointing_func, "keywords", {}
        ).get("use_reentrant"):
            raise ValueError(
                "reentrant checkpointing runs the forward without grad, so the MoE balance loss "
                "would get no gradient; use use_reentrant=False (the default)"
            )
        for block in self.blocks:
            if checkpoint and cache is None:
                h, block_aux = self._gradient_checkpointing_func(
                    _run_block, block, h, rope, cache, mask, token_mask
                )
                aux.extend(block_aux)
            elif mask is None:
                h = block(h, rope, aux) if cache is None else block(h, rope, aux, cache)
            else:
                h = block(h, rope, aux, cache, mask, token_mask)
            if hidden is not None:
                hidden.append(self.streams.collapse(h))
        if self.stream_head is not None:
            x = self.norm(self.stream_head(h))  # (B, T, n, D) -> (B, T, D)
        else:
            x = self.norm(self.streams.reduce(h))  # (B, T, D)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(B * T, -1), targets.reshape(B * T), ignore_index=ignore_index
            )
        if aux:
            aux_loss = torch.stack([a["loss"] for a in aux]).sum()
            stats = {
                "lb_loss": torch.stack([a["lb_loss"] for a in aux]).mean(),
                "z_loss": torch.stack([a["z_loss"] for a in aux]).mean(),
                "dropped": torch.stack([a["dropped"] for a in aux]).mean(),
                "load": torch.stack([a["load"] for a in aux]),  # (L, E)
            }
        else:
            aux_loss, stats = logits.new_zeros((), dtype=torch.float32), {}
        return LMOutput(logits, loss, aux_loss, stats, tuple(hidden) if hidden else None)


def _head_eps(spec: dict[str, Any]) -> dict[str, float]:
    """HyperHead eps / norm_eps: V4's hc_eps and rms_norm_eps from an mhc spec of flavor
    deepseek-v4, the head's own defaults (V4's) otherwise."""
    if spec.get("flavor") != "deepseek-v4":
        return {}
    spec = validate_spec(spec)
    return {k: spec[k] for k in ("eps", "norm_eps") if k in spec}


def count_params(model: nn.Module, *, exclude_embeddings: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once). With ``exclude_embeddings``
    the token embedding and LM head are left out."""
    seen: set[int] = set()
    total = 0
    skip: set[int] = set()
    if exclude_embeddings:
        for name in ("embed", "lm_head"):
            sub = getattr(model, name, None)
            if sub is not None:
                skip.update(id(p) for p in sub.parameters())
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        total += p.numel()
    return total
