"""Text generation for hyperfrac language models: temperature, top-k, top-p, KV cache.

Torch only; works on :class:`hyperfrac.models.TransformerLM` and on anything with the same
``forward(idx, cache=...) -> .logits`` signature. With ``use_cache=True`` the prompt is run
once and every later step feeds only the newest token (keys and values of earlier tokens come
from a :class:`~hyperfrac.models.layers.KVCache`); ``use_cache=False`` recomputes the whole
sequence each step. Both draw the same random numbers, so they give the same tokens (tested).
MoE models with a capacity factor drop tokens depending on how many share a forward pass, so
generate with ``capacity_factor=None`` (dropless) for results that do not depend on the cache.

Prompts of different lengths go in one padded batch with ``attention_mask`` (B, T), 1 for real
tokens and 0 for pads (left padding, so every row's next token is at the end); each row then
gets the tokens it would get alone (greedy; tested).

    from hyperfrac.generate import generate
    out = generate(model, idx, max_new_tokens=50, temperature=0.8, top_k=50, top_p=0.95,
                   generator=torch.Generator().manual_seed(0))     # (B, T + new)

Axis legend: B batch, T time, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hyperfrac.models.layers import KVCache


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Next token ids (B, 1) from last-position logits (B, V).

    ``temperature <= 0`` is greedy (argmax). Otherwise logits / temperature, then keep the
    ``top_k`` most likely tokens and the smallest set whose probability reaches ``top_p``
    (nucleus sampling, Holtzman et al. 2019; the most likely token is always kept).
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None for no limit), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1] (or None), got {top_p}")
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= top_p  # mass before this token >= p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    eos_id: int | None = None,
    attention_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Append up to ``max_new_tokens`` sampled tokens to ``idx`` (B, T); returns (B, T + new).

    Stops early once every sequence has produced ``eos_id``; a finished row keeps emitting
    ``eos_id``. ``attention_mask`` (B, T): a left-padded batch (module docstring). The model is
    put in eval mode.
    """
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must be (B, T) token ids with T >= 1, got shape {tuple(idx.shape)}")
    if attention_mask is not None:
        if attention_mask.shape != idx.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, idx {tuple(idx.shape)}"
            )
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("generate needs left padding: the last prompt token of every row "
                             "must be real (attention_mask[:, -1] == 1)")
        attention_mask = attention_mask.long()
    max_len = getattr(getattr(model, "cfg", None), "max_seq_len", None)
    if max_len is not None and idx.shape[1] + max_new_tokens > max_len:
        raise ValueError(
            f"prompt ({idx.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's max_seq_len={max_len}; shorten the prompt or ask for fewer tokens"
        )
    model.eval()
    cache = KVCache() if use_cache else None
    out, step_input = idx, idx
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    mask_kw: dict[str, Tensor] = {}
    for _ in range(max_new_tokens):
        if attention_mask is not None:
            mask_kw = {"attention_mask": attention_mask}
        if cache is not None:
            logits = model(step_input, cache=cache, **mask_kw).logits[:, -1]  # (B, V)
        else:
            logits = model(out, **mask_kw).logits[:, -1]  # (B, V)
        tok = sample_next(
            logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        )  # (B, 1)
        if eos_id is not None:
            tok = tok.masked_fill(done.unsqueeze(1), eos_id)  # finished rows keep emitting EOS
            done |= tok.squeeze(1) == eos_id
        out, step_input = torch.cat([out, tok], dim=1), tok
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, torch.ones_like(tok)], dim=1)
        if eos_id is not None and bool(done.all()):
            break
    return out
