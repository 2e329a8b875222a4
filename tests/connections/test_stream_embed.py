"""stream_embed: learned per-stream embeddings of the n copies, zero at init (issue 14 item 5)."""

from __future__ import annotations

import pytest
import torch

from hyperfrac.connections import build, overhead, validate_spec
from hyperfrac.connections.registry import KINDS, connection_class
from hyperfrac.models import LMConfig, TransformerLM

STREAM_KINDS = [k for k in KINDS if connection_class(k).slot_option == "n_streams"]
SPECS = [{"kind": k, "n_streams": 4} for k in STREAM_KINDS] + [
    {"kind": "mhc", "n_streams": 4, "flavor": "deepseek-v4"}
]


def _ids(spec):
    return spec["kind"] + ("-v4" if "flavor" in spec else "")


def test_every_copied_stream_kind_has_the_option():
    assert {"hc", "dhc", "mhc", "mhc-lite", "kromhc"} <= set(STREAM_KINDS)
    for spec in SPECS:
        assert validate_spec({**spec, "stream_embed": True})["stream_embed"] is True
    with pytest.raises(ValueError, match="stream_embed"):
        validate_spec({"kind": "dhc", "stream_embed": "yes"})
    with pytest.raises(ValueError, match="stream_embed"):
        validate_spec({"kind": "dfc", "stream_embed": True})


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_zero_at_init_same_function_and_gradients_reach_it(spec):
    torch.manual_seed(0)
    opts = {k: v for k, v in spec.items() if k != "kind"}
    plain = build(spec["kind"], 16, layer_idx=0, **opts)
    emb = build(spec["kind"], 16, layer_idx=0, stream_embed=True, **opts)
    missing = emb.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["stream_embedding"]
    e = emb.stream_embedding
    assert e.shape == (4, 16) and e.dim() == 2 and torch.count_nonzero(e) == 0
    assert list(plain.state_dict()) == [k for k in emb.state_dict() if k != "stream_embedding"]
    x = torch.randn(2, 3, 16)
    w = torch.randn(16, 16) / 4

    def branch(t):
        return torch.tanh(t @ w)

    h0, h1 = plain(plain.expand(x), branch), emb(emb.expand(x), branch)
    torch.testing.assert_close(h1, h0, rtol=0, atol=0)
    (h1 * torch.randn_like(h1)).sum().backward()
    assert e.grad is not None and e.grad.abs().sum() > 0
    # a nonzero embedding changes the streams by E (it enters the residual of layer 0)
    with torch.no_grad():
        e.normal_()
    assert not torch.allclose(emb(emb.expand(x), branch), h0)


def test_only_layer_zero_holds_it_and_overhead_counts_it_once():
    conns = [build("dhc", 8, layer_idx=i, n_streams=2, stream_embed=True) for i in range(3)]
    assert [("stream_embedding" in dict(c.named_parameters())) for c in conns] == [
        True, False, False
    ]
    on = overhead("dhc", 8, 4, n_streams=2, stream_embed=True)
    off = overhead("dhc", 8, 4, n_streams=2)
    assert on["params"] - off["params"] == 2 * 8
    assert on["flops_per_token"] - off["flops_per_token"] == 2 * 8


def test_channel_first_layout():
    torch.manual_seed(0)
    conn = build("mhc", 4, layer_idx=0, n_streams=2, channel_first=True, stream_embed=True)
    with torch.no_grad():
        conn.stream_embedding.copy_(torch.arange(8.0).reshape(2, 4))
    x = torch.randn(2, 4, 3, 3)
    h = conn.expand(x)  # (B, n, C, H, W)
    out = conn(h, lambda t: torch.zeros_like(t))  # branch 0: the new state is H_res applied
    conn2 = build("mhc", 4, layer_idx=0, n_streams=2, channel_first=True)
    conn2.load_state_dict(conn.state_dict(), strict=False)
    shifted = h + conn.stream_embedding.detach().reshape(1, 2, 4, 1, 1)
    torch.testing.assert_close(out, conn2(shifted, lambda t: torch.zeros_like(t)))


def test_lm_with_stream_embed_equals_without_at_init_and_trains_it():
    torch.manual_seed(0)
    base = dict(vocab_size=64, dim=32, n_layers=2, n_heads=2)
    m0 = TransformerLM(LMConfig(**base, connection={"kind": "mhc", "n_streams": 4}))
    m1 = TransformerLM(LMConfig(**base, connection={"kind": "mhc", "n_streams": 4,
                                                    "stream_embed": True}))
    m1.load_state_dict(m0.state_dict(), strict=False)
    idx = torch.randint(0, 64, (2, 8))
    out0, out1 = m0(idx, idx), m1(idx, idx)
    torch.testing.assert_close(out1.logits, out0.logits, rtol=0, atol=0)
    out1.loss.backward()
    g = m1.blocks[0].attn_conn.stream_embedding.grad
    assert g is not None and g.abs().sum() > 0
    names = [n for n, _ in m1.named_parameters() if "stream_embedding" in n]
    assert names == ["blocks.0.attn_conn.stream_embedding"]
    from hyperfrac.train.optim import param_groups

    no_decay = next(g for g in param_groups(m1, 0.1) if g["name"] == "no_decay")["params"]
    assert any(p is m1.blocks[0].attn_conn.stream_embedding for p in no_decay)
