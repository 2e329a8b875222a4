"""MoE routing, expert dispatch and balance losses against a direct per-token computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hyperfrac.models import MoE, build_preset


def _moe(capacity_factor: float | None, seed: int = 0) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(
        16,
        n_experts=4,
        top_k=2,
        hidden=8,
        capacity_factor=capacity_factor,
        lb_loss_weight=0.5,
        z_loss_weight=0.25,
    ).double()
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return moe


def _reference(moe: MoE, x: torch.Tensor, capacity: int | None):
    """Per-token loop: route, then keep an assignment iff its expert still has a free slot,
    visiting all first choices (in token order) before all second choices."""
    logits = x @ moe.router.weight.t()
    probs = logits.softmax(-1)
    w, idx = probs.topk(moe.top_k, dim=-1)
    out = torch.zeros_like(x)
    used = [0] * moe.n_experts
    dropped = 0
    for j in range(moe.top_k):
        for t in range(x.shape[0]):
            e = int(idx[t, j])
            if capacity is not None and used[e] >= capacity:
                dropped += 1
                continue
            used[e] += 1
            g, u = (x[t] @ moe.w_in[e]).chunk(2)
            out[t] += w[t, j] * ((F.silu(g) * u) @ moe.w_out[e])
    n, k, E = x.shape[0], moe.top_k, moe.n_experts
    f = torch.tensor([(idx == e).sum().item() / (n * k) for e in range(E)], dtype=x.dtype)
    lb = E * sum(f[e] * probs[:, e].mean() for e in range(E))
    z = torch.stack([torch.log(torch.exp(logits[t]).sum()) ** 2 for t in range(n)]).mean()
    return out, lb, z, dropped / (n * k), f


@pytest.mark.parametrize("capacity_factor", [None, 2.0, 0.5])
def test_moe_matches_direct_computation(capacity_factor: float | None) -> None:
    moe = _moe(capacity_factor)
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    out, aux = moe(x)
    flat = x.reshape(-1, 16)
    cap = None if capacity_factor is None else moe.capacity(flat.shape[0])
    ref, lb, z, dropped, load = _reference(moe, flat, cap)
    torch.testing.assert_close(out.reshape(-1, 16), ref)
    torch.testing.assert_close(aux["lb_loss"], lb)
    torch.testing.assert_close(aux["z_loss"], z)
    torch.testing.assert_close(aux["loss"], 0.5 * lb + 0.25 * z)
    torch.testing.assert_close(aux["load"].double(), load)
    assert aux["dropped"].item() == pytest.approx(dropped)
    if capacity_factor == 0.5:
        assert dropped > 0.3  # capacity 0.5 must drop about half the assignments
    else:
        assert dropped == 0.0


def test_capacity_without_drops_equals_dropless_with_gradients() -> None:
    x = torch.randn(20, 16, dtype=torch.float64)
    a, b = _moe(None), _moe(2.0)  # cf = E/k -> capacity N: nothing can drop
    (oa, aa), (ob, ab) = a(x), b(x)
    torch.testing.assert_close(oa, ob)
    (oa.square().sum() + aa["loss"]).backward()
    (ob.square().sum() + ab["loss"]).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert pa.grad is not None and pa.grad.abs().sum() > 0, name
        torch.testing.assert_close(pa.grad, pb.grad)


def test_balance_loss_is_one_for_uniform_routing() -> None:
    moe = _moe(None)
    torch.nn.init.zeros_(moe.router.weight)  # uniform probs; topk picks experts 0,1 (ties)
    _, aux = moe(torch.randn(8, 16, dtype=torch.float64))
    # f = (1/2, 1/2, 0, 0), P = 1/4 each -> E * sum f P = 4 * 1/4 = 1
    assert aux["lb_loss"].item() == pytest.approx(1.0)
    assert aux["z_loss"].item() == pytest.approx(math.log(4) ** 2)


def test_moe_lm_reports_aux_loss_and_load() -> None:
    torch.manual_seed(0)
    model = build_preset("tiny-moe")
    idx = torch.randint(0, 512, (2, 16))
    out = model(idx, idx)
    assert out.aux_loss.item() > 0
    assert out.moe_stats["load"].shape == (2, 4)
    torch.testing.assert_close(out.moe_stats["load"].sum(-1), torch.ones(2))
    (out.loss + out.aux_loss).backward()
    assert model.blocks[0].ffn.router.weight.grad.abs().sum() > 0


def test_moe_bad_arguments() -> None:
    with pytest.raises(ValueError, match="top_k"):
        MoE(8, n_experts=2, top_k=3, hidden=4)
    with pytest.raises(ValueError, match="capacity_factor"):
        MoE(8, n_experts=2, top_k=1, hidden=4, capacity_factor=0.0)
