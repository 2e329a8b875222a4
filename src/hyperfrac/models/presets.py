"""Named model shapes: tiny ones for tests, CPU ones for real runs, and the papers' shapes.

Paper shapes build on the meta device (``build_preset(name, device="meta")``) so their
parameter counts can be checked without allocating memory:

* ``olmo-1b`` — OLMo-1B (Groeneveld et al. 2024) as counted in HC Table 7: 1,176,764,416
  parameters. d=2048, 16 layers, 16 heads, SwiGLU hidden 8192 (OLMo's ``mlp_ratio=8`` is the
  fused gate+up width 16384; the activated width is 8192), vocab 50304 (50280 padded), tied
  embeddings, no biases, parameter-free LayerNorm, RoPE. Per block: QKV 2048x6144 + out
  2048x2048 + gate/up 2048x16384 + down 8192x2048 = 67,108,864; x16 = 1,073,741,824; plus the
  embedding 50304x2048 = 103,022,592.
* ``olmo-7b`` — OLMo-7B: d=4096, 32 layers, 32 heads, SwiGLU hidden 11008, untied embeddings,
  parameter-free LayerNorm: 6,888,095,744 (published "6.9B"; HC Table 5 "6.9B").
* ``olmoe-1b-7b`` — OLMoE-1B-7B (Muennighoff et al. 2024): d=2048, 16 layers, 16 heads, 64
  experts, top-8, expert hidden 1024, RMSNorm with weights, QK-norm, untied: 6,919,161,856
  total, 1,282,017,280 active per token (published "6.9B total / 1.3B active").

CPU shapes follow the measurements in the project's data notes (6x256 is the smallest
"real" model; 12x192 is the deeper-narrow alternative with a similar non-embedding size).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hyperfrac.models.lm import LMConfig, MoEConfig, TransformerLM
from hyperfrac.models.vit import ViT, ViTConfig

_OLMO_V = 50304

LM_PRESETS: dict[str, LMConfig] = {
    "tiny": LMConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, max_seq_len=256),
    "tiny-moe": LMConfig(
        vocab_size=512,
        dim=64,
        n_layers=2,
        n_heads=4,
        max_seq_len=256,
        moe=MoEConfig(n_experts=4, top_k=2, expert_hidden=96),
    ),
    "cpu-6x256": LMConfig(vocab_size=8192, dim=256, n_layers=6, n_heads=4, max_seq_len=512),
    "cpu-12x192": LMConfig(vocab_size=8192, dim=192, n_layers=12, n_heads=3, max_seq_len=512),
    "cpu-moe-6x256": LMConfig(
        vocab_size=8192,
        dim=256,
        n_layers=6,
        n_heads=4,
        max_seq_len=512,
        moe=MoEConfig(n_experts=8, top_k=2, expert_hidden=352),
    ),
    "olmo-1b": LMConfig(
        vocab_size=_OLMO_V,
        dim=2048,
        n_layers=16,
        n_heads=16,
        mlp_hidden=8192,
        max_seq_len=2048,
        norm="layernorm",
        norm_affine=False,
        tie_embeddings=True,
    ),
    "olmo-7b": LMConfig(
        vocab_size=_OLMO_V,
        dim=4096,
        n_layers=32,
        n_heads=32,
        mlp_hidden=11008,
        max_seq_len=2048,
        norm="layernorm",
        norm_affine=False,
        tie_embeddings=False,
    ),
    "olmoe-1b-7b": LMConfig(
        vocab_size=_OLMO_V,
        dim=2048,
        n_layers=16,
        n_heads=16,
        max_seq_len=4096,
        norm="rmsnorm",
        norm_affine=True,
        qk_norm=True,
        tie_embeddings=False,
        moe=MoEConfig(n_experts=64, top_k=8, expert_hidden=1024, capacity_factor=None),
    ),
}

VIT_PRESETS: dict[str, ViTConfig] = {
    "vit-tiny": ViTConfig(dim=32, n_layers=2, n_heads=2),
    "vit-fmnist": ViTConfig(dim=192, n_layers=6, n_heads=3, patch_size=7),
}

# Published parameter counts the presets reproduce (tested in tests/models/test_presets.py).
PUBLISHED_PARAMS: dict[str, int] = {"olmo-1b": 1_176_764_416}


def preset_config(name: str, **overrides: Any) -> LMConfig | ViTConfig:
    """A copy of preset ``name`` with dataclass fields replaced by ``overrides``."""
    table: dict[str, Any] = {**LM_PRESETS, **VIT_PRESETS}
    if name not in table:
        raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(table)}")
    cfg = copy.deepcopy(table[name])
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise KeyError(f"{type(cfg).__name__} has no field {key!r}")
        setattr(cfg, key, value)
    return cfg


def build_model(cfg: LMConfig | ViTConfig, device: str | torch.device | None = None) -> nn.Module:
    """Build the model for a config; ``device="meta"`` allocates nothing."""
    ctor: Callable[..., nn.Module] = TransformerLM if isinstance(cfg, LMConfig) else ViT
    if device is None:
        return ctor(cfg)
    with torch.device(device):
        return ctor(cfg)


def build_preset(
    name: str, device: str | torch.device | None = None, **overrides: Any
) -> nn.Module:
    """``build_model(preset_config(name, **overrides), device)``."""
    return build_model(preset_config(name, **overrides), device)
