"""The report's diagnostics against direct computations on small hand-built stacks."""

from __future__ import annotations

import math

import torch
from torch import nn

from hyperfrac.analysis import ConnectionProbe
from hyperfrac.analysis.analyze import gradient_norms, probe_model, sublayer_groups
from hyperfrac.analysis.metrics import final_output_weights
from hyperfrac.connections import build, unfolded_connection_matrix


class Const(nn.Module):
    """A branch that ignores its input and returns a fixed vector (broadcast over tokens)."""

    def __init__(self, v):
        super().__init__()
        self.register_buffer("v", torch.tensor(v, dtype=torch.float32))

    def forward(self, x):
        return self.v.expand_as(x)


class Stack(nn.Module):
    """expand -> connection(branch) per layer -> reduce."""

    def __init__(self, branches, kind, dim, **opts):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.conns = nn.ModuleList(build(kind, dim, layer_idx=i, **opts)
                                   for i in range(len(branches)))

    def forward(self, x):
        h = self.conns[0].expand(x)
        for c, b in zip(self.conns, self.branches, strict=True):
            h = c(h, b)
        return self.conns[0].reduce(h)


def test_cosine_band_matches_hand_computation():
    # Pre-Norm residual, D = 2: token t has embedding (t, 0); branches add (0, 1) then (-1, 0).
    # Layer inputs: (t, 0), (t, 1), (t - 1, 1).
    model = Stack([Const([0.0, 1.0]), Const([-1.0, 0.0]), Const([0.0, 0.0])], "residual", 2)
    ts = torch.arange(1, 41, dtype=torch.float32)
    x = torch.stack([ts, torch.zeros_like(ts)], -1).view(1, 40, 2)  # (B=1, T=40, D=2)
    res = probe_model(model, x, max_tokens=None)
    c01 = [t / math.sqrt(t * t + 1) for t in ts.tolist()]
    c12 = [(t * (t - 1) + 1) / math.sqrt((t * t + 1) * ((t - 1) ** 2 + 1)) for t in ts.tolist()]
    for k, direct in enumerate([c01, c12]):
        d = torch.tensor(direct, dtype=torch.float64)
        lo, med, hi = torch.quantile(d, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
        assert math.isclose(res["cosine"]["median"][k], float(med), rel_tol=1e-6)
        assert math.isclose(res["cosine"]["low"][k], float(lo), rel_tol=1e-6)
        assert math.isclose(res["cosine"]["high"][k], float(hi), rel_tol=1e-6)
        assert math.isclose(res["cosine"]["mean"][k], float(d.mean()), rel_tol=1e-6)
    # Pre-Norm unfolded matrix: lower triangle of ones (HC Fig. 7, first panel)
    u = torch.tensor(res["unfolded"])[..., 0, 0]  # (L, L+1)
    torch.testing.assert_close(u, torch.tril(torch.ones(3, 4)), check_dtype=False)


def test_amax_gain_of_hand_set_static_hc():
    model = Stack([Const([0.0, 0.0]), Const([0.0, 0.0])], "hc", 2, n_streams=2)
    with torch.no_grad():
        model.conns[0].static_alpha[:, 1:] = torch.tensor([[1.0, 0.5], [-0.25, 1.0]])  # A_r
        model.conns[1].static_alpha[:, 1:] = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    res = probe_model(model, torch.randn(1, 3, 2))
    # H_res = A_r^T: H1 = [[1, -.25], [.5, 1]], H2 = [[2, 0], [1, 1]],
    # H2 H1 = [[2, -.5], [1.5, .75]]
    g = res["amax"]
    assert g["single_forward"] == [1.5, 2.0]
    assert g["single_backward"] == [1.5, 3.0]
    assert g["composite_forward"] == [1.5, 2.5]
    assert g["composite_backward"] == [1.5, 3.5]


def _perturbed(kind, **opts):
    torch.manual_seed(0)
    branches = [nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(3)]
    model = Stack(branches, kind, 8, **opts)
    with torch.no_grad():
        for p in model.conns.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def _reconstruct(kind, **opts):
    """Per-token unfolded weights rebuild every layer input from the embedding and the
    recorded branch outputs (HC Eq. 27): x_k = sum_j c_kj o_j."""
    model = _perturbed(kind, **opts)
    outs = []
    for b in model.branches:
        b.register_forward_hook(lambda m, a, o: outs.append(o.reshape(-1, 8).double()))
    x = torch.randn(2, 5, 8)
    with ConnectionProbe(model, max_tokens=None) as probe:
        y = model(x)
    c = unfolded_connection_matrix(probe.matrices)["matrix"]  # (N, L, L+1, R, R)
    R = c.shape[-1]
    sources = torch.stack([x.reshape(-1, 8).double()] + outs, 1)  # (N, L+1, D)
    sources = sources.view(sources.shape[0], sources.shape[1], R, 8 // R)  # (N, L+1, R, D/R)
    for k, got in enumerate(probe.layer_inputs):
        want = torch.einsum("njab,njbd->nad", c[:, k], sources).reshape(-1, 8)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    # the final row rebuilds the model's output after the connection's reduce
    f = final_output_weights(probe.matrices)
    want = torch.einsum("njab,njbd->nad", f["matrix"], sources).reshape(-1, 8)
    torch.testing.assert_close(y.reshape(-1, 8).double(), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f["per_stream"].sum(-4), f["matrix"])
    # and the token-averaged matrix of the report is the mean of these
    res = probe_model(model, x, max_tokens=None)
    torch.testing.assert_close(torch.tensor(res["unfolded_final"], dtype=torch.float64),
                               f["matrix"].mean(0))
    torch.testing.assert_close(torch.tensor(res["unfolded"], dtype=torch.float64), c.mean(0))
    per = torch.tensor(res["unfolded_per_stream"], dtype=torch.float64)
    torch.testing.assert_close(per.sum(0), c.mean(0))


def test_unfolded_matrix_rebuilds_layer_inputs_dhc():
    _reconstruct("dhc", n_streams=3)


def test_unfolded_matrix_rebuilds_layer_inputs_dfc():
    _reconstruct("dfc", n_fracs=2)


def test_unfolded_matrix_rebuilds_layer_inputs_mhc():
    _reconstruct("mhc", n_streams=2)


def test_gradient_norms_per_sublayer_match_direct():
    from hyperfrac.models import LMConfig, TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(LMConfig(vocab_size=64, dim=16, n_layers=2, n_heads=2,
                                   connection={"kind": "dhc", "n_streams": 2}))
    x = torch.randint(0, 64, (2, 8))
    y = torch.randint(0, 64, (2, 8))
    g = gradient_norms(model, x, y)
    assert g["names"] == ["0.attn", "0.ffn", "1.attn", "1.ffn"]
    assert all(p.grad is None for p in model.parameters())  # left clean
    model(x, y).loss.backward()
    b = model.blocks[1]
    params = [*b.ffn.parameters(), *b.ffn_norm.parameters(), *b.ffn_conn.parameters()]
    direct = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params))
    assert math.isclose(g["sublayer"][3], direct, rel_tol=1e-5)
    groups = dict(sublayer_groups(model))
    assert {id(p) for p in groups["1.ffn"]} == {id(p) for p in params}


def test_final_output_row_at_the_pre_norm_equivalent_init():
    # Pre-Norm: the output is the sum of the embedding and every branch output (ones);
    # HC×n at init: n identical streams summed, so n; FC at init: identity fraction blocks
    for kind, opts, want in (("residual", {}, torch.ones(4, 1, 1)),
                             ("dhc", {"n_streams": 3}, torch.full((4, 1, 1), 3.0)),
                             ("dfc", {"n_fracs": 2}, torch.eye(2).expand(4, 2, 2))):
        model = Stack([Const([0.0] * 4) for _ in range(3)], kind, 4, **opts)
        res = probe_model(model, torch.randn(1, 6, 4), max_tokens=None)
        torch.testing.assert_close(torch.tensor(res["unfolded_final"]), want,
                                   check_dtype=False)


def test_window_sums_match_evaluate_lm(tiny_dataset):
    import numpy as np

    from hyperfrac.analysis.analyze import window_sums
    from hyperfrac.data.prepare import open_tokens
    from hyperfrac.eval.lm import evaluate_lm
    from hyperfrac.models import LMConfig, TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(LMConfig(vocab_size=512, dim=16, n_layers=1, n_heads=2))
    tokens = open_tokens(tiny_dataset, "val")
    tb = np.load(tiny_dataset / "token_bytes.npy")
    kw = dict(seq_len=16, batch_size=4, max_batches=3, precision="fp32")
    ref = evaluate_lm(model, tokens, tb, device="cpu", **kw)
    got = window_sums(model, tokens, tb, device=torch.device("cpu"), **kw)
    assert got["tokens"] == ref["tokens"] and got["bytes"] == ref["bytes"]
    assert math.isclose(got["loss"], ref["loss"], rel_tol=1e-6)
    assert math.isclose(got["bpb"], ref["bpb"], rel_tol=1e-6)
    w = got["windows"]
    assert len(w["nll"]) == 12 and sum(w["tokens"]) == ref["tokens"]
    assert math.isclose(sum(w["nll"]) / sum(w["tokens"]), ref["loss"], rel_tol=1e-6)


def test_training_seconds_from_the_log():
    from hyperfrac.analysis.analyze import curve_seconds, training_seconds

    train = [{"tokens": 100, "tok_per_s": 50.0}, {"tokens": 300, "tok_per_s": 100.0}]
    assert training_seconds(train) == [2.0, 4.0]
    assert training_seconds([{"tokens": 100}]) is None
    curves = {"train": {"tokens": [100, 300], "seconds": [2.0, 4.0]},
              "val": {"tokens": [50, 200, 300]}}
    assert curve_seconds(curves) == [1.0, 3.0, 4.0]
