"""``hyperfrac bench profile``: the step split, the byte count and the floor on the tiny preset."""

import functools
import inspect

import pytest
import torch

from hyperfrac.bench import profile as prof
from hyperfrac.cli import main
from hyperfrac.connections import Connection


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("p") / "p.json"
    return prof.run_profile(preset="tiny", kinds="residual,dhc:2,dfc:2", batch_size=2,
                            seq_len=16, precision="fp32", steps=1, warmup=1, threads=1, out=out)


def test_residual_bytes_are_one_add_per_sublayer(result) -> None:
    res = result["rows"][0]
    from hyperfrac.models import build_preset

    dim = build_preset("tiny", connection={"kind": "residual"}).cfg.dim
    # h + out in fp32: two reads and one write of D floats per token and sublayer
    assert res["conn_bytes_per_token_layer"] == pytest.approx(3 * 4 * dim)
    assert res["floor_ratio"] == 1.0


def test_stream_kinds_cost_more_and_have_a_floor_below_one(result) -> None:
    res, dhc, dfc = result["rows"]
    for row in (dhc, dfc):
        assert row["conn_bytes_per_token_layer"] > res["conn_bytes_per_token_layer"]
        assert 0 < row["floor_ratio"] < 1
        assert row["conn_bwd"] > 0 and row["conn_fwd"] > 0  # backward nodes were found
        parts = sum(row[k] for k in ("conn_fwd", "conn_bwd", "branch_fwd", "branch_bwd",
                                     "optimizer"))
        assert parts == pytest.approx(row["step"], rel=1e-6)
        assert row["top_connection_ops"] and row["top_connection_ops"][0]["self_ms"] >= 0
    # HC carries n = 2 copies of the state, FC the state itself: HC moves more bytes
    assert dhc["conn_bytes_per_token_layer"] > dfc["conn_bytes_per_token_layer"]
    bw = result["bandwidth"]
    assert bw["copy_gbs"] > 0 and bw["triad_gbs"] > 0


def test_instrumenting_changes_nothing_and_is_undone() -> None:
    from hyperfrac.models import build_preset

    torch.manual_seed(0)
    model = build_preset("tiny", connection={"kind": "dhc", "n_streams": 2})
    x = torch.randint(0, model.cfg.vocab_size, (2, 8))
    ref = model(x, x).loss
    ref.backward()
    g_ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with prof.instrumented(model) as meter:
        loss = model(x, x).loss
        loss.backward()
    assert meter.fwd > 0 and meter.bwd > 0
    assert torch.equal(loss, ref)
    for p, g in zip(model.parameters(), g_ref, strict=True):
        assert torch.equal(p.grad, g)
    assert all("forward" not in vars(m) for m in model.modules() if isinstance(m, Connection))


def test_cli_maps_every_flag(monkeypatch, tmp_path) -> None:
    seen: dict = {}

    @functools.wraps(prof.run_profile)
    def fake(**kw):
        seen.update(kw)
        return {}

    monkeypatch.setattr(prof, "run_profile", fake)
    assert main(["bench", "profile", "--preset", "tiny", "--kinds", "dfc:2", "--batch-size", "3",
                 "--seq-len", "7", "--steps", "2", "--warmup", "0", "--precision", "fp32",
                 "--threads", "1", "--out", str(tmp_path / "x.json")]) == 0
    assert set(seen) == set(inspect.signature(prof.run_profile).parameters)
    assert seen["kinds"] == "dfc:2" and seen["steps"] == 2

