"""``hyperfrac bench train`` logic on the tiny preset."""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path

import pytest

from hyperfrac.cli import main
from hyperfrac.connections import ConnectionSpecError
from hyperfrac.train import bench
from hyperfrac.train.bench import parse_kind, run_train_bench


def test_train_bench_writes_ratios(tmp_path: Path, capsys) -> None:
    result = run_train_bench(
        preset="tiny", kinds="residual,dhc:4", rounds=2, steps=1, warmup=1, batch_size=2,
        seq_len=32, out=tmp_path / "t.json", threads=1,
    )
    assert json.loads((tmp_path / "t.json").read_text()) == result
    res, dhc = result["rows"]
    assert res["kind"] == "residual" and res["speed_ratio"] == 1.0 and dhc["kind"] == "DHC×4"
    assert len(dhc["tok_per_s_rounds"]) == 2 and dhc["tok_per_s"] > 0
    assert 0 <= dhc["clean_rounds"] <= 2 and len(dhc["other_cpu_share_rounds"]) == 2
    # the ratio is paired within each round, not a ratio of medians
    pairs = zip(dhc["tok_per_s_rounds"], res["tok_per_s_rounds"], strict=True)
    per_round = [a / b for a, b in pairs]
    assert dhc["speed_ratio_rounds"] == pytest.approx(per_round)
    assert dhc["speed_ratio_min"] <= dhc["speed_ratio"] <= dhc["speed_ratio_max"]
    if dhc["clean_rounds"] in (0, 2):  # every round used
        assert dhc["speed_ratio"] == pytest.approx(sum(per_round) / 2)
    # four streams of width D are saved per sublayer: more activation memory than residual
    assert dhc["saved_mb"] > 1.2 * res["saved_mb"]
    assert res["peak_mb"] > 0
    # the step's live tensors: four streams of width D cost more than one
    assert dhc["peak_live_mb"] > res["peak_live_mb"] > 0
    assert dhc["peak_live_ratio"] == pytest.approx(dhc["peak_live_mb"] / res["peak_live_mb"])
    assert 0.0 <= result["max_other_cpu_share"] <= 1.0
    assert "residual" in capsys.readouterr().out


def test_cli_maps_every_flag_onto_the_keyword_arguments(monkeypatch, tmp_path: Path) -> None:
    seen: dict = {}

    @functools.wraps(run_train_bench)  # same signature: the parser takes its defaults from it
    def fake(**kw):
        seen.update(kw)
        return {}

    monkeypatch.setattr(bench, "run_train_bench", fake)
    rc = main(["bench", "train", "--preset", "tiny", "--kinds", "dfc:2", "--batch-size", "3",
               "--seq-len", "7", "--steps", "4", "--rounds", "5", "--warmup", "0",
               "--precision", "fp32", "--compile", "--threads", "1", "--device", "cpu",
               "--no-memory", "--fp32-state", "--kernels", "compiled",
               "--out", str(tmp_path / "x.json")])
    assert rc == 0
    assert seen == dict(preset="tiny", kinds="dfc:2", batch_size=3, seq_len=7, steps=4, rounds=5,
                        warmup=0, precision="fp32", compile=True, threads=1, device="cpu",
                        memory=False, fp32_state=True, kernels="compiled",
                        out=str(tmp_path / "x.json"))
    assert set(seen) == set(inspect.signature(run_train_bench).parameters)


def test_train_bench_with_compiled_kernels(tmp_path: Path) -> None:
    """``--kernels compiled``: the connection kernels run fused (recorded in the JSON); a
    bad backend name is refused before anything runs."""
    result = run_train_bench(
        preset="tiny", kinds="residual,dfc:2", rounds=1, steps=1, warmup=1, batch_size=2,
        seq_len=16, out=tmp_path / "t.json", threads=1, memory=False, kernels="compiled",
    )
    assert result["kernels"] == "compiled" and result["rows"][1]["tok_per_s"] > 0
    with pytest.raises(ValueError, match="kernels='triton'; expected one of eager, compiled"):
        run_train_bench(preset="tiny", kinds="residual", kernels="triton", out=tmp_path / "u")


def test_parse_kind() -> None:
    assert parse_kind("dfc:4") == {"kind": "dfc", "n_fracs": 4}
    assert parse_kind("mhc:2") == {"kind": "mhc", "n_streams": 2}
    assert parse_kind("residual") == {"kind": "residual"}
    rc = parse_kind("dfc:4+recompute+norm_type=layernorm")
    assert rc == {"kind": "dfc", "n_fracs": 4, "recompute": True, "norm_type": "layernorm"}
    assert bench.label(rc) == "DFC×4+recompute+norm_type=layernorm"
    assert bench.label(parse_kind("mhc:4+sinkhorn_iters=10")) == "MHC×4+sinkhorn_iters=10"


@pytest.mark.parametrize("spec,message", [
    ("residual:4", "kind 'residual' has no slot count"),
    ("dhc:x", "'x' is not a slot count"),
    ("dhc:0", "n_streams must be an integer >= 1"),
    ("dhx:4", "did you mean 'dhc'"),
    ("dfc:4+", "empty option after"),
    ("dfc:4+recompue", "did you mean 'recompute'"),
])
def test_parse_kind_refuses_bad_specs(spec: str, message: str) -> None:
    with pytest.raises((ValueError, ConnectionSpecError), match=message):
        parse_kind(spec)


def test_counts_are_checked_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        run_train_bench(preset="tiny", kinds="residual", batch_size=0, out=tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()
