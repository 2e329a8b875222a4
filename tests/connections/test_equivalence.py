"""At init every kind computes the Pre-Norm residual function (HC Eq. 14, FC Eq. 15)."""

import pytest
import torch

from hyperfrac.connections import build

from .helpers import build_stack, mlp_branches, run_stack

D, L = 16, 6


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    x = torch.randn(3, 5, D, dtype=torch.float64)
    branches = mlp_branches(L, D)
    ref = run_stack(build_stack("residual", D, L), branches, x)
    return x, branches, ref


@pytest.mark.parametrize("kind", ["hc", "dhc"])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_hc_equals_prenorm_at_init(setup, kind, n):
    x, branches, ref = setup
    out = run_stack(build_stack(kind, D, L, n_streams=n), branches, x)
    # n identical streams are summed by reduce: n x the Pre-Norm state (papers.md §5.1)
    torch.testing.assert_close(out / n, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["fc", "dfc"])
@pytest.mark.parametrize("m", [1, 2, 4])
def test_fc_equals_prenorm_at_init(setup, kind, m):
    x, branches, ref = setup
    out = run_stack(build_stack(kind, D, L, n_fracs=m), branches, x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [2, 4])
def test_mhc_equals_prenorm_at_init(setup, n):
    """H_pre sums to 1 and H_res is doubly stochastic: exact up to Sinkhorn's row rounding."""
    x, branches, ref = setup
    out = run_stack(build_stack("mhc", D, L, n_streams=n), branches, x)
    torch.testing.assert_close(out / n, ref, rtol=0, atol=1e-10)


def test_mhc_single_stream_is_close(setup):
    """n = 1: H_pre = sigmoid(b) = pre_init < 1 scales the branch input; a branch that starts
    with a LayerNorm only sees it through the norm's eps, so the gap is tiny but not zero."""
    x, branches, ref = setup
    out = run_stack(build_stack("mhc", D, L, n_streams=1), branches, x)
    err = (out - ref).abs().max().item()
    assert 0 < err < 1e-3


@pytest.mark.parametrize("kind,opts", [("dhc", {"n_streams": 4}), ("dfc", {"n_fracs": 4}),
                                       ("mhc", {"n_streams": 4})])
def test_equivalence_survives_the_paper_ablations(setup, kind, opts):
    """tanh / norm / rescale switches do not change the function at init (W = 0)."""
    x, branches, ref = setup
    extra = {"tanh": False, "norm": False}
    if kind != "mhc":
        extra["rescale"] = False
    out = run_stack(build_stack(kind, D, L, **opts, **extra), branches, x)
    scale = opts.get("n_streams", 1)
    torch.testing.assert_close(out / scale, ref, rtol=0, atol=1e-10)


def test_hc_init_matrix_is_paper_eq14():
    conn = build("hc", 8, layer_idx=5, n_streams=4)
    m = conn.connection_matrix()
    expected = torch.zeros(5, 5)
    expected[0, 1:] = 1  # B = 1
    expected[1 + 5 % 4, 0] = 1  # A_m = e_(k mod n)
    expected[1:, 1:] = torch.eye(4)  # A_r = I
    torch.testing.assert_close(m, expected)


def test_fc_init_matrix_is_paper_eq15():
    m = build("dfc", 8, n_fracs=2).connection_matrix()
    expected = torch.tensor([[0.0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    torch.testing.assert_close(m, expected)


def test_residual_matrix():
    torch.testing.assert_close(build("residual", 4).connection_matrix(),
                               torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
