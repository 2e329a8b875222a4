"""The DeepSeek-V4 flavour of mHC and HyperHead against transformers' own modules.

The reference is what ``DeepseekV4DecoderLayer`` computes around a block:
``post * F(collapsed) + comb^T h`` with ``(post, comb, collapsed) = DeepseekV4HyperConnection(h)``,
and ``DeepseekV4HyperHead`` for the final collapse. Skipped when the installed transformers
has no DeepSeek-V4 (it comes with the ``hf`` extra).
"""

import pytest
import torch

from hyperfrac.connections import (
    ConnectionSpecError,
    DeepseekV4HyperConnection,
    HyperHead,
    ManifoldHyperConnection,
    amax_gain,
    build,
    connection_class,
    validate_spec,
)

from .helpers import build_stack, mlp_branches, run_stack

v4 = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")
DeepseekV4Config = pytest.importorskip(
    "transformers.models.deepseek_v4.configuration_deepseek_v4"
).DeepseekV4Config

D = 16
FLAVOR = {"flavor": "deepseek-v4"}
# bf16 states: V4 rounds post and comb to bf16 and mixes in bf16, hyperfrac accumulates in
# float32 and rounds once, so the two differ by about one bf16 ulp (2^-8 relative); measured
# <= 4e-3 relative (norm) on outputs and on every gradient.
BF16_RTOL = 1e-2


def v4_config(n: int) -> DeepseekV4Config:
    return DeepseekV4Config(hidden_size=D, hc_mult=n, num_hidden_layers=1, vocab_size=32)


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Parameters far from any init: dynamic, asymmetric mixing (so a transposed comb shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.3 if name.endswith("fn") else 1.0
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if "scale" in name else 0.0))


def branch(x: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear block, deterministic across calls."""
    w = torch.linspace(-1.0, 1.0, D * D, dtype=torch.float32).reshape(D, D).to(x.dtype)
    return torch.tanh(x @ w)


def v4_around_block(hc: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """DeepseekV4DecoderLayer's use of a DeepseekV4HyperConnection around one block."""
    dtype = h.dtype
    post, comb, collapsed = hc(h)
    out = branch(collapsed)
    return post.to(dtype).unsqueeze(-1) * out.unsqueeze(-2) + torch.matmul(
        comb.to(dtype).transpose(-1, -2), h
    )


def pair(n: int, seed: int = 0):
    ref = v4.DeepseekV4HyperConnection(v4_config(n))
    randomise(ref, seed)
    ours = build("mhc", D, layer_idx=1, n_streams=n, **FLAVOR)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def grads(module, h, run):
    module.zero_grad()
    h = h.detach().clone().requires_grad_(True)
    out = run(h)
    weight = torch.linspace(-1.0, 2.0, out.numel()).reshape(out.shape)
    (out.float() * weight).sum().backward()
    named = {k: p.grad.clone() for k, p in module.named_parameters()}
    return out.detach(), h.grad, named


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_and_gradients_equal_transformers(n, dtype):
    ref, ours = pair(n)
    h = torch.randn(2, 5, n, D, generator=torch.Generator().manual_seed(3)).to(dtype)
    out_r, gh_r, g_r = grads(ref, h, lambda t: v4_around_block(ref, t))
    out_o, gh_o, g_o = grads(ours, h, lambda t: ours(t, branch))
    assert out_o.dtype == dtype and out_o.shape == h.shape
    tol = 1e-5 if dtype == torch.float32 else BF16_RTOL
    assert rel_err(out_o, out_r) < tol
    assert rel_err(gh_o, gh_r) < tol
    assert set(g_o) == set(g_r) == {"fn", "base", "scale"}
    for k in g_r:
        assert g_o[k].shape == g_r[k].shape
        assert rel_err(g_o[k], g_r[k]) < tol, k


@pytest.mark.parametrize("n", [3, 4])
def test_transposed_comb_would_be_caught(n):
    """The reference test distinguishes the orientation: comb h (not comb^T h) is far off.
    (Not for n = 2: a 2x2 doubly stochastic matrix is symmetric.)"""
    ref, ours = pair(n)
    h = torch.randn(3, n, D, generator=torch.Generator().manual_seed(4)).unsqueeze(0)
    post, comb, collapsed = ref(h)
    wrong = post.unsqueeze(-1) * branch(collapsed).unsqueeze(-2) + comb @ h
    assert rel_err(ours(h, branch).detach(), wrong.detach()) > 1e-2


@pytest.mark.parametrize("n", [2, 4])
def test_connection_matrix_is_v4_comb_in_hc_layout(n):
    """[[0, post], [pre, comb]]: A_r = comb, H_res = comb^T (rows of H_res sum to 1 - O(eps))."""
    ref, ours = pair(n)
    h = torch.randn(2, 3, n, D, generator=torch.Generator().manual_seed(5))
    post, comb, _ = ref(h)
    m = ours.connection_matrix(h).detach()  # (2, 3, n+1, n+1)
    torch.testing.assert_close(m[..., 1:, 1:], comb.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(m[..., 0, 1:], post.detach(), rtol=1e-5, atol=1e-7)
    forward = amax_gain([m])["single_forward"]
    torch.testing.assert_close(forward, torch.ones_like(forward), rtol=0, atol=1e-4)


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hyper_head_equals_transformers(n, dtype):
    ref = v4.DeepseekV4HyperHead(v4_config(n))
    randomise(ref, seed=7)
    ours = HyperHead(D, n_streams=n)
    ours.load_state_dict(ref.state_dict())
    h = torch.randn(2, 5, n, D, generator=torch.Generator().manual_seed(8)).to(dtype)
    out_r, gh_r, g_r = grads(ref, h, ref)
    out_o, gh_o, g_o = grads(ours, h, ours)
    assert out_o.dtype == dtype and out_o.shape == (2, 5, D)
    tol = 1e-5 if dtype == torch.float32 else BF16_RTOL
    assert rel_err(out_o, out_r) < tol
    assert rel_err(gh_o, gh_r) < tol
    assert set(g_o) == set(g_r) == {"hc_fn", "hc_base", "hc_scale"}
    for k in g_r:
        assert rel_err(g_o[k], g_r[k]) < tol, k


@pytest.mark.parametrize("n", [2, 4])
def test_state_dicts_load_both_ways(n):
    ref = v4.DeepseekV4HyperConnection(v4_config(n))
    ours = build("mhc", D, layer_idx=2, n_streams=n, **FLAVOR)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        "fn": ((2 + n) * n, n * D),
        "base": ((2 + n) * n,),
        "scale": (3,),
    }
    ref.load_state_dict(ours.state_dict())  # ours -> V4: V4 then computes our init
    h = ours.expand(torch.randn(2, 3, D, generator=torch.Generator().manual_seed(9)))
    torch.testing.assert_close(v4_around_block(ref, h), ours(h, branch), rtol=1e-6, atol=1e-6)
    randomise(ref, seed=10)
    ours.load_state_dict(ref.state_dict())  # V4 -> ours
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)

    head_ref, head = v4.DeepseekV4HyperHead(v4_config(n)), HyperHead(D, n_streams=n)
    head_ref.load_state_dict(head.state_dict())
    randomise(head_ref, seed=11)
    head.load_state_dict(head_ref.state_dict())
    assert all(torch.equal(head.state_dict()[k], v) for k, v in head_ref.state_dict().items())


def test_no_zero_dim_parameters():
    """FSDP2 shards every parameter along dim 0."""
    for module in (build("mhc", D, n_streams=4, **FLAVOR), HyperHead(D, n_streams=4)):
        assert all(p.dim() >= 1 for p in module.parameters())


def test_defaults_are_v4s():
    cfg = DeepseekV4Config()
    conn, head = build("mhc", D, **FLAVOR), HyperHead(D)
    assert conn.n_streams == head.n_streams == cfg.hc_mult
    assert conn.sinkhorn_iters == cfg.hc_sinkhorn_iters
    assert conn.eps == head.eps == cfg.hc_eps
    assert conn.norm_eps == head.norm_eps == cfg.rms_norm_eps


# ------------------------------------------------------------------- init near Pre-Norm
L = 8


@pytest.mark.parametrize("n", [1, 2, 4])
def test_init_is_near_prenorm(n):
    """The documented init: pre sums to 1, post = 1, comb doubly stochastic up to V4's eps.
    The stack equals Pre-Norm except the carried residual shrinks by ~eps per sublayer."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, D, dtype=torch.float64)
    branches = mlp_branches(L, D)
    ref = run_stack(build_stack("residual", D, L), branches, x)
    out = run_stack(build_stack("mhc", D, L, n_streams=n, **FLAVOR), branches, x)
    err = rel_err(out / n, ref)
    assert err < L * 2e-6  # measured 5.2e-6 for L = 8, n = 2 and 4 (eps = 1e-6)
    # with eps -> tiny the gap closes: it is V4's eps and nothing else
    tight = build_stack("mhc", D, L, n_streams=n, eps=1e-12, **FLAVOR)
    assert rel_err(run_stack(tight, branches, x) / n, ref) < 1e-10
    # the learned head starts as the mean of the streams: the Pre-Norm residual itself
    conns = build_stack("mhc", D, L, n_streams=n, **FLAVOR)
    h = conns[0].expand(x)
    for c, b in zip(conns, branches, strict=True):
        h = c(h, b)
    head = HyperHead(D, n_streams=n).double()
    assert rel_err(head(h), ref) < L * 2e-6


@pytest.mark.parametrize("n", [2, 4])
def test_init_coefficients(n):
    conn = build("mhc", D, layer_idx=5, n_streams=n, res_init_diag=0.8, **FLAVOR).double()
    pre, comb, post = conn.coefficients(None)
    assert pre.sum().item() == pytest.approx(1.0, abs=1e-7)  # base is float32
    assert pre[5 % n, 0].item() == pytest.approx(0.9, abs=1e-7)
    torch.testing.assert_close(post, torch.ones(n, dtype=torch.float64), rtol=0, atol=0)
    assert torch.diagonal(comb).sub(0.8).abs().max().item() < 1e-5
    for axis in (0, 1):
        assert (comb.sum(axis) - 1).abs().max().item() < 5 * n * conn.eps
    # identical streams at init, so the dynamic part starts at zero
    h = conn.expand(torch.randn(4, D, dtype=torch.float64))
    for a, b in zip(conn.coefficients(conn._flatten(h)[0]), (pre, comb, post), strict=True):
        torch.testing.assert_close(a, b.expand_as(a))


# ------------------------------------------------------------------------- registry
def test_flavor_selects_the_class_and_the_default_stays_the_paper():
    assert isinstance(build("mhc", D), ManifoldHyperConnection)
    assert isinstance(build("mhc", D, flavor="paper"), ManifoldHyperConnection)
    assert isinstance(build("mhc", D, **FLAVOR), DeepseekV4HyperConnection)
    assert connection_class("mhc") is ManifoldHyperConnection
    assert DeepseekV4HyperConnection.slot_option == "n_streams"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "mhc", "flavor": "v4"}, "flavor must be one of"),
        ({"kind": "mhc", **FLAVOR, "tanh": True}, "'tanh' does not apply to flavor 'deepseek-v4'"),
        ({"kind": "mhc", "norm_eps": 1e-5}, "'norm_eps' does not apply to flavor 'paper'"),
        ({"kind": "mhc", **FLAVOR, "norm_eps": 0}, "norm_eps must be a finite number > 0"),
    ],
)
def test_flavor_options_are_checked_without_building(spec, message):
    with pytest.raises(ConnectionSpecError, match=message):
        validate_spec(spec)
    options = dict(spec)
    with pytest.raises(ConnectionSpecError, match=message):
        build(options.pop("kind"), D, **options)


# ------------------------------------------------------ the shared interface applies
def test_layouts_recompute_and_overhead():
    """channel_first and recompute compute the same function and gradients; overhead counts
    fn, base and scale per module."""
    n = 4
    _, ours = pair(n)
    h = torch.randn(2, 3, n, D, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    ours = ours.double()
    out, gh, g = grads(ours, h, lambda t: ours(t, branch))

    recompute = build("mhc", D, layer_idx=1, n_streams=n, recompute=True, **FLAVOR).double()
    recompute.load_state_dict(ours.state_dict())
    out_r, gh_r, g_r = grads(recompute, h, lambda t: recompute(t, branch))
    torch.testing.assert_close(out_r, out)
    torch.testing.assert_close(gh_r, gh)
    for k in g:
        torch.testing.assert_close(g_r[k], g[k])

    cf = build("mhc", D, layer_idx=1, n_streams=n, channel_first=True, **FLAVOR).double()
    cf.load_state_dict(ours.state_dict())
    h_cf = h.permute(0, 2, 3, 1)  # (B, T, n, D) -> (B, n, D, T): T as the spatial axis
    out_cf = cf(h_cf, lambda x: branch(x.movedim(1, -1)).movedim(-1, 1))
    torch.testing.assert_close(out_cf.permute(0, 3, 1, 2), out.to(out_cf.dtype))

    from hyperfrac.connections import overhead

    per_module = (2 + n) * n * n * D + (2 + n) * n + 3
    counted = overhead("mhc", D, 3, n_streams=n, **FLAVOR)
    assert counted["params"] == 3 * per_module
    assert counted["flops_per_token"] > 0


def test_lm_accepts_the_flavour():
    """The model config passes ``flavor`` through the registry like any other option."""
    from hyperfrac.models.lm import LMConfig, TransformerLM

    cfg = LMConfig(
        vocab_size=32,
        dim=D,
        n_layers=1,
        n_heads=2,
        max_seq_len=8,
        connection={"kind": "mhc", "n_streams": 2, **FLAVOR},
    )
    model = TransformerLM(cfg)
    idx = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    model(idx, idx).loss.backward()
    conns = [m for m in model.modules() if isinstance(m, DeepseekV4HyperConnection)]
    assert len(conns) == 2 and all(c.fn.grad is not None for c in conns)
