"""Probes and diagnostics against direct computations on small hand-built stacks."""

import math

import pytest
import torch

from hyperfrac.analysis import ConnectionProbe, adjacent_cosine, band, connection_summary
from hyperfrac.bench.connections import OursStack, mlp_branch
from hyperfrac.connections import unfolded_connection_matrix


def _stack(kind, **opts):
    torch.manual_seed(0)
    branches = torch.nn.ModuleList(mlp_branch(16, 32) for _ in range(4))
    model = OursStack(branches, kind, 16, **opts)
    with torch.no_grad():
        for c in model.conns:
            for p in c.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return model


def test_probe_records_the_residual_stream_for_prenorm():
    model = _stack("residual")
    x = torch.randn(2, 6, 16)
    with ConnectionProbe(model) as probe:
        model(x)
    # direct: the layer input of a Pre-Norm net is the residual stream itself
    h, direct = x, []
    for b in model.branches:
        direct.append(h.reshape(-1, 16))
        h = h + b(h)
    assert len(probe.records) == 4
    for got, want in zip(probe.layer_inputs, direct, strict=True):
        torch.testing.assert_close(got, want)
    cos = adjacent_cosine(probe.layer_inputs)
    want = torch.nn.functional.cosine_similarity(direct[0], direct[1], dim=-1).double()
    torch.testing.assert_close(cos[0], want)
    # hooks are removed on exit
    model(x)
    assert len(probe.records) == 4


@pytest.mark.parametrize("kind,opts", [("dhc", {"n_streams": 4}), ("dfc", {"n_fracs": 2}),
                                       ("mhc", {"n_streams": 2})])
def test_probe_layer_inputs_are_the_branch_inputs(kind, opts):
    model = _stack(kind, **opts)
    seen = []
    for b in model.branches:
        b.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 16).clone()))
    x = torch.randn(2, 6, 16)
    with ConnectionProbe(model) as probe:
        model(x)
    for got, want in zip(probe.layer_inputs, seen, strict=True):
        torch.testing.assert_close(got, want)
    s = connection_summary(probe.matrices)
    direct = unfolded_connection_matrix(probe.matrices)["matrix"].mean(0)
    torch.testing.assert_close(s["unfolded"], direct)
    assert s["composite_forward"].shape == (4,)


def test_max_tokens_keeps_the_same_positions_in_every_layer():
    model = _stack("dhc", n_streams=2)
    with ConnectionProbe(model, max_tokens=5) as probe:
        model(torch.randn(3, 10, 16))
    assert all(r.layer_input.shape == (5, 16) for r in probe.records)
    assert all(r.matrix.shape == (5, 3, 3) for r in probe.records)


def test_band_is_median_and_quantiles():
    v = torch.arange(101, dtype=torch.float64).unsqueeze(0)
    b = band(v)
    assert b["median"] == [50.0] and math.isclose(b["low"][0], 5.0)
    assert math.isclose(b["high"][0], 95.0)


def test_probe_needs_connections():
    with pytest.raises(ValueError, match="no hyperfrac connection"):
        with ConnectionProbe(torch.nn.Linear(2, 2)):
            pass
