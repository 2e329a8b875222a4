"""Model zoo: dense and MoE decoder LMs and a ViT, all built on stream connections.

See :mod:`hyperfrac.models.lm` for the architecture and :mod:`hyperfrac.models.presets` for
the named shapes (tiny, CPU, and the papers' OLMo-1B / OLMo-7B / OLMoE-1B-7B).
"""

from hyperfrac.models.layers import KVCache
from hyperfrac.models.lm import LMConfig, LMOutput, MoEConfig, TransformerLM, count_params
from hyperfrac.models.moe import MoE
from hyperfrac.models.presets import (
    LM_PRESETS,
    VIT_PRESETS,
    build_model,
    build_preset,
    preset_config,
)
from hyperfrac.models.vit import ViT, ViTConfig

__all__ = [
    "KVCache",
    "LMConfig",
    "LMOutput",
    "MoEConfig",
    "TransformerLM",
    "count_params",
    "MoE",
    "ViT",
    "ViTConfig",
    "LM_PRESETS",
    "VIT_PRESETS",
    "build_model",
    "build_preset",
    "preset_config",
]
