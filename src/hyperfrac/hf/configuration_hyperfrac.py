"""``HyperfracConfig``: the HuggingFace config of a hyperfrac decoder LM.

Every field of :class:`hyperfrac.models.LMConfig` is an attribute under its own name
(``dim``, ``n_layers``, ``connection``, ...); the standard HF names (``hidden_size``,
``num_hidden_layers``, ...) are aliases. ``tie_embeddings`` is HF's ``tie_word_embeddings``;
``rope_scaling`` is stored as ``hyperfrac_rope_scaling`` (HF's ``rope_scaling`` is a
deprecated alias of its own ``rope_parameters``).

This file is also copied into exported model folders (remote code), so it imports hyperfrac
only through ``hyperfrac.models.lm``, which the exporter rewrites to a relative import.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from transformers import PretrainedConfig

from hyperfrac.models.lm import LMConfig, MoEConfig

# LMConfig fields stored on the HF config (tie_embeddings lives in tie_word_embeddings), and
# the HF attribute name of each (renamed where HF's base config already uses the name).
_LM_FIELDS = tuple(f.name for f in dataclasses.fields(LMConfig) if f.name != "tie_embeddings")
_HF_NAME = {name: name for name in _LM_FIELDS} | {"rope_scaling": "hyperfrac_rope_scaling"}


class HyperfracConfig(PretrainedConfig):
    """HF config holding an :class:`LMConfig` (``to_lm_config`` / ``from_lm_config``)."""

    model_type = "hyperfrac"
    attribute_map = {
        "hidden_size": "dim",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "max_position_embeddings": "max_seq_len",
    }

    def __init__(self, tie_word_embeddings: bool = True, **kwargs: Any) -> None:
        defaults = LMConfig()
        for name in _LM_FIELDS:
            value = kwargs.pop(_HF_NAME[name], copy.deepcopy(getattr(defaults, name)))
            if isinstance(value, MoEConfig):
                value = dataclasses.asdict(value)
            setattr(self, _HF_NAME[name], value)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    @property
    def num_key_value_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_lm_config(self) -> LMConfig:
        values = {name: copy.deepcopy(getattr(self, _HF_NAME[name])) for name in _LM_FIELDS}
        if values["moe"] is not None:
            values["moe"] = MoEConfig(**values["moe"])
        return LMConfig(tie_embeddings=bool(self.tie_word_embeddings), **values)

    @classmethod
    def from_lm_config(cls, cfg: LMConfig, **kwargs: Any) -> HyperfracConfig:
        values = {_HF_NAME[name]: copy.deepcopy(getattr(cfg, name)) for name in _LM_FIELDS}
        return cls(tie_word_embeddings=cfg.tie_embeddings, **values, **kwargs)
