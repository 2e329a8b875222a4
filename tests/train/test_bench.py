"""``hyperfrac bench train`` logic on the tiny preset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hyperfrac.train.bench import add_arguments, parse_kind, run_train_bench


def test_train_bench_writes_ratios(tmp_path: Path, capsys) -> None:
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(
        [
            "--preset",
            "tiny",
            "--kinds",
            "residual,dhc:4",
            "--rounds",
            "2",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--batch-size",
            "2",
            "--seq-len",
            "32",
            "--out",
            str(tmp_path / "t.json"),
            "--threads",
            "1",
        ]
    )
    result = run_train_bench(args)
    assert json.loads((tmp_path / "t.json").read_text()) == result
    res, dhc = result["rows"]
    assert res["kind"] == "residual" and res["speed_ratio"] == 1.0 and dhc["kind"] == "DHC×4"
    assert len(dhc["tok_per_s_rounds"]) == 2 and dhc["tok_per_s"] > 0
    assert 0 <= dhc["clean_rounds"] <= 2 and len(dhc["other_cpu_share_rounds"]) == 2
    # four streams of width D are saved per sublayer: more activation memory than residual
    assert dhc["saved_mb"] > 1.2 * res["saved_mb"]
    assert res["peak_mb"] > 0
    assert 0.0 <= result["max_other_cpu_share"] <= 1.0
    assert "residual" in capsys.readouterr().out


def test_parse_kind() -> None:
    assert parse_kind("dfc:4") == {"kind": "dfc", "n_fracs": 4}
    assert parse_kind("mhc:2") == {"kind": "mhc", "n_streams": 2}
    assert parse_kind("residual") == {"kind": "residual"}
