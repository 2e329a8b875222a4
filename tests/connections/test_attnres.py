"""Attention Residuals (attnres, arXiv 2603.15031): float64 references for full and block mode,
uniform weights at init (and what the network is there), block_size=1 == full, the unfolded
matrix equals the weights, state memory, errors, state dicts, compile, a tiny LM."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hyperfrac.bench.memory import saved_tensor_bytes
from hyperfrac.connections import (
    AttentionResidual,
    ConnectionSpecError,
    amax_gain,
    build,
    unfolded_connection_matrix,
    validate_spec,
)
from hyperfrac.models import KVCache, LMConfig, TransformerLM

from . import reference as ref
from .helpers import build_stack, mlp_branches, perturb, run_stack

D, L = 16, 6
X_SHAPE = (2, 5, D)


def _x(seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*X_SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _stack(n: int = L, dtype=torch.float64, **options) -> nn.ModuleList:
    return build_stack("attnres", D, n, dtype=dtype, **options)


def _sources(h: torch.Tensor) -> list[torch.Tensor]:
    return list(h.unbind(-2))


# ------------------------------------------------------------------- the maths
@pytest.mark.parametrize("block_size", [None, 1, 2, 3, 4])
def test_forward_and_gradients_match_the_float64_reference(block_size):
    conns, branches = _stack(block_size=block_size), mlp_branches(L, D, seed=1)
    perturb(conns)  # pseudo-queries off zero: non-uniform weights
    x = _x().requires_grad_()
    y = run_stack(conns, branches, x)
    args = ref.attnres_args(conns)
    if block_size is None:
        want, _ = ref.attnres_full(x, branches, **args)
    else:
        want, _ = ref.attnres_block(x, branches, **args, k=block_size)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype)
    names, params = zip(*[("x", x), *conns.named_parameters()], strict=True)
    got = torch.autograd.grad((y * r).sum(), params)
    exp = torch.autograd.grad((want * r).sum(), params)
    for name, g, e in zip(names, got, exp, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=name)
        # every parameter learns, except sublayer 0's read of its single source (alpha = 1)
        assert (g.abs().sum() > 0) == (name not in ("0.pseudo_query", "0.norm_weight")), name


def test_block_reference_with_k_1_is_the_full_reference():
    """The two float64 references agree with each other (k = 1 blocks are single outputs)."""
    conns, branches = _stack(), mlp_branches(L, D, seed=2)
    perturb(conns)
    x = _x(1)
    a, _ = ref.attnres_full(x, branches, **ref.attnres_args(conns))
    b, _ = ref.attnres_block(x, branches, **ref.attnres_args(conns), k=1)
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_block_size_1_equals_full_mode():
    full, blk = _stack(), _stack(block_size=1)
    perturb(full)
    blk.load_state_dict(full.state_dict())
    branches = mlp_branches(L, D, seed=3)
    x = _x(2).requires_grad_()
    y1, y2 = run_stack(full, branches, x), run_stack(blk, branches, x)
    assert torch.equal(y1, y2)
    g1 = torch.autograd.grad(y1.square().sum(), [x, *full.parameters()])
    g2 = torch.autograd.grad(y2.square().sum(), [x, *blk.parameters()])
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("block_size,slots", [(None, [1, 2, 3, 4, 5, 6, 7]),
                                              (2, [1, 2, 2, 3, 3, 4, 4]),
                                              (3, [1, 2, 2, 2, 3, 3, 3])])
def test_the_state_carries_the_sources(block_size, slots):
    """Full: one slot per output; block: the embedding, completed block sums, the partial."""
    conns, branches = _stack(block_size=block_size), mlp_branches(L, D, seed=4)
    x = _x(3)
    h = conns[0].expand(x)
    outputs, sizes = [], [h.shape[-2]]
    for c, f in zip(conns, branches, strict=True):
        assert c.n_sources == h.shape[-2]
        xin, _ = c.width_connection(h)
        outputs.append(f(xin))
        h = c(h, f)
        sizes.append(h.shape[-2])
    assert sizes == slots
    k = block_size or 1
    want = [x] + [sum(outputs[b:b + k]) for b in range(0, L, k)]
    for got, exp in zip(_sources(h), want, strict=True):
        torch.testing.assert_close(got, exp, rtol=1e-13, atol=1e-13)


# ------------------------------------------------------------------- init
@pytest.mark.parametrize("block_size", [None, 2])
def test_uniform_weights_at_init_inputs_are_the_mean_of_the_sources(block_size):
    conns, branches = _stack(block_size=block_size), mlp_branches(L, D, seed=5)
    h = conns[0].expand(_x(4))
    for c, f in zip(conns, branches, strict=True):
        s = h.shape[-2]
        alpha = c.attention_weights(h)
        assert torch.equal(alpha, torch.full_like(alpha, 1.0 / s))
        xin, _ = c.width_connection(h)
        torch.testing.assert_close(xin, h.sum(-2) / s, rtol=1e-13, atol=1e-13)  # not the sum
        h = c(h, f)
    final = conns[0].attention_weights(h, final=True)
    assert torch.equal(final, torch.full_like(final, 1.0 / h.shape[-2]))


@pytest.mark.parametrize("block_size", [None, 2, 3])
def test_network_at_init_is_prenorm_after_scale_invariant_norms(block_size):
    """AttnRes's state is not Pre-Norm's (a mean, not a sum), but with branches that begin
    with a norm (eps = 0) and a final norm, the function equals the Pre-Norm stack's."""
    torch.manual_seed(0)
    branches = mlp_branches(L, D, seed=6)
    for b in branches:
        b[0].eps = 0.0
    x = _x(5)
    y_att = run_stack(_stack(block_size=block_size), branches, x)
    y_res = run_stack(build_stack("residual", D, L), branches, x)
    assert not torch.allclose(y_att, y_res)  # the states differ ...
    torch.testing.assert_close(ref.rmsnorm(y_att, 0.0), ref.rmsnorm(y_res, 0.0),
                               rtol=1e-10, atol=1e-10)  # ... the normalised outputs do not


# ------------------------------------------------------- connection matrix, analyses
@pytest.mark.parametrize("block_size", [None, 2, 4])
def test_unfolded_connection_matrix_is_exactly_the_attention_weights(block_size):
    conns = _stack(block_size=block_size, n_sublayers=L)
    perturb(conns)
    branches = mlp_branches(L, D, seed=7)
    h = conns[0].expand(_x(6))
    mats, weights = [], []
    for c, f in zip(conns, branches, strict=True):
        mats.append(c.connection_matrix(h))
        weights.append(c.attention_weights(h))
        h = c(h, f)
    s_tot = 1 + math.ceil(L / (block_size or 1))
    assert mats[0].shape == (*X_SHAPE[:-1], s_tot + 1, s_tot + 1)
    u = unfolded_connection_matrix(mats)["matrix"][..., 0, 0]  # (..., L, L+1)
    k = block_size or 1
    for layer, alpha in enumerate(weights):
        for j in range(L + 1):
            slot = 0 if j == 0 else 1 + (j - 1) // k  # the slot holding output j
            want = alpha[..., slot] if j <= layer else torch.zeros_like(alpha[..., 0])
            torch.testing.assert_close(u[..., layer, j], want, rtol=1e-12, atol=1e-12)
    gains = amax_gain(mats)
    for v in gains.values():
        torch.testing.assert_close(v, torch.ones_like(v))


def test_probes_and_connection_summary_run_on_an_attnres_lm():
    from hyperfrac.analysis import ConnectionProbe
    from hyperfrac.analysis.metrics import connection_summary

    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2,
                   connection={"kind": "attnres", "block_size": 2, "n_sublayers": 4})
    model = TransformerLM(cfg)
    with ConnectionProbe(model) as probe:
        model(torch.randint(0, 64, (2, 6)))
    summary = connection_summary(probe.matrices)
    assert summary["unfolded"].shape == (4, 5, 1, 1)
    # uniform at init: sublayer 3 reads [x, block 1 (outputs 1, 2), partial (output 3)]
    torch.testing.assert_close(summary["unfolded"][3, :4, 0, 0],
                               torch.full((4,), 1 / 3, dtype=torch.float64))


# ------------------------------------------------------------------- memory
@pytest.mark.parametrize("block_size,slots", [(None, 7), (2, 4), (3, 3)])
def test_state_memory_of_a_small_lm(block_size, slots):
    """The state reduce() reads: (B, T, 1 + L, D) full, (B, T, 1 + ceil(L/k), D) block."""
    torch.manual_seed(0)
    B, T, dim, n_layers = 2, 8, 32, 3  # L = 6 sublayers
    cfg = LMConfig(vocab_size=64, dim=dim, n_layers=n_layers, n_heads=2,
                   connection={"kind": "attnres", "block_size": block_size})
    model = TransformerLM(cfg)
    conn, seen = model.streams, []
    reduce = conn.reduce
    conn.reduce = lambda h: (seen.append(h), reduce(h))[1]
    model(torch.randint(0, 64, (B, T)))
    (h,) = seen
    assert h.shape == (B, T, slots, dim)
    assert h.numel() * h.element_size() == B * T * slots * dim * 4


def test_saved_activations_of_the_mixing_grow_with_the_sources():
    """Autograd keeps each sublayer's input state: sum_l S_l * N * D floats (full:
    O(L^2 D)), block mode fewer; branches that save nothing isolate the connections."""
    n, N = 12, 2 * 5
    x = _x(7, torch.float32).requires_grad_()
    out = {}
    for k in (None, 4):
        conns = _stack(n, torch.float32, block_size=k)

        def fn(conns=conns):
            h = conns[0].expand(x)
            for c in conns:
                h = c(h, lambda t: t * 2.0)
            return conns[0].reduce(h)

        out[k] = saved_tensor_bytes(fn, exclude=[x, *conns.parameters()])
        sources = [conns[0].sources_at(i) for i in range(n + 1)]  # n reads + the final read
        state_bytes = sum(sources) * N * D * 4
        assert state_bytes <= out[k] <= 1.5 * state_bytes
    assert out[4] < out[None] / 2


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", [-1, 1.5, True, "2", [2]])
def test_bad_block_size_is_refused(bad):
    with pytest.raises(ConnectionSpecError, match="attnres: block_size must be an integer >= 1"):
        validate_spec({"kind": "attnres", "block_size": bad})
    with pytest.raises(ConnectionSpecError, match="block_size must be"):
        build("attnres", D, block_size=bad)


def test_block_size_none_and_zero_mean_full():
    assert validate_spec({"kind": "attnres", "block_size": 0})["block_size"] is None
    assert validate_spec({"kind": "attnres", "block_size": None})["block_size"] is None
    assert build("attnres", D, block_size=0).block_size is None
    with pytest.raises(ConnectionSpecError, match="n_sublayers must be an integer >= 1"):
        validate_spec({"kind": "attnres", "n_sublayers": 0})


def test_clear_errors():
    with pytest.raises(ValueError, match="layer_idx=4 but n_sublayers=4; layer_idx counts"):
        build("attnres", D, layer_idx=4, n_sublayers=4)
    conns = _stack(3, torch.float32)
    h = conns[0].expand(torch.randn(2, D))
    with pytest.raises(ValueError, match="layer_idx=2 expects a state of 3 sources .* got 1"):
        conns[2](h, nn.Identity())
    with pytest.raises(ValueError, match=r"expected \(\.\.\., S, D\) with D=16; did you call"):
        conns[0](torch.randn(2, 1, D // 2), nn.Identity())
    h = conns[0](h, nn.Identity())
    with pytest.raises(RuntimeError, match="reduce\\(\\) is the final read, owned by the "
                                           "layer_idx=0 connection"):
        conns[1].reduce(h)
    with pytest.raises(ValueError, match="connection_matrix needs the model's sublayer count"):
        conns[1].connection_matrix(h)
    with pytest.raises(ValueError, match="pass the stream state h"):
        conns[1].connection_matrix()
    with_l = build("attnres", D, n_sublayers=3)
    with pytest.raises(ValueError, match="expects a state of 4 sources"):  # reduce checks L
        with_l.reduce(h)


# ------------------------------------------------------------------- module facts
def test_parameters_accounting_and_optimizer_groups():
    first, other = build("attnres", D), build("attnres", D, layer_idx=3)
    assert {n: tuple(p.shape) for n, p in first.named_parameters()} == {
        "pseudo_query": (D,), "norm_weight": (D,), "final_query": (D,),
        "final_norm_weight": (D,)}
    assert {n for n, _ in other.named_parameters()} == {"pseudo_query", "norm_weight"}
    assert build("attnres", D, layer_idx=3, norm_affine=False).extra_params() == D
    for c in (first, other):
        assert all(p.dim() == 1 for p in c.parameters())  # FSDP2: no 0-d parameters
        assert list(c.decay_parameters()) == []
        assert len(list(c.no_decay_parameters())) == len(list(c.parameters()))
        assert c.slot_option is None and c.uses_prenorm and c.output_scale == 1.0
    # reads: D + 6 S D + 5 S; sublayer 3 of full mode reads 4 sources; block k=2 adds its add
    assert other.flops_per_token() == D + 6 * 4 * D + 5 * 4
    blk = build("attnres", D, layer_idx=3, block_size=2)
    assert blk.flops_per_token() == D + 6 * 3 * D + 5 * 3 + D
    # layer 0 counts the final read once L is known (1 + 6 sources)
    assert build("attnres", D, n_sublayers=6).flops_per_token() == (D + 6 * D + 5) + (
        D + 6 * 7 * D + 5 * 7)


@pytest.mark.parametrize("block_size", [None, 2])
def test_state_dict_round_trip(block_size):
    a, b = _stack(block_size=block_size), _stack(block_size=block_size)
    perturb(a)
    sd = a.state_dict()
    assert set(sd) == {f"{i}.{n}" for i in range(L) for n in ("pseudo_query", "norm_weight")} | {
        "0.final_query", "0.final_norm_weight"}
    b.load_state_dict(sd)
    branches, x = mlp_branches(L, D, seed=8), _x(8)
    assert torch.equal(run_stack(a, branches, x), run_stack(b, branches, x))


def test_channel_first_equals_channel_last():
    last, first = _stack(3), _stack(3, channel_first=True)
    perturb(last)
    first.load_state_dict(last.state_dict())
    branches = mlp_branches(3, D, seed=9)
    x = torch.randn(2, 3, 4, D, dtype=torch.float64)  # (B, H, W, C)

    def cf(f):
        return lambda t: f(t.movedim(1, -1)).movedim(-1, 1)

    y = run_stack(first, [cf(f) for f in branches], x.movedim(-1, 1))  # (B, C, H, W)
    torch.testing.assert_close(y.movedim(1, -1), run_stack(last, branches, x),
                               rtol=1e-13, atol=1e-13)


def test_bf16_states_stay_bf16_and_weights_sum_to_one():
    conns = _stack(4, torch.bfloat16, block_size=2)
    perturb(conns)
    h = conns[0].expand(torch.randn(3, 7, D, dtype=torch.bfloat16))
    for c in conns:
        alpha = c.attention_weights(h)
        assert alpha.dtype == torch.float32
        torch.testing.assert_close(alpha.sum(-1), torch.ones_like(alpha[..., 0]))
        h = c(h, nn.Linear(D, D, dtype=torch.bfloat16))
        assert h.dtype == torch.bfloat16
    assert conns[0].reduce(h).dtype == torch.bfloat16


def test_compiled_call_equals_eager():
    conns = _stack(4, torch.float32, block_size=2)
    perturb(conns)
    branch = nn.Linear(D, D)
    h = conns[0].expand(torch.randn(2, 5, D))
    for c in conns[:3]:
        h = c(h, branch)
    conn = conns[3]
    compiled = torch.compile(lambda s: conns[0].reduce(conn(s, branch)), fullgraph=True)
    torch.testing.assert_close(compiled(h), conns[0].reduce(conn(h, branch)),
                               rtol=1e-6, atol=1e-6)  # about 5 s on 2 CPU cores


# ------------------------------------------------------------------- the LM
@pytest.mark.parametrize("spec", [{"kind": "attnres"}, {"kind": "attnres", "block_size": 2}],
                         ids=["full", "block2"])
def test_tiny_lm_trains(spec):
    torch.manual_seed(0)
    model = TransformerLM(LMConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2,
                                   connection=spec))
    idx = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(idx[:, :-1], idx[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.1
    qs = [b.ffn_conn.pseudo_query for b in model.blocks]
    assert all(q.abs().sum() > 0 for q in qs)  # the pseudo-queries learn
    assert isinstance(model.streams, AttentionResidual)


def test_lm_at_init_computes_the_prenorm_lm_up_to_norm_eps():
    """Same weights, float64, norm eps ~ 0: the attnres LM's logits are the Pre-Norm LM's."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=64, dim=32, n_layers=3, n_heads=2, norm_eps=1e-30)
    res = TransformerLM(LMConfig(**cfg)).double()
    att = TransformerLM(LMConfig(**cfg, connection={"kind": "attnres", "block_size": 2})).double()
    missing, unexpected = att.load_state_dict(res.state_dict(), strict=False)
    assert not unexpected and all("_conn." in k for k in missing)
    idx = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(att(idx).logits, res(idx).logits, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("block_size", [None, 2])
def test_lm_cached_decoding_equals_the_full_forward(block_size):
    """The sources are per token, so the KV-cache path needs nothing special."""
    torch.manual_seed(0)
    model = TransformerLM(LMConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2,
                                   connection={"kind": "attnres", "block_size": block_size}))
    for b in model.blocks:
        perturb(b.attn_conn, 0.3)
        perturb(b.ffn_conn, 0.3)
    idx = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx).logits
        cache = KVCache()
        parts = [model(idx[:, :6], cache=cache).logits]
        parts += [model(idx[:, t:t + 1], cache=cache).logits for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("b", [None, 2])
def test_collapse_is_the_sum_of_the_sources_at_any_depth(b):
    """``collapse`` (used for output_hidden_states) works on intermediate states, where the
    final read refuses: it returns Pre-Norm's residual stream, the sum of the sources."""
    torch.manual_seed(0)
    conns = [build("attnres", 8, layer_idx=i, n_sublayers=4, block_size=b) for i in range(4)]
    h = conns[0].expand(torch.randn(2, 3, 8))
    total = h.squeeze(-2).clone()
    for c in conns[:3]:
        lin = nn.Linear(8, 8)
        out = []
        h = c(h, lambda x, lin=lin, out=out: out.append(lin(x)) or out[-1])
        total = total + out[-1]
        torch.testing.assert_close(conns[0].collapse(h), total)
    if b is None:  # 4 of the 5 slots filled
        with pytest.raises(ValueError, match="expects a state of 5 sources"):
            conns[0].reduce(h)


def test_lm_hidden_states_with_attnres():
    model = TransformerLM(LMConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=16,
                                   connection={"kind": "attnres", "block_size": 2}))
    idx = torch.randint(0, 64, (2, 8))
    out = model(idx, output_hidden_states=True)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.hidden_states[0], model.embed(idx))
    torch.testing.assert_close(out.logits, model(idx).logits)
