"""Vision Transformer (Dosovitskiy et al. 2021) with the same blocks and stream connections as
the language models.

* patch embedding: a ``Conv2d`` with kernel = stride = ``patch_size`` (one linear map per patch);
* learned absolute position embedding; optional class token (``pool: cls``) or mean pooling over
  the patch tokens (``pool: mean``);
* blocks: bidirectional attention + SwiGLU, wrapped by the configured stream connection,
  expanded after the embedding and reduced before the final norm, as in the LM;
* head: final norm -> linear classifier.

Axis legend: B batch, C channels, H/W image height/width, P patches (+1 with a class token),
D width.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from hyperfrac.connections import validate_spec
from hyperfrac.models.layers import NORMS, Attention, Block, SwiGLU, build_norm, init_linear
from hyperfrac.models.lm import build_connection


@dataclass
class ViTConfig:
    """ViT shape. Defaults: Fashion-MNIST-sized input (28x28x1), patch 7 -> 16 patches."""

    image_size: int = 28
    """Square input side in pixels."""
    patch_size: int = 7
    """Square patch side; must divide image_size."""
    in_channels: int = 1
    """Input channels."""
    num_classes: int = 10
    """Classifier outputs."""
    dim: int = 192
    """Model width D."""
    n_layers: int = 6
    """Number of blocks."""
    n_heads: int = 3
    """Attention heads."""
    mlp_hidden: int | None = None
    """SwiGLU hidden width; None = 8/3 * dim rounded up to 64."""
    pool: str = "mean"
    """cls (class token) | mean (mean of patch tokens)."""
    norm: str = "rmsnorm"
    """rmsnorm | layernorm."""
    norm_affine: bool = True
    """Learnable norm weights."""
    norm_eps: float = 1e-5
    """Norm epsilon."""
    qk_norm: bool = False
    """QK-norm in attention."""
    init_std: float = 0.02
    """Truncated-normal init std (output projections × conn.output_scale)."""
    connection: dict[str, Any] = field(default_factory=lambda: {"kind": "residual"})
    """Stream connection spec, as for the LM."""

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size={self.patch_size} does not divide image_size={self.image_size}"
            )
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool={self.pool!r}; choose cls or mean")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}; choose one of {NORMS}")
        if self.dim % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} does not divide dim={self.dim}")
        validate_spec(self.connection)


class ViT(nn.Module):
    """Image classifier; see the module docstring."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        D = cfg.dim
        n_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch = nn.Conv2d(cfg.in_channels, D, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.pool == "cls" else None
        self.pos = nn.Parameter(torch.zeros(1, n_patches + (cfg.pool == "cls"), D))
        hidden = cfg.mlp_hidden or 64 * math.ceil(int(8 * D / 3) / 64)
        norm = dict(eps=cfg.norm_eps, affine=cfg.norm_affine)
        self.blocks = nn.ModuleList(
            Block(
                Attention(
                    D,
                    cfg.n_heads,
                    qk_norm=cfg.qk_norm,
                    norm=cfg.norm,
                    norm_eps=cfg.norm_eps,
                    causal=False,
                ),
                SwiGLU(D, hidden),
                attn_conn=build_connection(cfg.connection, D, 2 * i, 2 * cfg.n_layers),
                ffn_conn=build_connection(cfg.connection, D, 2 * i + 1, 2 * cfg.n_layers),
                attn_norm=build_norm(cfg.norm, D, **norm),
                ffn_norm=build_norm(cfg.norm, D, **norm),
            )
            for i in range(cfg.n_layers)
        )
        self.norm = build_norm(cfg.norm, D, **norm)
        self.head = nn.Linear(D, cfg.num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        nn.init.trunc_normal_(self.pos, std=std, a=-3 * std, b=3 * std)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=std, a=-3 * std, b=3 * std)
        for block in self.blocks:
            init_linear(block.attn.qkv, std)
            init_linear(block.attn.out, std * float(block.attn_conn.output_scale))
            init_linear(block.ffn.w_in, std)
            init_linear(block.ffn.w_out, std * float(block.ffn_conn.output_scale))
        init_linear(self.head, std)

    gradient_checkpointing = False
    """Recompute each block in backward (``train.activation_checkpointing``); set from outside."""
    _gradient_checkpointing_func = functools.partial(
        torch.utils.checkpoint.checkpoint, use_reentrant=False
    )

    def forward(self, images: Tensor) -> Tensor:
        """images: (B, C, H, W) -> logits (B, num_classes)."""
        x = self.patch(images).flatten(2).transpose(1, 2)  # (B, P, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, P+1, D)
        x = x + self.pos
        conn = self.blocks[0].attn_conn
        h = conn.expand(x)
        checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            h = self._gradient_checkpointing_func(block, h) if checkpoint else block(h)
        x = self.norm(conn.reduce(h))  # (B, P, D)
        pooled = x[:, 0] if self.cls_token is not None else x.mean(dim=1)  # (B, D)
        return self.head(pooled)
