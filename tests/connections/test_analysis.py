"""Unfolded connection matrices, Amax gain and overhead accounting."""

import pytest
import torch

from hyperfrac.connections import (
    amax_gain,
    build,
    overhead,
    unfolded_connection_matrix,
)

from .helpers import perturb

D, L = 8, 5


def _run_with_constant_branches(kind, opts, seed=0):
    """Branches that ignore their input and emit o_j: every layer input is then exactly
    sum_j c_kj o_j, with o_0 = the embedding (HC Eq. 27)."""
    torch.manual_seed(seed)
    conns = [build(kind, D, layer_idx=i, **opts).double() for i in range(L)]
    for c in conns:
        perturb(c, 0.3, seed=seed + c.layer_idx)
    x = torch.randn(3, D, dtype=torch.float64)
    outs = [x] + [torch.randn(3, D, dtype=torch.float64) for _ in range(L)]
    inputs, mats = [], []
    h = conns[0].expand(x)
    for k, c in enumerate(conns):
        mats.append(c.connection_matrix(h))

        def branch(inp, k=k):
            inputs.append(inp)
            return outs[k + 1].expand_as(inp)

        h = c(h, branch)
    return inputs, outs, mats, conns


@pytest.mark.parametrize("kind,opts", [("dhc", {"n_streams": 3}), ("hc", {"n_streams": 2}),
                                       ("mhc", {"n_streams": 2, "sinkhorn_iters": 5})])
def test_unfolded_matrix_reconstructs_layer_inputs_hc(kind, opts):
    inputs, outs, mats, _ = _run_with_constant_branches(kind, opts)
    u = unfolded_connection_matrix(mats)
    c = u["matrix"][..., 0, 0]  # (tokens, L, L+1)
    for k in range(L):
        recon = sum(c[:, k, j, None] * outs[j] for j in range(k + 1))
        torch.testing.assert_close(inputs[k], recon, rtol=0, atol=1e-10)
        assert torch.all(c[:, k, k + 1:] == 0)
    torch.testing.assert_close(u["per_stream"].sum(-5), u["matrix"])


def test_unfolded_matrix_reconstructs_layer_inputs_fc():
    inputs, outs, mats, conns = _run_with_constant_branches("dfc", {"n_fracs": 2})
    u = unfolded_connection_matrix(mats)["matrix"]  # (tokens, L, L+1, m, m)
    m, dm = 2, D // 2
    for k in range(L):
        recon = sum(torch.einsum("tab,tbd->tad", u[:, k, j], outs[j].reshape(3, m, dm))
                    for j in range(k + 1))
        torch.testing.assert_close(inputs[k], recon.reshape(3, D), rtol=0, atol=1e-10)


def test_unfolded_residual_is_all_ones_below_the_diagonal():
    mats = [build("residual", D).connection_matrix() for _ in range(4)]
    c = unfolded_connection_matrix(mats)["matrix"][..., 0, 0]
    expected = torch.tril(torch.ones(4, 5, dtype=torch.float64))
    torch.testing.assert_close(c, expected)


def test_amax_gain_on_hand_built_matrices():
    # H_res = A_r^T. Layer 1: permutation (gains 1); layer 2: rows sum to 2 and 1, columns 3, 0
    perm = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    h2 = torch.tensor([[2.0, 0.0], [1.0, 0.0]])

    def mat(h_res):
        m = torch.zeros(3, 3)
        m[1:, 1:] = h_res.t()
        return m

    g = amax_gain([mat(perm), mat(h2)])
    torch.testing.assert_close(g["single_forward"], torch.tensor([1.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(g["single_backward"], torch.tensor([1.0, 3.0], dtype=torch.float64))
    comp = h2 @ perm  # [[0, 2], [0, 1]]
    assert g["composite_forward"][1] == comp.abs().sum(-1).max()
    assert g["composite_backward"][1] == comp.abs().sum(-2).max()


def test_mhc_gain_stays_near_one_and_hc_can_grow():
    torch.manual_seed(0)
    mhc = [build("mhc", D, layer_idx=i, sinkhorn_iters=20).double() for i in range(20)]
    hc = [build("hc", D, layer_idx=i, n_streams=4).double() for i in range(20)]
    for c in mhc + hc:
        perturb(c, 1.0, seed=c.layer_idx)
    g_mhc = amax_gain([c.connection_matrix() for c in mhc])
    g_hc = amax_gain([c.connection_matrix() for c in hc])
    # rows of H_res are exact, so the composite forward gain of mHC is 1 to rounding
    assert (g_mhc["composite_forward"] - 1).abs().max() < 1e-5
    assert g_mhc["composite_backward"].max() < 1.6
    assert g_hc["composite_forward"].max() > 10


@pytest.mark.parametrize("kind,opts,expected", [
    ("hc", {"n_streams": 4}, 768),          # HC Table 7, OLMo-1B-SHCx4
    ("dhc", {"n_streams": 4}, 394_048),     # HC Table 7, OLMo-1B-DHCx4 (non-parametric norm)
    ("fc", {"n_fracs": 4}, 1_152),          # FC §4.4, SFCx4
    ("dfc", {"n_fracs": 4}, 165_056),       # FC §4.4, DFCx4 (norm of width d/m)
    ("residual", {}, 0),
])
def test_overhead_gives_published_parameter_counts(kind, opts, expected):
    assert overhead(kind, 2048, 32, **opts)["params"] == expected


def test_overhead_mhc_parameter_formula():
    n, c = 4, 256
    per_layer = (n * n + 2 * n) * n * c + (n * n + 2 * n) + 3
    assert overhead("mhc", c, 3, n_streams=n)["params"] == 3 * per_layer


def test_overhead_flops_are_small_relative_to_olmo_1b():
    # OLMo-1B: 2.3536 GFLOPs/token; HC reports +0.2% (DHCx4) and +0.127% (SHCx4)
    base = 2.3536e9
    dhc = overhead("dhc", 2048, 32, n_streams=4)["flops_per_token"] / base
    shc = overhead("hc", 2048, 32, n_streams=4)["flops_per_token"] / base
    assert 0.001 < shc < dhc < 0.004
