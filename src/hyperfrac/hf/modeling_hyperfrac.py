"""``HyperfracForCausalLM``: a hyperfrac decoder LM as a HuggingFace ``PreTrainedModel``.

The wrapped :class:`hyperfrac.models.TransformerLM` is ``self.model``; its weights keep their
hyperfrac names under ``model.`` (``model.blocks.0.attn.qkv.weight``, ...), so a hyperfrac
state dict loads with ``self.model.load_state_dict``.

* ``forward(input_ids, attention_mask=None, position_ids=None, past_key_values=None,
  labels=None, use_cache=None, output_hidden_states=None, num_items_in_batch=None)`` returns
  ``CausalLMOutputWithPast``; ``labels`` are the inputs themselves (shifted inside, HF
  convention, -100 ignored).
* Loss: the summed token cross-entropy over ``num_items_in_batch`` when ``Trainer`` passes it
  (``accepts_loss_kwargs = True``), so gradient accumulation gives the loss and gradients of one
  large batch; the mean over the batch's labelled tokens otherwise. An MoE's balance losses are
  added with weight (this batch's labelled tokens) / ``num_items_in_batch``, i.e. token-weighted
  over the accumulated micro-batches.
* Padding: ``attention_mask`` (B, S) with 0 for pads, left or right; positions skip the pads, so
  the real positions' logits equal those of each sequence alone (see
  :class:`~hyperfrac.models.lm.TransformerLM`). Batched ``generate()`` of prompts of different
  lengths (left padding) gives each prompt's own continuation.
* ``generate()`` works with a KV cache: the model's attention takes transformers'
  ``DynamicCache`` as it is (``update`` / ``get_seq_length``).
* ``supports_gradient_checkpointing``: ``gradient_checkpointing_enable()`` (or
  ``TrainingArguments(gradient_checkpointing=True)``) recomputes every block in backward.
* ``output_hidden_states=True``: n_layers + 1 reduced stream states (``LMOutput.hidden_states``);
  ``output_attentions`` is not supported (SDPA computes no attention matrix) and raises.

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
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = True  # forward honours Trainer's num_items_in_batch

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        """TransformerLM initialises itself; only non-persistent buffers (never in a checkpoint)
        are rebuilt here, for models created on the meta device: the RoPE tables and the
        connections' constants (``reset_buffers``, e.g. mHC-lite's permutation matrices)."""
        if isinstance(module, Rotary):
            device = "cpu" if module.cos.is_meta else module.cos.device
            module.cos, module.sin = module.tables(device)
        reset = getattr(module, "reset_buffers", None)  # connections' constant buffers
        if callable(reset):
            reset()


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
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: Tensor | int | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if kwargs.get("inputs_embeds") is not None or input_ids is None:
            raise ValueError("hyperfrac models take input_ids, not inputs_embeds")
        if output_attentions:
            raise ValueError(
                "output_attentions is not supported: attention runs in SDPA, which returns no "
                "attention matrix"
            )
        if output_hidden_states is None:
            output_hidden_states = bool(self.config.output_hidden_states)
        cache = past_key_values
        if self.model.gradient_checkpointing and self.training and torch.is_grad_enabled():
            use_cache, cache = False, None  # the recompute would extend the cache twice
        if use_cache and cache is None:
            cache = DynamicCache()
        out = self.model(
            input_ids,
            cache=cache,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
        )
        logits = out.logits  # (B, T, V)
        loss = None
        if labels is not None:
            loss = self._loss(logits, labels, out.aux_loss, num_items_in_batch)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=cache if use_cache else None,
            hidden_states=out.hidden_states,
        )

    def _loss(
        self, logits: Tensor, labels: Tensor, aux_loss: Tensor, num_items: Tensor | int | None
    ) -> Tensor:
        """Next-token cross-entropy (module docstring): sum / ``num_items`` or the mean."""
        V = logits.shape[-1]
        targets = labels[:, 1:].reshape(-1).to(logits.device)
        total = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, V), targets, ignore_index=-100, reduction="sum"
        )
        n_here = (targets != -100).sum()
        if num_items is None:
            denom = n_here
        else:
            denom = torch.as_tensor(num_items, device=total.device)
        loss = total / denom
        if self.model.cfg.moe is not None:
            loss = loss + aux_loss * (n_here / denom if num_items is not None else 1.0)
        return loss

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        past_key_values: DynamicCache | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool = True,
        **kwargs,
    ) -> dict:
        """Feed only the tokens the cache has not seen yet; the mask covers all of them (the
        model derives the positions from it)."""
        if past_key_values is not None and past_key_values.get_seq_length() > 0:
            input_ids = input_ids[:, past_key_values.get_seq_length() :]
        return {
            "input_ids": input_ids,
            "past_key_values": past_key_values,
            "attention_mask": attention_mask,
            "use_cache": use_cache,
            "output_hidden_states": kwargs.get("output_hidden_states"),
        }
