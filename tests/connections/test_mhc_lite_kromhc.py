"""mHC-lite and KromHC: H_res exactly doubly stochastic, the float64 equations of the papers
(arXiv 2601.05732, 2601.21579), Pre-Norm at init, compile, errors, state dicts, training."""

import itertools
import math

import pytest
import torch

from hyperfrac.connections import (
    ConnectionSpecError,
    KromHC,
    MHCLite,
    amax_gain,
    build,
    connection_class,
    validate_spec,
)
from hyperfrac.connections.doubly_stochastic import kronecker_swap_mix, permutation_matrices
from hyperfrac.models import build_preset

from . import reference as ref
from .helpers import (
    assert_compiled_matches_eager,
    build_stack,
    mlp_branches,
    perturb,
    run_stack,
)

D, L = 12, 6
CASES = [("mhc-lite", n) for n in (2, 3, 4, 5, 6)] + [("kromhc", n) for n in (2, 4, 8)]
IDS = [f"{k}-{n}" for k, n in CASES]
LAYER = {"mhc-lite": ref.mhc_lite_layer, "kromhc": ref.kromhc_layer}
RES = {"mhc-lite": ref.mhc_lite_res, "kromhc": ref.kromhc_res}


def test_registered_with_their_classes():
    assert connection_class("mhc-lite") is MHCLite and connection_class("kromhc") is KromHC
    assert MHCLite.slot_option == KromHC.slot_option == "n_streams"
    conn = build("mhc-lite", D, layer_idx=2, n_streams=4)
    assert conn.n_slots == conn.n_streams == 4 and conn.layer_stream == 2
    assert validate_spec({"kind": "kromhc", "n_streams": 4}) == {"kind": "kromhc", "n_streams": 4}


# ------------------------------------------------------------ doubly stochastic, exactly


@pytest.mark.parametrize("kind,n", CASES, ids=IDS)
def test_h_res_is_doubly_stochastic_in_fp32(kind, n):
    """Random (large) parameters and inputs: rows and columns sum to 1 to 1e-6, no entry < 0."""
    torch.manual_seed(n)
    conn = build(kind, D, n_streams=n)
    perturb(conn, 3.0, seed=n)  # far from init: logits of order 10
    h = torch.randn(3, 7, n, D) * 5
    for h_res in (conn.residual_matrix(h), conn.residual_matrix()):  # per token, static
        assert h_res.dtype == torch.float32
        ones = torch.ones(h_res.shape[:-1])
        torch.testing.assert_close(h_res.sum(-1), ones, rtol=0, atol=1e-6)
        torch.testing.assert_close(h_res.sum(-2), ones, rtol=0, atol=1e-6)
        assert h_res.min() >= 0
    assert conn.residual_matrix(h).std(dim=(0, 1)).max() > 1e-3  # it is input-dependent


@pytest.mark.parametrize("kind,n", [("mhc-lite", 4), ("kromhc", 4)])
def test_exact_under_bf16_autocast_and_with_bf16_states(kind, n):
    """The coefficients stay in fp32 (as mhc's): autocast cannot round H_res to bf16."""
    torch.manual_seed(0)
    conn = build(kind, D, n_streams=n)
    perturb(conn, 2.0)
    h = torch.randn(4, 5, n, D)
    for state in (h, h.bfloat16()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h_res = conn.residual_matrix(state)
        assert h_res.dtype == torch.float32
        torch.testing.assert_close(h_res.sum(-2), torch.ones(4, 5, n), rtol=0, atol=1e-6)
        torch.testing.assert_close(h_res.sum(-1), torch.ones(4, 5, n), rtol=0, atol=1e-6)
    out = conn(h.bfloat16(), mlp_branches(1, D, dtype=torch.bfloat16)[0])
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["mhc-lite", "kromhc"])
def test_composite_amax_gain_is_one(kind):
    """mHC §3.2's Amax gain of 20 random layers: exactly 1 here (mHC: about 1 + Sinkhorn's
    column error), forward and backward, single and composite."""
    torch.manual_seed(0)
    conns = build_stack(kind, D, 20, dtype=torch.float32, n_streams=4)
    perturb(conns, 1.0)
    h = torch.randn(6, 4, D)
    gains = amax_gain([c.connection_matrix(h).mean(0) for c in conns])
    for name, g in gains.items():
        torch.testing.assert_close(g.max().item(), 1.0, rtol=0, atol=1e-6, msg=name)


def test_permutations_and_kronecker_factors():
    """The building blocks against their definitions: itertools' n! permutation matrices with
    the identity first; U_1 (x) U_2 (x) U_3 against torch.kron."""
    perms = permutation_matrices(4)
    assert perms.shape == (24, 4, 4) and torch.equal(perms[0], torch.eye(4))
    expected = [ref.permutation_matrix(s).float() for s in itertools.permutations(range(4))]
    assert torch.equal(perms, torch.stack(expected))
    p = torch.tensor([0.9, 0.3, 0.55], dtype=torch.float64)
    u = [q * torch.eye(2, dtype=torch.float64) + (1 - q) * torch.eye(2, dtype=torch.float64).flip(0)
         for q in p]
    torch.testing.assert_close(kronecker_swap_mix(p), torch.kron(torch.kron(u[0], u[1]), u[2]),
                               rtol=0, atol=1e-15)
    assert torch.equal(kronecker_swap_mix(p[:0]), torch.ones(1, 1, dtype=torch.float64))


# ------------------------------------------------------------- the papers' equations


@pytest.mark.parametrize("kind,n", CASES, ids=IDS)
@pytest.mark.parametrize("flags", [{}, {"norm": False, "tanh": True}], ids=["paper", "ablated"])
def test_forward_and_gradients_match_the_float64_equations(kind, n, flags):
    torch.manual_seed(0)
    conn = build(kind, D, layer_idx=1, n_streams=n, **flags).double()
    perturb(conn, 0.5)
    branch = mlp_branches(1, D)[0]
    h = torch.randn(2, 3, n, D, dtype=torch.float64, requires_grad=True)
    ours = conn(h, branch)
    theirs = LAYER[kind](h, branch, **ref.exact_ds_args(conn))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    g = torch.randn_like(ours)
    params = [h, *conn.parameters()]
    grads = torch.autograd.grad(ours, params, g)
    expected = torch.autograd.grad(theirs, params, g)
    for name, a, b in zip(["h", *dict(conn.named_parameters())], grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=f"gradient of {name}")
        assert name == "h" or a.abs().sum() > 0, f"{name} gets no gradient"


@pytest.mark.parametrize("kind,n", [("mhc-lite", 3), ("kromhc", 4)])
def test_connection_matrix_is_h_res_transposed(kind, n):
    """HC layout [[0, H_post], [H_pre^T, H_res^T]] per token; H_res from the reference."""
    torch.manual_seed(2)
    conn = build(kind, D, n_streams=n).double()
    perturb(conn, 0.5)
    h = torch.randn(5, n, D, dtype=torch.float64)
    mat = conn.connection_matrix(h)  # (5, n+1, n+1)
    v = ref.rmsnorm(h.reshape(5, n * D), conn.eps) @ conn.phi
    h_res = RES[kind](conn.alpha_res * v[:, 2 * n :] + conn.b_res, n)
    torch.testing.assert_close(mat[:, 1:, 1:], h_res.transpose(-1, -2), rtol=0, atol=1e-12)
    torch.testing.assert_close(conn.residual_matrix(h), h_res, rtol=0, atol=1e-12)
    torch.testing.assert_close(mat[:, 1:, 0], torch.sigmoid(conn.alpha_pre * v[:, :n] + conn.b_pre))
    assert torch.all(mat[:, 0, 0] == 0)


# ----------------------------------------------------------------------- init = Pre-Norm


@pytest.fixture(scope="module")
def prenorm():
    torch.manual_seed(0)
    x = torch.randn(3, 5, D, dtype=torch.float64)
    branches = mlp_branches(L, D)
    return x, branches, run_stack(build_stack("residual", D, L), branches, x)


@pytest.mark.parametrize("kind,n", CASES, ids=IDS)
@pytest.mark.parametrize("diag", [0.9, 0.994])
def test_network_is_prenorm_at_init(prenorm, kind, n, diag):
    """Identical streams, row-stochastic H_res, H_pre summing to 1, H_post = 1: every stream
    is x + F(x), the Pre-Norm update, whatever the H_res diagonal (module docstrings)."""
    x, branches, expected = prenorm
    out = run_stack(build_stack(kind, D, L, n_streams=n, res_init_diag=diag), branches, x)
    torch.testing.assert_close(out / n, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["mhc-lite", "kromhc"])
def test_single_stream_is_close_to_prenorm(prenorm, kind):
    """n = 1: H_res = [[1]] (no res parameters); H_pre = pre_init scales the branch input,
    which the branch's LayerNorm only sees through its eps (the same gap as mhc)."""
    x, branches, expected = prenorm
    conns = build_stack(kind, D, L, n_streams=1)
    assert conns[0].b_res is None and not hasattr(conns[0], "alpha_res")
    err = (run_stack(conns, branches, x) - expected).abs().max().item()
    assert 0 < err < 1e-3


@pytest.mark.parametrize("kind,n", CASES, ids=IDS)
def test_h_res_at_init_has_the_requested_diagonal_identity_dominant(kind, n):
    conn = build(kind, D, layer_idx=3, n_streams=n, res_init_diag=0.9).double()
    h_res = conn.residual_matrix()
    torch.testing.assert_close(h_res.diagonal(), torch.full((n,), 0.9, dtype=torch.float64))
    assert torch.all(h_res.diagonal() > h_res.max(-1).values * (1 - 1e-12))
    # H_pre sums to 1 with weight 0.9 on stream layer_idx mod n; H_post = 1
    mat = conn.connection_matrix()
    torch.testing.assert_close(mat[1:, 0].sum(), torch.tensor(1.0, dtype=torch.float64))
    assert mat[1 + 3 % n, 0].item() == pytest.approx(0.9)
    assert torch.all(mat[0, 1:] == 1)
    if kind == "mhc-lite":  # the identity permutation carries the largest weight
        a = torch.softmax(conn.b_res, -1)
        assert a.argmax() == 0 and a[1:].max() < a[0]


def test_mhc_lite_community_init_reproduced_by_res_init_diag():
    """mHC-lite's code: logit 0 on the identity, -8 elsewhere, i.e. diagonal 0.99401 at n = 4."""
    z = torch.full((24,), -8.0, dtype=torch.float64)
    z[0] = 0.0
    diag = ref.mhc_lite_res(z, 4).diagonal()[0].item()
    conn = build("mhc-lite", D, n_streams=4, res_init_diag=diag).double()
    torch.testing.assert_close(conn.b_res - conn.b_res[0], z, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------ compile


@pytest.mark.parametrize("kind,n", [("mhc-lite", 3), ("kromhc", 4)])
def test_compile_fullgraph_matches_eager(kind, n):
    """Inductor traces both kinds without graph breaks (the permutation buffer, the static
    Kronecker loop); float64 forward and gradients equal eager to rounding. About 25 s and
    17 s of compiling on a 2-core CPU, under the 30 s at which it would be marked slow."""
    torch.manual_seed(0)
    conns = build_stack(kind, D, 2, n_streams=n)
    perturb(conns, 0.3)
    branches = mlp_branches(2, D)

    def f(x):
        return run_stack(conns, branches, x)

    assert_compiled_matches_eager(f, conns.parameters(), torch.randn(2, 3, D, dtype=torch.float64))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("n", [7, 8, 12])
def test_mhc_lite_refuses_more_than_six_streams(n):
    message = rf"mhc-lite: n_streams={n} needs {n}! = {math.factorial(n)} .* <= 6 .*kromhc"
    with pytest.raises(ConnectionSpecError, match=message):
        validate_spec({"kind": "mhc-lite", "n_streams": n})
    with pytest.raises(ConnectionSpecError, match=message):
        build("mhc-lite", D, n_streams=n)
    with pytest.raises(ValueError, match=message):  # the class itself, without the registry
        MHCLite(D, n_streams=n)


@pytest.mark.parametrize("n,hint", [(3, "try 2 or 4"), (6, "try 4 or 8"), (12, "try 8 or 16")])
def test_kromhc_refuses_a_stream_count_not_a_power_of_two(n, hint):
    message = rf"kromhc: n_streams={n} is not a power of two.*\({hint}\)"
    with pytest.raises(ConnectionSpecError, match=message):
        validate_spec({"kind": "kromhc", "n_streams": n})
    with pytest.raises(ValueError, match=message):
        KromHC(D, n_streams=n)


@pytest.mark.parametrize("kind", ["mhc-lite", "kromhc"])
def test_bad_values_are_refused(kind):
    with pytest.raises(ConnectionSpecError, match=rf"{kind}: n_streams must be an integer >= 1"):
        validate_spec({"kind": kind, "n_streams": 2.0})
    with pytest.raises(ConnectionSpecError, match="res_init_diag=0.25 must lie in .1/n, 1."):
        build(kind, D, n_streams=4, res_init_diag=0.25)
    with pytest.raises(ConnectionSpecError, match="unknown option 'sinkhorn_iters'.*mhc"):
        validate_spec({"kind": kind, "sinkhorn_iters": 20})


# ------------------------------------------------- parameters, state dicts, accounting


@pytest.mark.parametrize("kind,n,k", [("mhc-lite", 4, 24), ("kromhc", 4, 2), ("kromhc", 8, 3)])
def test_parameters_state_dict_and_optimizer_groups(kind, n, k):
    a, b = build(kind, D, layer_idx=3, n_streams=n), build(kind, D, layer_idx=3, n_streams=n)
    shapes = {name: tuple(t.shape) for name, t in a.state_dict().items()}
    assert shapes == {"b_pre": (n,), "b_post": (n,), "b_res": (k,), "phi": (n * D, 2 * n + k),
                      "alpha_pre": (1,), "alpha_post": (1,), "alpha_res": (1,)}
    assert all(p.dim() >= 1 for p in a.parameters())  # FSDP2 shards no 0-d parameter
    assert [id(p) for p in a.decay_parameters()] == [id(a.phi)]
    assert {id(p) for p in a.no_decay_parameters()} == {
        id(p) for name, p in a.named_parameters() if name != "phi"
    }
    assert a.extra_params() == sum(math.prod(s) for s in shapes.values())
    assert a.flops_per_token() > 2 * n * D * (2 * n + k)  # the projection alone
    perturb(a, 0.3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, D)
    branch = mlp_branches(1, D, dtype=torch.float32)[0]
    torch.testing.assert_close(b(b.expand(x), branch), a(a.expand(x), branch), rtol=0, atol=0)


def test_static_kinds_have_no_projection():
    conn = build("kromhc", D, n_streams=4, dynamic=False)
    assert not hasattr(conn, "phi") and list(conn.decay_parameters()) == []
    mixing = 2 * 4 * D + 2 * 16 * D + 2 * 4 * D
    assert conn.flops_per_token() == mixing


def test_mhc_lite_uses_far_fewer_parameters_as_kromhc():
    """KromHC's res projection has log2 n columns, mHC-lite's n!, mHC's n^2 (KromHC §3)."""
    lite, krom, mhc = (build(k, 64, n_streams=4).phi.shape[1] for k in ("mhc-lite", "kromhc",
                                                                         "mhc"))
    assert (lite, krom, mhc) == (8 + 24, 8 + 2, 8 + 16)


# ------------------------------------------------------------------------- in the LM


@pytest.mark.parametrize("kind", ["mhc-lite", "kromhc"])
def test_tiny_lm_trains_with_finite_decreasing_loss(kind):
    torch.manual_seed(0)
    model = build_preset("tiny", connection={"kind": kind, "n_streams": 4})
    assert type(model.blocks[0].attn_conn).kind == kind
    idx = torch.randint(0, 512, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(idx, idx).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.5
    # the doubly-stochastic mixing moved off its init and stayed on the Birkhoff polytope
    conn = model.blocks[0].attn_conn
    assert conn.phi.abs().max() > 0
    h_res = conn.residual_matrix(torch.randn(3, 4, model.blocks[0].attn_conn.dim))
    torch.testing.assert_close(h_res.sum(-2), torch.ones(3, 4), rtol=0, atol=1e-6)
