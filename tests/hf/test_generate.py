"""KV cache and sampling (torch only): cached decoding equals full recomputation."""

from __future__ import annotations

import pytest
import torch

from hyperfrac.generate import generate, sample_next
from hyperfrac.models import KVCache, LMConfig, TransformerLM

KINDS = [
    {"kind": "residual"},
    {"kind": "dhc", "n_streams": 2},
    {"kind": "dfc", "n_fracs": 2},
    {"kind": "mhc", "n_streams": 2},
]


def tiny(connection=None, **kw) -> TransformerLM:
    torch.manual_seed(0)
    cfg = LMConfig(
        vocab_size=97,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=64,
        connection=connection or {"kind": "residual"},
        init_std=0.2,
        **kw,
    )
    return TransformerLM(cfg).eval()


@pytest.mark.parametrize("conn", KINDS, ids=lambda c: c["kind"])
def test_cached_logits_equal_full_forward(conn) -> None:
    model = tiny(conn)
    idx = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx).logits
        cache = KVCache()
        parts = [model(idx[:, :7], cache=cache).logits]  # prefill
        parts.append(model(idx[:, 7:12], cache=cache).logits)  # a chunk after a prefix
        parts += [model(idx[:, t : t + 1], cache=cache).logits for t in range(12, 20)]
    assert cache.get_seq_length() == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("conn", KINDS, ids=lambda c: c["kind"])
@pytest.mark.parametrize(
    "sampling", [dict(temperature=0.0), dict(temperature=0.9, top_k=20, top_p=0.9)]
)
def test_cached_and_uncached_decoding_give_the_same_tokens(conn, sampling) -> None:
    model = tiny(conn)
    prompt = torch.randint(0, 97, (3, 5), generator=torch.Generator().manual_seed(2))
    outs = [
        generate(
            model, prompt, 30, use_cache=c, generator=torch.Generator().manual_seed(3), **sampling
        )
        for c in (True, False)
    ]
    assert outs[0].shape == (3, 35)
    assert torch.equal(outs[0][:, :5], prompt)
    assert torch.equal(outs[0], outs[1])
    if sampling["temperature"] > 0:  # sampling really samples: rows differ
        assert len({tuple(r) for r in outs[0][:, 5:].tolist()}) > 1


def test_sample_next_top_k_top_p_and_greedy() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, top_k=2, generator=g).flatten().tolist()) == {0, 1}
    # softmax of the row: 0.636, 0.234, 0.086, ...: top_p=0.7 keeps exactly tokens 0 and 1
    assert set(sample_next(logits, top_p=0.7, generator=g).flatten().tolist()) == {0, 1}
    assert set(sample_next(logits, top_p=0.5, generator=g).flatten().tolist()) == {0}
    assert sample_next(logits, top_p=1.0, generator=g).unique().numel() == 5
    assert sample_next(logits[:1], temperature=0).item() == 0
    with pytest.raises(ValueError, match="top_k"):
        sample_next(logits, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        sample_next(logits, top_p=1.5)


def test_generate_eos_and_length_errors() -> None:
    model = tiny()
    prompt = torch.zeros(1, 4, dtype=torch.long)
    greedy = generate(model, prompt, 10, temperature=0)
    first = int(greedy[0, 4])
    stopped = generate(model, prompt, 10, temperature=0, eos_id=first)
    assert stopped.shape == (1, 5) and int(stopped[0, -1]) == first
    with pytest.raises(ValueError, match="max_seq_len=64"):
        generate(model, prompt, 61)
    with pytest.raises(ValueError, match="T >= 1"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)


def test_dropless_moe_decodes_the_same_with_and_without_cache() -> None:
    """Dropless MoE routes each token on its own, so the cache changes nothing. (With a
    capacity factor, which tokens are dropped depends on how many share the forward pass, so
    cached and uncached decoding legitimately differ: use capacity_factor=None to generate.)"""
    from hyperfrac.models import MoEConfig

    moe = MoEConfig(n_experts=4, top_k=2, expert_hidden=16, capacity_factor=None)
    model = tiny({"kind": "dhc", "n_streams": 2}, moe=moe)
    prompt = torch.randint(0, 97, (4, 8), generator=torch.Generator().manual_seed(1))
    cached = generate(model, prompt, 20, temperature=0)
    assert torch.equal(cached, generate(model, prompt, 20, temperature=0, use_cache=False))
