"""Convert a HuggingFace Llama-family model into a hyperfrac model with any stream connection.

Supported: ``LlamaForCausalLM`` and the same-shaped ``MistralForCausalLM`` and
``Qwen2ForCausalLM`` (SwiGLU, RMSNorm, RoPE with default scaling, GQA, tied or untied head,
Qwen2's QKV bias). A Llama decoder layer is the Pre-Norm residual ``h + attn(norm(h))``,
``h + mlp(norm(h))``; every hyperfrac connection except ``postnorm`` equals Pre-Norm at its
initialisation, so the converted model computes the same function and is ready for continued
training of the connections (and everything else):

* FC / DFC split and join the hidden state: exact.
* HC / DHC / mHC keep n identical streams whose sum ``n h`` enters the final RMSNorm. RMSNorm
  is scale invariant except for its eps: ``RMS(n h)`` with eps ``e`` equals ``n RMS(h)`` with
  eps ``e / n^2``. The converted model therefore sets ``final_norm_eps = n^2 * rms_norm_eps``,
  which makes the final norm's output exactly the source model's (up to float rounding).
  Leaving eps alone would shift every logit by a relative ``(1 - 1/n^2) e / (2 mean(h^2))``
  (about 1% for a randomly initialised model whose hidden states have RMS 0.02).
  The scale factor is measured, not assumed: ``reduce(expand(1))`` of the built connection.

Weight mapping (``L`` = layer): ``embed_tokens`` -> ``embed``; ``q/k/v_proj`` -> the fused
``blocks.L.attn.qkv`` (rows q, k, v; biases too for Qwen2); ``o_proj`` -> ``attn.out``;
``gate_proj``/``up_proj`` -> the fused ``ffn.w_in`` (gate rows first); ``down_proj`` ->
``ffn.w_out``; ``input_layernorm`` -> ``attn_norm``; ``post_attention_layernorm`` ->
``ffn_norm``; ``norm`` -> ``norm``; ``lm_head`` -> ``lm_head`` (tied when the source is).
HF's RoPE uses the same rotate-half layout, so q/k rows are copied as they are. Connection
parameters keep their Pre-Norm-equivalent initialisation; every other weight is copied (no
HC sqrt(n) output-projection init is applied: the copied weights replace it).

RoPE scaling ``linear`` and ``llama3`` (Llama 3.1/3.2) carry over (``LMConfig.rope_scaling``).
Special tokens: the source config's bos/eos/pad ids and its whole generation config (eos list,
sampling defaults) carry over, so ``generate`` stops where the source model's does.

Refused with a message: other activations, ``head_dim != hidden_size / heads``, other rope
scalings (dynamic, yarn, longrope, ...), ``attention_bias``/``mlp_bias`` on Llama, and
``postnorm`` (not Pre-Norm). Sliding-window attention (Mistral, Qwen2) equals full attention
for sequences no longer than the window, so ``max_seq_len`` is capped at the window.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hyperfrac.connections import KINDS, connection_class, validate_spec
from hyperfrac.models.lm import LMConfig, build_connection

SUPPORTED = ("llama", "mistral", "qwen2")


_ROPE_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _rope(c: Any) -> tuple[float, dict[str, Any] | None]:
    """RoPE base and scaling (transformers 4: rope_theta/rope_scaling; transformers 5:
    rope_parameters). Scalings other than linear and llama3 are refused."""
    params = dict(getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {})
    kind = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", getattr(c, "rope_theta", None))
    if theta is None:
        raise ValueError("source config has no rope_theta")
    if kind == "default":
        return float(theta), None
    if kind not in _ROPE_KEYS:
        raise ValueError(
            f"rope scaling {kind!r} is not supported by hyperfrac's RoPE; supported: default, "
            f"{', '.join(_ROPE_KEYS)}"
        )
    scaling = {"rope_type": kind, **{k: params[k] for k in _ROPE_KEYS[kind]}}
    return float(theta), scaling


def lm_config_from_hf(c: Any, connection: dict[str, Any]) -> LMConfig:
    """hyperfrac LMConfig computing the same function as HF config ``c`` (see module docstring)."""
    kind = getattr(c, "model_type", None)
    if kind not in SUPPORTED:
        raise ValueError(f"model_type {kind!r} cannot be converted; supported: {SUPPORTED}")
    spec = validate_spec(connection)
    if not connection_class(spec["kind"]).uses_prenorm:
        prenorm = [k for k in KINDS if connection_class(k).uses_prenorm]
        raise ValueError(
            f"connection kind {spec['kind']!r} is not Pre-Norm; the converted model would "
            f"compute a different function. Choose one of {', '.join(prenorm)}"
        )
    if not connection_class(spec["kind"]).equals_prenorm_at_init:
        raise ValueError(
            f"connection kind {spec['kind']!r} equals the Pre-Norm network at init only up to "
            "its norms' eps (AttnRes reads a mean of its sources: RMSNorm(h/S, eps) = "
            "RMSNorm(h, S^2 eps)), so the converted model would not reproduce the source "
            "(max logit difference 0.11 on a small random Llama); convert to a Pre-Norm kind "
            "and train AttnRes from scratch"
        )
    if connection.get("kind") == "mhc" and connection.get("n_streams", 4) < 2:
        raise ValueError(
            "mhc with n_streams=1 scales the branch input by pre_init; use n_streams >= 2"
        )
    act = getattr(c, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act={act!r}; hyperfrac's FFN is SwiGLU (silu) only")
    D, H = c.hidden_size, c.num_attention_heads
    head_dim = getattr(c, "head_dim", None)
    if head_dim not in (None, D // H) or D % H:
        raise ValueError(
            f"head_dim={head_dim} differs from hidden_size/num_attention_heads={D}/{H}; "
            "hyperfrac's attention needs head_dim = hidden_size / heads"
        )
    if kind in ("llama", "mistral"):
        for flag in ("attention_bias", "mlp_bias"):
            if getattr(c, flag, False):
                raise ValueError(f"{flag}=True is not supported (hyperfrac: QKV bias only)")
    theta, rope_scaling = _rope(c)
    max_len = int(c.max_position_embeddings)
    window = getattr(c, "sliding_window", None)
    if window and (kind != "qwen2" or getattr(c, "use_sliding_window", False)):
        max_len = min(max_len, int(window))  # full attention == sliding attention up to here
    cfg = LMConfig(
        vocab_size=c.vocab_size,
        dim=D,
        n_layers=c.num_hidden_layers,
        n_heads=H,
        n_kv_heads=getattr(c, "num_key_value_heads", None) or H,
        mlp_hidden=c.intermediate_size,
        max_seq_len=max_len,
        rope_theta=theta,
        rope_scaling=rope_scaling,
        norm="rmsnorm",
        norm_affine=True,
        norm_eps=float(c.rms_norm_eps),
        qk_norm=False,
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        bias=False,
        qkv_bias=kind == "qwen2",
        connection=dict(connection),
    )
    # HC/mHC reduce sums n equal streams: scale the final norm's eps by n^2 (module docstring).
    conn = build_connection(cfg.connection, D, 0)
    with torch.no_grad():
        scale = float(conn.reduce(conn.expand(torch.ones(1, D)))[0, 0])
    if scale != 1.0:
        cfg.final_norm_eps = cfg.norm_eps * scale**2
    return cfg


def convert_state_dict(sd: dict[str, Tensor], cfg: LMConfig) -> dict[str, Tensor]:
    """HF Llama/Mistral/Qwen2 state dict -> hyperfrac TransformerLM state dict (no connections)."""
    sd = dict(sd)
    take = sd.pop
    out: dict[str, Tensor] = {"embed.weight": take("model.embed_tokens.weight")}
    for i in range(cfg.n_layers):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        q, k, v = (take(f"{src}self_attn.{p}_proj.weight") for p in "qkv")
        out[dst + "attn.qkv.weight"] = torch.cat([q, k, v], dim=0)
        if cfg.qkv_bias:
            qb, kb, vb = (take(f"{src}self_attn.{p}_proj.bias") for p in "qkv")
            out[dst + "attn.qkv.bias"] = torch.cat([qb, kb, vb], dim=0)
        out[dst + "attn.out.weight"] = take(f"{src}self_attn.o_proj.weight")
        gate, up = take(f"{src}mlp.gate_proj.weight"), take(f"{src}mlp.up_proj.weight")
        out[dst + "ffn.w_in.weight"] = torch.cat([gate, up], dim=0)
        out[dst + "ffn.w_out.weight"] = take(f"{src}mlp.down_proj.weight")
        out[dst + "attn_norm.weight"] = take(f"{src}input_layernorm.weight")
        out[dst + "ffn_norm.weight"] = take(f"{src}post_attention_layernorm.weight")
    out["norm.weight"] = take("model.norm.weight")
    head = take("lm_head.weight", None)
    if cfg.tie_embeddings:
        if head is not None and not torch.equal(head, out["embed.weight"]):
            raise ValueError("tie_word_embeddings=True but lm_head differs from embed_tokens")
    else:
        if head is None:
            raise ValueError("untied source model has no lm_head.weight")
        out["lm_head.weight"] = head
    left = [k for k in sd if not k.endswith("rotary_emb.inv_freq")]
    if left:
        raise ValueError(f"source weights not understood by the converter: {left[:8]}")
    return out


def convert_hf_model(src, connection: dict[str, Any]):
    """A loaded HF Llama-family ``PreTrainedModel`` -> ``HyperfracForCausalLM`` (same dtype)."""
    from hyperfrac.hf.configuration_hyperfrac import HyperfracConfig
    from hyperfrac.hf.modeling_hyperfrac import HyperfracForCausalLM

    cfg = lm_config_from_hf(src.config, connection)
    sd = {k: v.detach() for k, v in src.state_dict().items()}
    dtype = next(iter(sd.values())).dtype
    tokens = {k: getattr(src.config, k, None) for k in ("bos_token_id", "eos_token_id",
                                                       "pad_token_id")}
    hf = HyperfracForCausalLM(HyperfracConfig.from_lm_config(cfg, **tokens))
    if getattr(src, "generation_config", None) is not None:  # bos/eos/pad, sampling defaults
        hf.generation_config = copy.deepcopy(src.generation_config)
    missing, unexpected = hf.model.load_state_dict(convert_state_dict(sd, cfg), strict=False)
    stray = [k for k in missing if "_conn." not in k and k != "lm_head.weight"] + unexpected
    if stray:
        raise RuntimeError(f"conversion left weights unmapped: {stray[:8]}")
    return hf.to(dtype)


def convert(
    src_dir: Path, out_dir: Path, connection: dict[str, Any], *, dtype: str | None = None
) -> Path:
    """Local HF model folder -> hyperfrac HF folder (weights, config, remote code, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hyperfrac.hf.export import TOKENIZER_FILES, save_hf

    src_dir = Path(src_dir)
    if not (src_dir / "config.json").is_file():
        raise FileNotFoundError(f"{src_dir} has no config.json; pass a local HF model folder")
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    src = AutoModelForCausalLM.from_pretrained(src_dir, local_files_only=True, **kwargs)
    hf = convert_hf_model(src, connection)
    tok = None
    if any((src_dir / f).is_file() for f in TOKENIZER_FILES):
        try:
            tok = AutoTokenizer.from_pretrained(src_dir, local_files_only=True)
        except (OSError, ValueError):
            tok = None
    if tok is None:
        print(f"[convert] {src_dir} has no tokenizer; converting the model only")
    return save_hf(hf, out_dir, tokenizer=tok)


@torch.no_grad()
def max_logit_difference(
    src_dir: Path, out_dir: Path, *, seq_len: int = 32, seed: int = 0
) -> float:
    """Max |logit difference| between a source HF folder and its converted folder (float32)."""
    from transformers import AutoModelForCausalLM

    from hyperfrac.hf.modeling_hyperfrac import HyperfracForCausalLM

    src = AutoModelForCausalLM.from_pretrained(src_dir, local_files_only=True, dtype=torch.float32)
    dst = HyperfracForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, src.config.vocab_size, (2, seq_len), generator=g)
    a = src.eval()(idx).logits
    b = dst.eval()(idx).logits
    return float((a - b).abs().max())
