"""Registry, errors, state dicts, freezing, layouts, dtypes and torch.compile."""

import pytest
import torch
from torch import nn

from hyperfrac.bench.memory import saved_tensor_bytes
from hyperfrac.connections import KINDS, build, connection_class, options_for
from hyperfrac.connections.registry import _factory_keywords

from .helpers import assert_compiled_matches_eager, mlp_branches, perturb

D = 16
STREAM_KINDS = [
    ("hc", {"n_streams": 2}),
    ("dhc", {"n_streams": 4}),
    ("fc", {"n_fracs": 2}),
    ("dfc", {"n_fracs": 4}),
    ("mhc", {"n_streams": 4}),
    ("mhc", {"n_streams": 4, "flavor": "deepseek-v4"}),
    ("mhc-lite", {"n_streams": 4}),
    ("kromhc", {"n_streams": 4}),
]
ALL_KINDS = [("residual", {}), ("postnorm", {})] + STREAM_KINDS


def test_registry_lists_every_kind():
    assert set(KINDS) == {"residual", "postnorm", "hc", "dhc", "fc", "dfc", "mhc", "mhc-lite",
                          "kromhc", "attnres"}
    assert "n_streams" in options_for("dhc") and "n_fracs" in options_for("dfc")


@pytest.mark.parametrize("kind", KINDS)
def test_schema_covers_exactly_the_constructor_options(kind):
    """The option schema and the class signatures cannot drift apart: a constructor option
    without a schema entry would go unchecked, an entry without an option would fail."""
    assert options_for(kind) == _factory_keywords(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_slot_option_sets_the_slot_count(kind):
    option = connection_class(kind).slot_option
    if option is None:
        assert build(kind, D).n_slots == 1
    else:
        assert option in options_for(kind)
        assert build(kind, D, **{option: 4}).n_slots == 4


@pytest.mark.parametrize("kind", KINDS)
def test_flops_per_token_count_the_mixing_and_the_dynamic_part(kind):
    """Static HC/FC: width P^T h (2SRDs) + depth Q^T h + beta o (2S^2 Ds + 2S Ds); the
    dynamic kinds add their coefficient maths; residual and Post-Norm count the add (D)."""
    option = connection_class(kind).slot_option
    conn = build(kind, D, **({option: 4} if option else {}))
    s, ds, r = conn.n_slots, getattr(conn, "slot_dim", D), getattr(conn, "n_inputs", 1)
    mixing = 2 * s * r * ds + 2 * s * s * ds + 2 * s * ds if option else D
    if getattr(conn, "dynamic", False):
        assert conn.flops_per_token() > mixing
    else:
        assert conn.flops_per_token() == mixing
    assert conn.extra_params() == sum(p.numel() for p in conn.parameters())


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown connection kind 'hyper'.*dhc"):
        build("hyper", D)


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(TypeError, match="n_stream.*valid options.*n_streams"):
        build("dhc", D, n_stream=4)


def test_frac_must_divide_dim():
    with pytest.raises(ValueError, match="n_fracs=3 does not divide dim=16"):
        build("dfc", D, n_fracs=3)


@pytest.mark.parametrize("kind", ["hc", "dhc", "mhc"])
@pytest.mark.parametrize("n", [0, -1, 2.0])
def test_bad_stream_count(kind, n):
    with pytest.raises(ValueError, match="n_streams must be an integer >= 1"):
        build(kind, D, n_streams=n)


def test_bad_freeze_and_norm_type():
    with pytest.raises(ValueError, match="freeze"):
        build("dhc", D, freeze=("everything",))
    with pytest.raises(ValueError, match="norm_type"):
        build("dhc", D, norm_type="batchnorm")


@pytest.mark.parametrize("kind,opts", STREAM_KINDS)
def test_wrong_state_shape_is_a_clear_error(kind, opts):
    conn = build(kind, D, **opts)
    with pytest.raises(ValueError, match="did you call expand"):
        conn(torch.randn(2, 3, D), nn.Identity())


def test_wrong_branch_width_is_a_clear_error():
    conn = build("dhc", D, n_streams=2)
    with pytest.raises(ValueError, match="branch returned width 8"):
        conn(conn.expand(torch.randn(2, D)), nn.Linear(D, 8))


@pytest.mark.parametrize("kind,opts", ALL_KINDS)
def test_state_dict_round_trip(kind, opts):
    torch.manual_seed(0)
    a, b = build(kind, D, layer_idx=3, **opts), build(kind, D, layer_idx=3, **opts)
    perturb(a, 0.3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, D)
    branch = mlp_branches(1, D, dtype=torch.float32)[0]
    torch.testing.assert_close(b(b.expand(x), branch), a(a.expand(x), branch), rtol=0, atol=0)


def test_freeze_width_and_depth():
    w = build("dhc", D, freeze=("width",))
    assert not w.static_alpha.requires_grad and not w.dynamic_alpha.requires_grad
    assert w.static_beta.requires_grad and w.dynamic_beta.requires_grad
    d = build("dhc", D, freeze="depth")
    assert not d.static_beta.requires_grad and d.static_alpha.requires_grad


def test_output_scale_and_prenorm_flags():
    assert build("dhc", D, n_streams=4).output_scale == 2.0
    assert build("mhc", D, n_streams=4).output_scale == 2.0
    assert build("dfc", D, n_fracs=4).output_scale == 1.0
    assert build("postnorm", D).uses_prenorm is False
    assert build("residual", D).uses_prenorm is True


@pytest.mark.parametrize("kind,opts", ALL_KINDS)
def test_channel_first_equals_channel_last(kind, opts):
    """(B, C, H, W) maps with a 1x1-conv branch == (B, H, W, C) with the same Linear."""
    torch.manual_seed(0)
    last = build(kind, D, layer_idx=1, **opts).double()
    perturb(last, 0.3)
    first = build(kind, D, layer_idx=1, channel_first=True, **opts).double()
    first.load_state_dict(last.state_dict())
    lin = nn.Linear(D, D).double()
    conv = nn.Conv2d(D, D, 1).double()
    conv.weight.data.copy_(lin.weight.data[:, :, None, None])
    conv.bias.data.copy_(lin.bias.data)
    x = torch.randn(2, D, 3, 5, dtype=torch.float64)
    y_first = first.reduce(first(first.expand(x), conv))
    y_last = last.reduce(last(last.expand(x.permute(0, 2, 3, 1)), lin))
    torch.testing.assert_close(y_first, y_last.permute(0, 3, 1, 2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind,opts", STREAM_KINDS)
def test_bf16_state_matches_fp32_and_keeps_small_coefficients(kind, opts):
    """bf16 states are mixed with fp32 coefficients: a 1e-3 change of B survives (in bf16,
    1 + 1e-3 rounds to 1)."""
    torch.manual_seed(0)
    conn = build(kind, D, **opts)
    perturb(conn, 0.1)
    branch = mlp_branches(1, D, dtype=torch.float32)[0]
    x = torch.randn(4, 8, D)
    h = conn.expand(x)
    ref = conn(h, branch)
    out = conn(h.bfloat16(), lambda t: branch(t.float()).bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
    if kind in ("hc", "fc"):
        with torch.no_grad():
            conn.static_beta.add_(1e-3)
        moved = conn(h.bfloat16(), lambda t: branch(t.float()).bfloat16())
        expected = conn(h, branch)
        assert (moved.float() - out.float()).abs().max() > 0
        torch.testing.assert_close(moved.float(), expected, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize(
    "kind,opts",
    ALL_KINDS[:1]
    + [
        ("dhc", {"n_streams": 4}),
        ("dfc", {"n_fracs": 4}),
        ("hc", {"n_streams": 2}),
        ("mhc", {"n_streams": 4, "sinkhorn_iters": 3}),
        ("mhc", {"n_streams": 4, "sinkhorn_iters": 3, "flavor": "deepseek-v4"}),
        ("mhc-lite", {"n_streams": 3}),
        ("kromhc", {"n_streams": 4}),
    ],
)
def test_compile_fullgraph_matches_eager(kind, opts):
    """Inductor traces the custom autograd kernels without graph breaks; in float64 the
    compiled forward and gradients equal eager to rounding (fp32 differs only by reduction
    order, which hides small entries of large gradients)."""
    torch.manual_seed(0)
    conns = nn.ModuleList(build(kind, D, layer_idx=i, **opts) for i in range(2)).double()
    perturb(conns, 0.2)
    branches = mlp_branches(2, D)

    def f(x):
        h = conns[0].expand(x)
        for c, b in zip(conns, branches, strict=True):
            h = c(h, b)
        return conns[0].reduce(h)

    assert_compiled_matches_eager(f, conns.parameters(), torch.randn(2, 3, D, dtype=torch.float64))


def _saved_bytes(fn):
    out = []
    nbytes = saved_tensor_bytes(lambda: out.append(fn()) or out[0])
    return out[0], nbytes


@pytest.mark.parametrize("kind,opts", STREAM_KINDS)
def test_recompute_gives_identical_gradients_and_saves_the_branch_input(kind, opts):
    torch.manual_seed(0)
    plain = build(kind, D, layer_idx=1, recompute=False, **opts)
    perturb(plain, 0.2)
    rec = build(kind, D, layer_idx=1, recompute=True, **opts)
    rec.load_state_dict(plain.state_dict())
    branch = mlp_branches(1, D, dtype=torch.float32)[0]
    x = torch.randn(4, 32, D)
    results = []
    for conn in (plain, rec):
        h = conn.expand(x).detach().requires_grad_(True)
        out, nbytes = _saved_bytes(lambda conn=conn, h=h: conn(h, branch))
        out.square().sum().backward()
        grads = [h.grad] + [p.grad.clone() for p in conn.parameters()]
        conn.zero_grad()
        branch.zero_grad()
        results.append((out.detach(), grads, nbytes))
    (o1, g1, b1), (o2, g2, b2) = results
    torch.testing.assert_close(o2, o1, rtol=0, atol=0)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    x_bytes = 4 * 32 * D * 4  # the branch input (float32)
    assert b1 - b2 >= x_bytes


@pytest.mark.parametrize("kind,opts", STREAM_KINDS)
def test_autocast_does_not_lower_the_connection_precision(kind, opts):
    """Inside torch.autocast(bfloat16) the coefficients and mixing stay float32: with a
    float32 branch the result is bit-identical to running without autocast."""
    torch.manual_seed(0)
    conn = build(kind, D, **opts)
    perturb(conn, 0.1)
    lin = nn.Linear(D, D)

    def branch(x):
        with torch.autocast("cpu", enabled=False):
            return lin(x.float())

    h = conn.expand(torch.randn(2, 8, D)).requires_grad_(True)
    ref = conn(h, branch)
    g_ref = torch.autograd.grad(ref.square().sum(), [h, *conn.parameters()])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conn(h, branch)
    g = torch.autograd.grad(out.square().sum(), [h, *conn.parameters()])  # backward outside
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["dhc", "dfc", "mhc"])
def test_scalar_params_are_1d_and_old_0d_state_dicts_still_load(kind):
    conn = build(kind, 8, **({"n_fracs": 2} if kind == "dfc" else {"n_streams": 2}))
    scalars = {n: p for n, p in conn.named_parameters() if p.numel() == 1}
    assert scalars and all(p.shape == (1,) for p in scalars.values())  # FSDP2 can shard them
    old = {k: (v.reshape(()) + 0.5 if k in scalars else v) for k, v in conn.state_dict().items()}
    conn.load_state_dict(old)
    for name, p in scalars.items():
        assert p.shape == (1,) and float(p) == pytest.approx(float(old[name]))
