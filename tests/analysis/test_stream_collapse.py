"""Stream-collapse diagnostic (arXiv 2606.03483): the share of the stream state's energy in its
largest stream, on constructed states and through ``probe_model``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hyperfrac.analysis.analyze import probe_model
from hyperfrac.analysis.metrics import stream_energy_max_share
from hyperfrac.connections import build


@pytest.mark.parametrize("n", [2, 4])
def test_balanced_state_gives_one_over_n_and_one_stream_gives_one(n):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8)
    balanced = x.unsqueeze(-2).expand(3, 5, n, 8)  # n identical streams
    torch.testing.assert_close(stream_energy_max_share(balanced),
                               torch.full((3, 5), 1.0 / n, dtype=torch.float64))
    one = torch.zeros(3, 5, n, 8)
    one[..., n - 1, :] = x
    torch.testing.assert_close(stream_energy_max_share(one), torch.ones(3, 5, dtype=torch.float64))
    # equal energy, different directions: still balanced
    signs = torch.tensor([(-1.0) ** s for s in range(n)]).view(n, 1)
    torch.testing.assert_close(stream_energy_max_share(balanced * signs),
                               torch.full((3, 5), 1.0 / n, dtype=torch.float64))


def test_hand_computed_share_zero_tokens_and_channel_first():
    h = torch.tensor([[[3.0, 0.0], [0.0, 1.0]],  # energies 9, 1 -> 0.9
                      [[0.0, 0.0], [0.0, 0.0]]])  # all zero -> balanced, 1/2
    torch.testing.assert_close(stream_energy_max_share(h),
                               torch.tensor([0.9, 0.5], dtype=torch.float64))
    torch.manual_seed(1)
    seq = torch.randn(2, 6, 3, 4)  # (B, P, n, C)
    maps = seq.permute(0, 2, 3, 1).reshape(2, 3, 4, 2, 3)  # (B, n, C, H, W), P = H*W
    got = stream_energy_max_share(maps, channel_first=True)  # (B, H, W)
    torch.testing.assert_close(got.reshape(2, 6), stream_energy_max_share(seq))


class _Stack(nn.Module):
    def __init__(self, kind, dim, n_layers, **opts):
        super().__init__()
        self.conns = nn.ModuleList(build(kind, dim, layer_idx=i, **opts)
                                   for i in range(n_layers))
        self.branch = nn.Linear(dim, dim)

    def forward(self, x):
        h = self.conns[0].expand(x)
        for c in self.conns:
            h = c(h, self.branch)
        return self.conns[0].reduce(h)


def test_probe_model_reports_one_value_per_sublayer():
    torch.manual_seed(0)
    model = _Stack("dhc", 8, 3, n_streams=4)
    res = probe_model(model, torch.randn(2, 5, 8), max_tokens=None)
    shares = res["stream_energy_max_share"]
    assert len(shares) == 3
    assert math.isclose(shares[0], 0.25, rel_tol=1e-12)  # expand: n equal copies
    # HC at init (A_r = I, B = 1): every stream gets the same update, so still balanced
    assert all(math.isclose(s, 0.25, rel_tol=1e-9) for s in shares)
    assert math.isclose(res["stream_energy_max_share_final"], 0.25, rel_tol=1e-9)
    # collapse by hand: B = e_0 (only stream 0 receives outputs), A_r = 0 off stream 0
    with torch.no_grad():
        for c in model.conns:
            c.static_beta.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
            c.static_alpha[:, 1:] = torch.diag(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    res = probe_model(model, torch.randn(2, 5, 8), max_tokens=None)
    assert math.isclose(res["stream_energy_max_share"][0], 0.25, rel_tol=1e-12)
    assert all(math.isclose(s, 1.0, rel_tol=1e-9) for s in res["stream_energy_max_share"][1:])
    assert math.isclose(res["stream_energy_max_share_final"], 1.0, rel_tol=1e-9)


def test_non_stream_kinds_have_no_value():
    model = _Stack("dfc", 8, 2, n_fracs=2)
    res = probe_model(model, torch.randn(1, 4, 8), max_tokens=None)
    assert res["stream_energy_max_share"] is None
    assert res["stream_energy_max_share_final"] is None


def test_compare_report_shows_a_collapse_row_per_stream_arm():
    from hyperfrac.compare.report import _stream_shares, mean_se
    from hyperfrac.compare.tables import collapse_table

    probe = {"stream_energy_max_share": [0.25, 0.5, 0.75], "stream_energy_max_share_final": 0.9,
             "unfolded_per_stream": [[0.0]] * 4}
    flat = _stream_shares(probe)
    assert flat == {"stream_share_mean": 0.5, "stream_share_max": 0.75,
                    "stream_share_final": 0.9, "stream_share_balanced": 0.25}
    none = _stream_shares({"stream_energy_max_share": None, "unfolded_per_stream": [[0.0]]})
    assert set(none.values()) == {None}
    assert _stream_shares({}) == none  # analyses written before the diagnostic

    def arm(name, flats):
        return {"name": name, "label": name,
                "stats": {k: mean_se([f[k] for f in flats]) for k in flats[0]}}

    results = {"arms": [arm("residual", [none]), arm("mhc4", [flat, {**flat,
                                                                     "stream_share_mean": 0.7}])]}
    table = collapse_table(results)
    assert table["rows"] == [["mhc4", "0.250", "0.600", "0.750", "0.900"]]
    assert collapse_table({"arms": [arm("residual", [none])]}) is None
