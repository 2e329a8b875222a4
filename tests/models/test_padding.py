"""Padded batches and activation checkpointing in hyperfrac's own LMs (torch only).

Padding: the logits of the real positions of a left- or right-padded batch equal those of each
sequence run alone (dense and MoE, every connection family); batched padded KV-cached
generation gives each prompt its own tokens. Checkpointing: gradients equal those without it,
also with a connection's own ``recompute`` and an MoE's balance losses."""

from __future__ import annotations

import functools

import pytest
import torch

from hyperfrac.generate import generate
from hyperfrac.models import LMConfig, MoEConfig, TransformerLM
from hyperfrac.models.layers import padding_mask

V = 97
KINDS = [
    {"kind": "residual"},
    {"kind": "dhc", "n_streams": 2},
    {"kind": "dfc", "n_fracs": 2},
    {"kind": "mhc", "n_streams": 2},
    {"kind": "attnres", "block_size": 2},
]
DROPLESS = MoEConfig(n_experts=4, top_k=2, expert_hidden=32, capacity_factor=None)


def tiny(connection=None, **kw) -> TransformerLM:
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                   init_std=0.2, connection=connection or {"kind": "residual"}, **kw)
    return TransformerLM(cfg).eval()


def prompts(lengths=(9, 4, 6)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, V, (n,), generator=g) for n in lengths]


def pad(seqs: list[torch.Tensor], *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if left else slice(0, len(s))
        ids[i, sl], mask[i, sl] = s, 1
    return ids, mask


def test_padding_mask_is_causal_over_real_keys() -> None:
    m = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = padding_mask(m, 2)[:, 0]  # (B, 2, 5): the two newest queries (positions 3, 4)
    want = torch.tensor([[[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]],
                         [[1, 1, 1, 1, 0], [1, 1, 1, 0, 1]]], dtype=torch.bool)
    assert torch.equal(got, want)  # pad queries see themselves only where nothing else is real


@pytest.mark.parametrize("moe", [None, DROPLESS], ids=["dense", "moe"])
@pytest.mark.parametrize("conn", KINDS, ids=lambda c: c["kind"] + str(c.get("block_size", "")))
@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
def test_padded_logits_equal_unpadded(conn, moe, left: bool) -> None:
    model = tiny(conn, moe=moe)
    seqs = prompts()
    ids, mask = pad(seqs, left=left)
    with torch.no_grad():
        out = model(ids, attention_mask=mask).logits
        assert torch.isfinite(out).all()  # pad positions too (no fully masked softmax row)
        for i, s in enumerate(seqs):
            alone = model(s[None]).logits[0]
            torch.testing.assert_close(out[i, mask[i].bool()], alone, atol=1e-5, rtol=1e-5)


def test_all_ones_mask_takes_the_plain_path_and_explicit_positions_shift_rope() -> None:
    model = tiny({"kind": "dhc", "n_streams": 2})
    idx = prompts((7,))[0][None]
    with torch.no_grad():
        plain = model(idx).logits
        assert torch.equal(model(idx, attention_mask=torch.ones_like(idx)).logits, plain)
        # positions 5.. : the same as running the sequence after a 5-token cache of anything
        shifted = model(idx, position_ids=torch.arange(5, 12)[None]).logits
        assert not torch.allclose(shifted, plain)
        torch.testing.assert_close(model(idx, position_ids=torch.arange(7)[None]).logits, plain)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(idx, attention_mask=torch.ones(1, 6, dtype=torch.long))


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("moe", [None, DROPLESS], ids=["dense", "moe"])
def test_padded_batch_generation_equals_one_by_one(use_cache: bool, moe) -> None:
    model = tiny({"kind": "mhc", "n_streams": 2}, moe=moe)
    seqs = prompts()
    ids, mask = pad(seqs, left=True)
    out = generate(model, ids, 8, temperature=0, use_cache=use_cache, attention_mask=mask)
    for i, s in enumerate(seqs):
        alone = generate(model, s[None], 8, temperature=0, use_cache=use_cache)
        assert out[i, ids.shape[1]:].tolist() == alone[0, len(s):].tolist()
    with pytest.raises(ValueError, match="left padding"):
        right, right_mask = pad(seqs, left=False)
        generate(model, right, 2, attention_mask=right_mask)


def _grads(model: TransformerLM, idx, mask=None) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    out = model(idx[:, :-1], idx[:, 1:], attention_mask=mask)
    (out.loss + out.aux_loss).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "conn,moe",
    [({"kind": "dhc", "n_streams": 2, "recompute": True}, None),
     ({"kind": "mhc", "n_streams": 2}, MoEConfig(n_experts=4, top_k=2, expert_hidden=32)),
     ({"kind": "dfc", "n_fracs": 2}, None),
     ({"kind": "attnres", "block_size": 2}, None)],
    ids=["dhc-recompute", "mhc-moe", "dfc", "attnres"],
)
def test_activation_checkpointing_gives_equal_gradients(conn, moe) -> None:
    idx = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(2))
    model = tiny(conn, moe=moe)
    ref = _grads(model, idx)
    model.gradient_checkpointing = True
    calls = []
    model.blocks[0].register_forward_pre_hook(lambda *_, c=calls: c.append(1))
    got = _grads(model, idx)
    assert len(calls) == 2  # the block ran again in backward
    assert got.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], atol=1e-6, rtol=1e-5, msg=n)
    if moe is not None:  # the balance losses reach the router through the checkpoint
        assert ref["blocks.0.ffn.router.weight"].abs().sum() > 0
        model.eval()
        with torch.no_grad():  # eval/no-grad: no checkpointing, same outputs
            assert torch.equal(model(idx).logits, model(idx).logits)


def test_reentrant_checkpointing_is_refused_for_moe() -> None:
    model = tiny({"kind": "dhc", "n_streams": 2}, moe=DROPLESS).train()
    model.gradient_checkpointing = True
    model._gradient_checkpointing_func = functools.partial(
        torch.utils.checkpoint.checkpoint, use_reentrant=True
    )
    with pytest.raises(ValueError, match="use_reentrant=False"):
        model(torch.zeros(1, 4, dtype=torch.long))


def test_vit_activation_checkpointing_gives_equal_gradients() -> None:
    from hyperfrac.models.vit import ViT, ViTConfig

    torch.manual_seed(0)
    model = ViT(ViTConfig(dim=32, n_layers=2, n_heads=2, init_std=0.2,
                          connection={"kind": "mhc", "n_streams": 2})).train()
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    grads, calls = [], []
    model.blocks[0].register_forward_pre_hook(lambda *_, c=calls: c.append(1))
    for flag in (False, True):
        model.gradient_checkpointing = flag
        model.zero_grad()
        model(images).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert len(calls) == 1 + 2  # once without, twice (forward + recompute) with checkpointing
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5, msg=n)
