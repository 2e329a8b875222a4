"""``HyperfracForCausalLM``: a hyperfrac decoder LM as a HuggingFace ``PreTrainedModel``.

The wrapped :class:`hyperfrac.models.TransformerLM` is ``self.model``; its weights keep their
hyperfrac names under ``model.`` (``model.blocks.0.attn.qkv.weight``, ...), so a hyperfrac
state dict loads with ``self.model.load_state_dict``.

* ``forward(input_ids, labels=None, past_key_values=None, use_cache=None)`` returns
  ``CausalLMOutputWithPast``; ``labels`` are the inputs themselves (shifted inside, HF
  convention, -100 ignored).
* ``generate()`` works with a KV cache: the model's attention takes transformers'
  ``DynamicCache`` as it is (``update`` / ``get_seq_length``). Padding masks are not supported:
  batch prompts of equal length, or generate one prompt at a time.

This file is also copied into exported model folders (remote code); it imports hyperfrac only
through ``hyperfrac.models.*`` and ``hyperfrac.hf.configuration_hyperfrac``, which the exporter
rewrites to relative imports of the bundled copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from hyperfrac.hf.configuration_hyperfrac import HyperfracConfig
from hyperfrac.models.layers import Rotary
from hyperfrac.models.lm import TransformerLM


class HyperfracPreTrainedModel(PreTrainedModel):
    config_class = HyperfracConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        """TransformerLM initialises itself; only the RoPE tables (non-persistent buffers, never
        in a checkpoint) are rebuilt here, for models created on the meta device."""
        if isinstance(module, Rotary):
            device = "cpu" if module.cos.is_meta else module.cos.device
            module.cos, module.sin = module.tables(device)


class HyperfracForCausalLM(HyperfracPreTrainedModel, GenerationMixin):
    """Causal LM head model over :class:`TransformerLM` (see the module docstring)."""

    _tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}

    def __init__(self, config: HyperfracConfig) -> None:
        super().__init__(config)
        self.model = TransformerLM(config.to_lm_config())
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.embed

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.model.lm_head

    def set_output_embeddings(self, value: torch.nn.Linear) -> None:
        self.model.lm_head = value

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "hyperfrac models take no padding mask (attention_mask has zeros); batch "
                "sequences of equal length or run them one at a time"
            )
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("hyperfrac models take input_ids, not inputs_embeds")
        cache = past_key_values
        if use_cache and cache is None:
            cache = DynamicCache()
        out = self.model(input_ids, cache=cache)
        logits = out.logits  # (B, T, V)
        loss = None
        if labels is not None:
            V = logits.shape[-1]
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100
            )
            if out.aux_loss is not None and self.model.cfg.moe is not None:
                loss = loss + out.aux_loss
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=cache if use_cache else None
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        past_key_values: DynamicCache | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool = True,
        **kwargs,
    ) -> dict:
        """Feed only the tokens the cache has not seen yet."""
        if past_key_values is not None and past_key_values.get_seq_length() > 0:
            input_ids = input_ids[:, past_key_values.get_seq_length() :]
        return {
            "input_ids": input_ids,
            "past_key_values": past_key_values,
            "attention_mask": attention_mask,
            "use_cache": use_cache,
        }
