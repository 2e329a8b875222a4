"""Special tokens: exported folders know eos/pad (config and generation config), a converted
Llama keeps its bos/eos and generation config, a folder without tokenizer is named clearly."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

from hyperfrac.data.tokenizer import EOS, PAD, train_tokenizer
from hyperfrac.hf import HyperfracConfig, HyperfracForCausalLM, save_hf
from hyperfrac.hf.convert import convert
from hyperfrac.hf.lm_eval import load_for_eval
from hyperfrac.models import LMConfig

TEXTS = ["the quick brown fox jumps over the lazy dog. " * 20, "pack my box with jugs. " * 20]


def bpe(tmp_path, vocab: int = 300):
    tok = train_tokenizer(TEXTS, vocab)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path, tok.get_vocab_size()


def model(vocab: int) -> HyperfracForCausalLM:
    torch.manual_seed(0)
    lm = LMConfig(vocab_size=vocab, dim=32, n_layers=1, n_heads=2, max_seq_len=32,
                  connection={"kind": "dhc", "n_streams": 2})
    return HyperfracForCausalLM(HyperfracConfig.from_lm_config(lm))


def test_export_wires_eos_and_a_distinct_pad(tmp_path) -> None:
    path, n = bpe(tmp_path)
    out = save_hf(model(n + 20), tmp_path / "out", tokenizer=path)
    tok = AutoTokenizer.from_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    gen = json.loads((out / "generation_config.json").read_text())
    eos = tok.convert_tokens_to_ids(EOS)
    assert tok.eos_token == EOS and tok.pad_token == PAD
    assert tok.pad_token_id == n != eos  # appended after the trained vocabulary
    assert cfg["eos_token_id"] == gen["eos_token_id"] == eos
    assert cfg["pad_token_id"] == gen["pad_token_id"] == n
    loaded = HyperfracForCausalLM.from_pretrained(out, device_map="cpu")  # needs accelerate
    assert loaded.generation_config.eos_token_id == eos
    # a padded batch from the exported tokenizer runs through the model
    batch = tok(["the fox", "pack my box with jugs"], padding=True, return_tensors="pt")
    assert (batch["input_ids"] == n).any()
    assert torch.isfinite(loaded(**batch).logits).all()


def test_export_without_a_spare_row_pads_with_eos(tmp_path) -> None:
    path, n = bpe(tmp_path)
    out = save_hf(model(n), tmp_path / "full", tokenizer=path)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.pad_token == EOS and len(tok) == n
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == tok.eos_token_id


def test_converted_llama_keeps_bos_eos_and_generation_config(tmp_path) -> None:
    torch.manual_seed(0)
    src = LlamaForCausalLM(LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=5, eos_token_id=7,
    ))
    src.generation_config = GenerationConfig(bos_token_id=5, eos_token_id=[7, 9],
                                             do_sample=True, temperature=0.6, top_p=0.9)
    src.save_pretrained(tmp_path / "src")
    out = convert(tmp_path / "src", tmp_path / "out", {"kind": "mhc", "n_streams": 2})
    hf = HyperfracForCausalLM.from_pretrained(out)
    assert (hf.config.bos_token_id, hf.config.eos_token_id) == (5, 7)
    g = hf.generation_config
    assert (g.bos_token_id, g.eos_token_id, g.do_sample, g.temperature, g.top_p) == \
        (5, [7, 9], True, 0.6, 0.9)
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        load_for_eval(out)  # the source folder had no tokenizer either
