"""At init every kind computes the Pre-Norm residual function (HC Eq. 14, FC Eq. 15); off init,
the papers' ablations (tanh, norm, rescale) compute their reference equations."""

import itertools

import pytest
import torch

from hyperfrac.connections import build

from . import reference as ref
from .helpers import build_stack, mlp_branches, perturb, run_stack

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


_FLAGS = {"dhc": ("tanh", "norm", "rescale"), "dfc": ("tanh", "norm", "rescale"),
          "mhc": ("tanh", "norm")}  # mHC has no rescale switch (its alphas always scale)
ABLATIONS = [
    (kind, dict(zip(_FLAGS[kind], values, strict=True)))
    for kind in _FLAGS
    for values in itertools.product((True, False), repeat=len(_FLAGS[kind]))
]
_LAYERS = {"dhc": (ref.hc_layer, ref.hc_args), "dfc": (ref.fc_layer, ref.fc_args),
           "mhc": (ref.mhc_layer, ref.mhc_args)}


_DEFAULT_NORM = {"dhc": "layernorm", "dfc": "rmsnorm"}  # the norm_type each kind defaults to


def _reference_args(kind, conn, flags):
    """The reference equations' arguments: parameter values from the module, the switches from
    the requested ``flags`` (not read back from the module, so a module ignoring a flag fails)."""
    args = _LAYERS[kind][1](conn)
    args["tanh"] = flags["tanh"]
    if kind == "mhc":
        args["norm"] = flags["norm"]
    else:
        args["norm"] = _DEFAULT_NORM[kind] if flags["norm"] else "none"
        if flags["rescale"]:
            assert isinstance(conn.alpha_scale, torch.nn.Parameter), "rescale: learned s_alpha"
        else:
            args["s_a"] = args["s_b"] = 1.0  # FC §5.1 'w/o rescale': the dynamic part unscaled
    return args


def _flipped(kind, conn, flags, flag):
    """Reference arguments with one ablation switch the other way; rescale switched on (the
    module has no learned scale then) gets s_alpha = s_beta = 0.37."""
    if flag == "rescale" and not flags["rescale"]:
        args = _reference_args(kind, conn, flags)
        args["s_a"] = args["s_b"] = 0.37
        return args
    return _reference_args(kind, conn, {**flags, flag: not flags[flag]})


@pytest.mark.parametrize("kind,flags", ABLATIONS, ids=[f"{k}-{f}" for k, f in ABLATIONS])
def test_paper_ablations_match_the_reference_equations_off_init(kind, flags):
    """Each ablation (tanh, norm, rescale on or off) with random dynamic weights W and static
    parameters: the module's forward and gradients equal the float64 reference equations,
    and flipping any one flag in the reference changes the result (so each flag is tested)."""
    torch.manual_seed(0)
    layer = _LAYERS[kind][0]
    slots = {"n_streams": 3} if kind != "dfc" else {"n_fracs": 4}
    conn = build(kind, D, layer_idx=1, **slots, **flags).double()
    perturb(conn, 0.5)  # W != 0: the dynamic part, and so every flag, is active
    branch = mlp_branches(1, D)[0]
    h = torch.randn(2, 5, conn.n_slots, conn.slot_dim, dtype=torch.float64, requires_grad=True)
    inputs = [h, *conn.parameters()]
    ours = conn(h, branch)
    theirs = layer(h, branch, **_reference_args(kind, conn, flags))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    probe = torch.randn_like(ours)  # a random cotangent: every output entry matters
    g_ours = torch.autograd.grad((ours * probe).sum(), inputs)
    g_theirs = torch.autograd.grad((theirs * probe).sum(), inputs)
    for name, a, b in zip(["h", *dict(conn.named_parameters())], g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"{kind} {flags}: d/d{name}")
    with torch.no_grad():
        for flag in flags:
            other = layer(h, branch, **_flipped(kind, conn, flags, flag))
            assert (other - ours).abs().max() > 1e-4, f"{kind}: flipping {flag} changed nothing"


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
