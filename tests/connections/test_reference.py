"""The fused kernels agree with float64 transcriptions of the equations (random parameters),
pass gradcheck, and deliver gradients to every parameter."""

import pytest
import torch
from torch import nn

from hyperfrac.connections import build
from hyperfrac.connections import functional as kernels

from . import reference as ref
from .helpers import mlp_branches, perturb

D = 12


CASES = [
    ("hc", {"n_streams": 3}, ref.hc_layer, ref.hc_args),
    ("dhc", {"n_streams": 4}, ref.hc_layer, ref.hc_args),
    ("dhc", {"n_streams": 2, "tanh": False}, ref.hc_layer, ref.hc_args),
    ("dhc", {"n_streams": 4, "norm_type": "rmsnorm", "norm_affine": True}, ref.hc_layer,
     ref.hc_args),
    ("dhc", {"n_streams": 2, "norm": False}, ref.hc_layer, ref.hc_args),
    ("dhc", {"n_streams": 2, "rescale": False}, ref.hc_layer, ref.hc_args),
    ("fc", {"n_fracs": 3}, ref.fc_layer, ref.fc_args),
    ("dfc", {"n_fracs": 4}, ref.fc_layer, ref.fc_args),
    ("dfc", {"n_fracs": 2, "norm_type": "layernorm", "norm_affine": False}, ref.fc_layer,
     ref.fc_args),
    ("dfc", {"n_fracs": 2, "tanh": False, "rescale": False}, ref.fc_layer, ref.fc_args),
    ("mhc", {"n_streams": 4}, ref.mhc_layer, ref.mhc_args),
    ("mhc", {"n_streams": 3, "sinkhorn_iters": 5, "norm": False}, ref.mhc_layer, ref.mhc_args),
]


@pytest.mark.parametrize("kind,opts,reference,args", CASES,
                         ids=[f"{k}-{o}" for k, o, *_ in CASES])
def test_module_matches_reference_equations(kind, opts, reference, args):
    torch.manual_seed(0)
    conn = build(kind, D, layer_idx=1, **opts).double()
    perturb(conn, 0.5)
    branch = mlp_branches(1, D)[0]
    h = torch.randn(2, 5, conn.n_slots, conn.slot_dim, dtype=torch.float64)
    ours = conn(h, branch)
    theirs = reference(h, branch, **args(conn))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    # the two halves give the same as the call
    x, state = conn.width_connection(h)
    torch.testing.assert_close(conn.depth_connection(branch(x), state), ours, rtol=0, atol=0)


@pytest.mark.parametrize("kind,opts", [("dhc", {"n_streams": 3}), ("dfc", {"n_fracs": 2}),
                                       ("mhc", {"n_streams": 2, "sinkhorn_iters": 4})])
def test_forward_is_the_connection_matrix(kind, opts):
    """h' = [[0, B], [P, Q]] applied literally to (branch output, h) for every token."""
    torch.manual_seed(1)
    conn = build(kind, D, **opts).double()
    perturb(conn, 0.3)
    branch = mlp_branches(1, D, seed=3)[0]
    h = torch.randn(4, conn.n_slots, conn.slot_dim, dtype=torch.float64)
    mat = conn.connection_matrix(h)  # (4, S+1, R+S)
    r = conn.n_inputs
    p, q, beta = mat[:, 1:, :r], mat[:, 1:, r:], mat[:, 0, r:]
    assert torch.all(mat[:, 0, :r] == 0)
    x = torch.einsum("tsr,tsd->trd", p, h).reshape(4, D)
    out = branch(x).reshape(4, -1, conn.slot_dim)
    expected = torch.einsum("tsj,tsd->tjd", q, h) + beta.unsqueeze(-1) * out
    torch.testing.assert_close(conn(h, branch), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["layernorm", "rmsnorm", "none"])
def test_gradcheck_norm_project(mode):
    torch.manual_seed(0)
    h = torch.randn(5, 3, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: kernels.norm_project(a, b, mode, 1e-5), (h, w))
    expected = ref._norm(h, mode, 1e-5) @ w
    torch.testing.assert_close(kernels.norm_project(h, w, mode, 1e-5), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("r", [1, 3])
def test_gradcheck_width_and_depth(r):
    torch.manual_seed(0)
    s = 3
    h = torch.randn(4, s, 5, dtype=torch.float64, requires_grad=True)
    p = torch.randn(4, s, r, dtype=torch.float64, requires_grad=True)
    q = torch.randn(4, s, s, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, s, dtype=torch.float64, requires_grad=True)
    o = torch.randn(4, r, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kernels.width_apply, (h, p))
    assert torch.autograd.gradcheck(kernels.depth_apply, (h, q, b, o))
    # static (shared) coefficients take the broadcast path
    ps = torch.randn(s, r, dtype=torch.float64, requires_grad=True)
    qs = torch.randn(s, s, dtype=torch.float64, requires_grad=True)
    bs = torch.randn(s, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kernels.width_apply, (h, ps))
    assert torch.autograd.gradcheck(kernels.depth_apply, (h, qs, bs, o))


def test_gradcheck_sinkhorn():
    x = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: kernels.sinkhorn(t, 6), (x,))
    torch.testing.assert_close(kernels.sinkhorn(x, 6), ref.sinkhorn(x, 6), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind,opts", [("dhc", {"n_streams": 2}), ("dfc", {"n_fracs": 2}),
                                       ("mhc", {"n_streams": 2, "sinkhorn_iters": 3}),
                                       ("hc", {"n_streams": 2}), ("postnorm", {})])
def test_gradcheck_module(kind, opts):
    torch.manual_seed(0)
    conn = build(kind, 4, **opts).double()
    perturb(conn, 0.3)
    lin = nn.Linear(4, 4).double()
    h = torch.randn(3, *conn.expand(torch.zeros(1, 4)).shape[1:], dtype=torch.float64,
                    requires_grad=True)
    params = [p for p in conn.parameters()]

    def f(h, *ps):
        return conn(h, lin)

    assert torch.autograd.gradcheck(f, (h, *params))


@pytest.mark.parametrize("kind,opts", [("dhc", {"n_streams": 4}), ("dfc", {"n_fracs": 4}),
                                       ("mhc", {"n_streams": 4}), ("hc", {"n_streams": 4}),
                                       ("fc", {"n_fracs": 2}), ("postnorm", {})])
def test_gradients_reach_every_parameter(kind, opts):
    torch.manual_seed(0)
    conn = build(kind, D, layer_idx=2, **opts)
    perturb(conn, 0.2)
    branch = mlp_branches(1, D, dtype=torch.float32)[0]
    h = conn.expand(torch.randn(2, 3, D))
    conn(h, branch).square().sum().backward()
    for name, p in conn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{kind}: zero gradient for {name}"


def test_dynamic_scales_receive_gradient_from_init():
    """From the exact init (W = 0) the dynamic projections still learn: dL/dW != 0."""
    conn = build("dhc", D, n_streams=4)
    branch = mlp_branches(1, D, dtype=torch.float32)[0]
    h = conn.expand(torch.randn(2, 3, D))
    conn(h, branch).square().sum().backward()
    assert conn.dynamic_alpha.grad.abs().sum() > 0
    assert conn.dynamic_beta.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["layernorm", "rmsnorm", "none"])
@pytest.mark.parametrize("r,tanh", [(1, True), (3, False), (3, True)])
def test_gradcheck_fused_dynamic_width(mode, r, tanh):
    torch.manual_seed(0)
    s, ds = 3, 5
    dd = dict(dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, s, ds, **dd)
    w = torch.randn(ds, r + s + 1, **dd)
    sa, sb = torch.randn(s, r + s, **dd), torch.randn(s, **dd)
    ka, kb = torch.tensor(0.7, **dd), torch.tensor(-0.4, **dd)

    def f(*args):
        x, p, q, beta = kernels.dynamic_width(*args, norm=mode, eps=1e-5, tanh=tanh)
        assert not p.requires_grad
        return x, q, beta

    assert torch.autograd.gradcheck(f, (h, w, sa, sb, ka, kb))
    # and it equals the unfused composition
    t = kernels.norm_project(h, w, mode, 1e-5)
    t = torch.tanh(t) if tanh else t
    alpha, beta = sa + ka * t[..., :-1], sb + kb * t[..., -1]
    x, q, b = f(h, w, sa, sb, ka, kb)
    torch.testing.assert_close(x, kernels.width_apply(h, alpha[..., :r]), rtol=0, atol=1e-12)
    torch.testing.assert_close(q, alpha[..., r:], rtol=0, atol=1e-12)
    torch.testing.assert_close(b, beta, rtol=0, atol=1e-12)
