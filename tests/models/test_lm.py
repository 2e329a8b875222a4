"""Decoder LM: every connection kind builds, trains a step, stays causal; init rules hold."""

from __future__ import annotations

import math

import pytest
import torch

from hyperfrac.connections import KINDS, connection_class
from hyperfrac.models import LMConfig, TransformerLM, build_preset, count_params, preset_config


def _opts(kind: str) -> dict:
    slots = connection_class(kind).slot_option
    return {"kind": kind, **({slots: 2} if slots else {})}


@pytest.mark.parametrize("kind", KINDS)
def test_every_connection_kind_is_causal_and_differentiable(kind: str) -> None:
    torch.manual_seed(0)
    model = build_preset("tiny", connection=_opts(kind))
    idx = torch.randint(0, 512, (2, 12))
    out = model(idx, idx)
    assert out.logits.shape == (2, 12, 512)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.embed.weight.grad is not None and model.embed.weight.grad.abs().sum() > 0
    # Causality: changing token 8 must leave the logits of positions 0..7 unchanged.
    idx2 = idx.clone()
    idx2[:, 8] = (idx2[:, 8] + 1) % 512
    with torch.no_grad():
        a, b = model(idx).logits, model(idx2).logits
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_postnorm_blocks_have_no_prenorm() -> None:
    model = build_preset("tiny", connection={"kind": "postnorm"})
    assert all(b.attn_norm is None and b.ffn_norm is None for b in model.blocks)
    assert all(b.attn_norm is not None for b in build_preset("tiny").blocks)


def test_output_projection_init_scaled_by_connection() -> None:
    """HC §4: output projections' init std is multiplied by conn.output_scale (√n for HC)."""
    torch.manual_seed(0)
    cfg = LMConfig(
        vocab_size=64, dim=256, n_layers=1, n_heads=4, connection={"kind": "hc", "n_streams": 4}
    )
    model = TransformerLM(cfg)
    scale = model.blocks[0].attn_conn.output_scale
    assert scale == pytest.approx(2.0)
    std_out = model.blocks[0].attn.out.weight.std().item()
    std_in = model.blocks[0].attn.qkv.weight.std().item()
    # truncation at ±3σ shrinks std by ~1.3%: compare ratios
    assert std_out / std_in == pytest.approx(scale, rel=0.03)
    assert model.blocks[0].ffn.w_out.weight.std().item() / std_in == pytest.approx(scale, rel=0.03)


def test_tied_and_untied_embeddings() -> None:
    tied = build_preset("tiny")
    untied = build_preset("tiny", tie_embeddings=False)
    assert tied.lm_head.weight is tied.embed.weight
    assert count_params(untied) - count_params(tied) == 512 * 64


def test_qk_norm_and_gqa() -> None:
    base = build_preset("tiny")
    qk = build_preset("tiny", qk_norm=True, n_kv_heads=2)
    # QK-norm adds a q norm (D) and a k norm (kv width); GQA shrinks k and v projections.
    kv = 2 * 16
    per_block_delta = (64 + kv) - 2 * 64 * (64 - kv)
    assert count_params(qk) - count_params(base) == 2 * per_block_delta
    out = qk(torch.randint(0, 512, (1, 8)))
    assert out.logits.shape == (1, 8, 512)


def test_default_mlp_hidden_and_errors() -> None:
    assert LMConfig(dim=256).resolved_mlp_hidden() == 704  # 8/3*256 = 682.7 -> multiple of 64
    with pytest.raises(ValueError, match="does not divide"):
        TransformerLM(LMConfig(dim=64, n_heads=5))
    with pytest.raises(ValueError, match="unknown connection kind"):
        build_preset("tiny", connection={"kind": "nope"})
    with pytest.raises(KeyError, match="unknown model preset"):
        preset_config("olmo-3b")
    with pytest.raises(ValueError, match="max_seq_len"):
        build_preset("tiny", max_seq_len=8)(torch.zeros(1, 9, dtype=torch.long))


def test_loss_is_cross_entropy_near_uniform_at_init() -> None:
    torch.manual_seed(0)
    model = build_preset("tiny")
    idx, targets = torch.randint(0, 512, (2, 4, 32))
    loss = model(idx, targets).loss.item()
    assert abs(loss - math.log(512)) < 0.1


def test_attnres_gets_the_models_sublayer_count_and_probes():
    """A kind that takes n_sublayers (AttnRes) gets 2 * n_layers from the model, so the
    analyses (fixed slot layout, final read) work without it in the spec."""
    from hyperfrac.analysis.analyze import probe_model

    model = build_preset("tiny", connection={"kind": "attnres", "block_size": 2})
    conns = [c for b in model.blocks for c in (b.attn_conn, b.ffn_conn)]
    assert {c.n_sublayers for c in conns} == {2 * model.cfg.n_layers}
    probe = probe_model(model, torch.randint(0, model.cfg.vocab_size, (2, 16)), max_tokens=32)
    assert len(probe["unfolded"]) == 2 * model.cfg.n_layers
