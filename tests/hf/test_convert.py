"""Llama / Mistral / Qwen2 -> hyperfrac conversion computes the same function (float32, 1e-5)."""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("transformers")
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from hyperfrac.cli import main
from hyperfrac.hf import HyperfracConfig, HyperfracForCausalLM
from hyperfrac.hf.convert import convert_hf_model, convert_state_dict, lm_config_from_hf

from .helpers import load_without_hyperfrac

SHAPE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
)
ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=False)),
    "llama-tied": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=True)),
    "mistral": (MistralConfig, MistralForCausalLM, dict(sliding_window=64)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
}
KINDS = [
    {"kind": "residual"},
    {"kind": "hc", "n_streams": 4},
    {"kind": "dhc", "n_streams": 4},
    {"kind": "fc", "n_fracs": 4},
    {"kind": "dfc", "n_fracs": 2},
    {"kind": "mhc", "n_streams": 4},
]


def source(arch: str, seed: int = 0, **kw):
    cfg_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**{**SHAPE, **extra, **kw})).eval()
    with torch.no_grad():  # HF init leaves norms at 1 and biases at 0: make every weight count
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def tokens(seed: int = 1, T: int = 24) -> torch.Tensor:
    return torch.randint(
        0, SHAPE["vocab_size"], (2, T), generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("conn", KINDS, ids=lambda c: c["kind"])
def test_converted_logits_equal_source(arch: str, conn: dict) -> None:
    src = source(arch)
    dst = convert_hf_model(src, conn).eval()
    idx = tokens()
    with torch.no_grad():
        a, b = src(idx).logits, dst(idx).logits
    assert (a - b).abs().max().item() < 1e-5
    # the connections really are in place
    assert dst.model.blocks[0].attn_conn.kind == conn["kind"]


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


@pytest.mark.parametrize(
    "scaling", [{"rope_type": "linear", "factor": 4.0}, LLAMA3_ROPE], ids=["linear", "llama3"]
)
def test_scaled_rope_converts(scaling) -> None:
    """Llama 3.1-style and linear RoPE scaling carry over; positions past the original context
    (16 here) make the scaled frequencies matter."""
    src = source("llama", rope_parameters={**scaling, "rope_theta": 500000.0})
    dst = convert_hf_model(src, {"kind": "dhc", "n_streams": 4}).eval()
    assert dst.config.to_lm_config().rope_scaling["rope_type"] == scaling["rope_type"]
    idx = tokens(T=64)
    with torch.no_grad():
        a, b = src(idx).logits, dst(idx).logits
    assert (a - b).abs().max().item() < 1e-5
    plain = convert_hf_model(
        source("llama", rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
        {"kind": "residual"},
    ).eval()
    with torch.no_grad():
        assert (plain(idx).logits - a).abs().max().item() > 1e-4  # scaling changes the function


def test_hc_needs_the_final_norm_eps_scaled() -> None:
    """Without final_norm_eps = n^2 eps the HC model differs far beyond 1e-5 (random Llama
    hidden states have RMS ~0.02, so eps = 1e-5 is not negligible)."""
    src = source("llama")
    conn = {"kind": "hc", "n_streams": 4}
    cfg = lm_config_from_hf(src.config, conn)
    assert cfg.final_norm_eps == pytest.approx(16 * 1e-5)
    cfg.final_norm_eps = None
    dst = HyperfracForCausalLM(HyperfracConfig.from_lm_config(cfg)).eval()
    sd = {k: v.detach() for k, v in src.state_dict().items()}
    dst.model.load_state_dict(convert_state_dict(sd, cfg), strict=False)
    with torch.no_grad():
        diff = (src(tokens()).logits - dst(tokens()).logits).abs().max().item()
    assert diff > 1e-4


def test_converted_model_trains_its_connections() -> None:
    dst = convert_hf_model(source("qwen2"), {"kind": "dhc", "n_streams": 2}).train()
    idx = tokens()
    dst(idx, labels=idx).loss.backward()
    conn = dst.model.blocks[1].ffn_conn
    # (s_alpha, s_beta get zero gradient at init: they multiply tanh(0 * ...) = 0)
    for name in ("static_alpha", "static_beta", "dynamic_alpha", "dynamic_beta"):
        g = getattr(conn, name).grad
        assert g is not None and g.abs().sum() > 0, name
    # weights were copied, not re-initialised with HC's sqrt(n) output-projection std
    src = source("qwen2")
    torch.testing.assert_close(
        dst.model.blocks[0].attn.out.weight, src.model.layers[0].self_attn.o_proj.weight
    )


@pytest.mark.parametrize(
    "arch, kw, conn, message",
    [
        ("llama", dict(hidden_act="gelu"), {"kind": "hc"}, "silu"),
        ("llama", dict(head_dim=8), {"kind": "hc"}, "head_dim"),
        ("llama", dict(attention_bias=True), {"kind": "hc"}, "attention_bias"),
        (
            "llama",
            dict(rope_parameters={"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}),
            {"kind": "hc"},
            "rope scaling",
        ),
        ("llama", {}, {"kind": "postnorm"}, "not Pre-Norm"),
        ("llama", {}, {"kind": "mhc", "n_streams": 1}, "n_streams >= 2"),
    ],
)
def test_unsupported_sources_are_refused(arch, kw, conn, message) -> None:
    cfg_cls, _, extra = ARCHS[arch]
    with pytest.raises(ValueError, match=re.escape(message)):
        lm_config_from_hf(cfg_cls(**{**SHAPE, **extra, **kw}), conn)


def test_convert_cli_with_check(tmp_path, capsys) -> None:
    src = source("llama")
    src.save_pretrained(tmp_path / "llama")
    out = tmp_path / "hc"
    assert (
        main(
            [
                "convert",
                str(tmp_path / "llama"),
                str(out),
                "--connection",
                "{kind: dhc, n_streams: 4}",
                "--check",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    diff = float(re.search(r"difference\D+([0-9.e+-]+)", text).group(1))
    assert diff < 1e-5
    assert (out / "model.safetensors").is_file() and (out / "modeling_hyperfrac.py").is_file()


def test_converted_folder_loads_without_hyperfrac(tmp_path) -> None:
    """convert -> folder -> trust_remote_code load in an interpreter without hyperfrac: the
    logits still equal the source Llama's, and HF generate() with its cache runs."""
    src = source("llama-tied")
    src.save_pretrained(tmp_path / "llama")
    out = tmp_path / "mhc"
    assert (
        main(
            [
                "convert",
                str(tmp_path / "llama"),
                str(out),
                "--connection",
                "{kind: mhc, n_streams: 4}",
            ]
        )
        == 0
    )
    idx = tokens()
    res = load_without_hyperfrac(out, idx, tmp_path)
    with torch.no_grad():
        ref = src(idx).logits
    assert (torch.tensor(res["logits"]) - ref).abs().max().item() < 1e-5
    assert len(res["generated"][0]) == idx.shape[1] + 8
