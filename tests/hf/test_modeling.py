"""HyperfracConfig / HyperfracForCausalLM: Auto classes, save/load, generate() with a cache."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM

from hyperfrac.generate import generate
from hyperfrac.hf import HyperfracConfig, HyperfracForCausalLM, save_hf
from hyperfrac.models import LMConfig, MoEConfig, TransformerLM


def tiny_cfg(**kw) -> LMConfig:
    base = dict(
        vocab_size=101,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=64,
        init_std=0.2,
        connection={"kind": "dhc", "n_streams": 2},
    )
    base.update(kw)
    return LMConfig(**base)


def test_config_round_trip_and_hf_aliases() -> None:
    lm = tiny_cfg(
        tie_embeddings=False,
        moe=MoEConfig(n_experts=4, top_k=2, expert_hidden=16),
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        qkv_bias=True,
        final_norm_eps=1e-4,
    )
    c = HyperfracConfig.from_lm_config(lm)
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (32, 2, 4)
    assert c.tie_word_embeddings is False and c.num_key_value_heads == 2
    again = HyperfracConfig.from_dict(json.loads(c.to_json_string()))
    assert again.to_lm_config() == lm


@pytest.mark.parametrize("tied", [True, False])
def test_save_pretrained_from_pretrained_round_trip(tmp_path, tied: bool) -> None:
    torch.manual_seed(0)
    model = HyperfracForCausalLM(HyperfracConfig.from_lm_config(tiny_cfg(tie_embeddings=tied)))
    with torch.no_grad():  # move the connections away from init so they matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_hf(model, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "hyperfrac" and "auto_map" in cfg
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is HyperfracForCausalLM
    assert type(AutoConfig.from_pretrained(tmp_path)) is HyperfracConfig
    assert (loaded.model.lm_head.weight is loaded.model.embed.weight) == tied
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    idx = torch.randint(0, 101, (2, 16))
    torch.testing.assert_close(loaded(idx).logits, model(idx).logits, rtol=0, atol=0)
    # the RoPE tables (non-persistent buffers) are rebuilt, not left empty
    torch.testing.assert_close(loaded.model.rotary.cos, model.model.rotary.cos)


def test_forward_labels_loss_matches_hyperfrac() -> None:
    torch.manual_seed(0)
    model = HyperfracForCausalLM(HyperfracConfig.from_lm_config(tiny_cfg()))
    idx = torch.randint(0, 101, (2, 12))
    out = model(idx, labels=idx)
    ref = model.model(idx[:, :-1], idx[:, 1:])
    torch.testing.assert_close(out.loss, ref.loss)
    with pytest.raises(ValueError, match="attention_mask has shape"):  # padding: test_finetune
        model(idx, attention_mask=torch.ones(2, 11, dtype=torch.long))


@pytest.mark.parametrize("sample", [False, True])
def test_hf_generate_with_cache_equals_without_and_ours(sample: bool) -> None:
    torch.manual_seed(0)
    model = HyperfracForCausalLM(HyperfracConfig.from_lm_config(tiny_cfg())).eval()
    prompt = torch.randint(0, 101, (2, 6))
    kw = dict(max_new_tokens=20, do_sample=sample, pad_token_id=0)
    if sample:
        kw.update(top_k=20, top_p=0.9, temperature=0.9)
    outs = []
    for use_cache in (True, False):
        torch.manual_seed(1)
        outs.append(model.generate(prompt, use_cache=use_cache, **kw))
    assert outs[0].shape == (2, 26)
    assert torch.equal(outs[0], outs[1])
    if not sample:
        ours = generate(model.model, prompt, 20, temperature=0)
        assert torch.equal(outs[0], ours)


def test_model_built_from_transformer_lm_weights() -> None:
    torch.manual_seed(0)
    lm = TransformerLM(tiny_cfg(connection={"kind": "dfc", "n_fracs": 2}))
    hf = HyperfracForCausalLM(HyperfracConfig.from_lm_config(lm.cfg))
    hf.model.load_state_dict(lm.state_dict())
    idx = torch.randint(0, 101, (1, 10))
    torch.testing.assert_close(hf(idx).logits, lm(idx).logits, rtol=0, atol=0)
