"""The connection benchmark runs end to end at toy size and reports what it claims."""

import copy
import json

import pytest
import torch

from hyperfrac.bench import connections as bench
from hyperfrac.cli import main


def test_bench_connections_writes_json_and_markdown(tmp_path):
    out = tmp_path / "bench.json"
    rc = main(["bench", "connections", "--modes", "eager", "--layers", "2", "--dim", "32",
               "--batch", "2", "--seq", "8", "--warmup", "0", "--rounds", "2",
               "--variants", "dhc x4,dfc x4,mhc x4,dhc x4 rc,mhc-v4 x4,mhc-lite x4,kromhc x4,"
               "attnres b2", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    rows = {r["variant"]: r for r in report["results"]}
    assert set(rows) == {"residual", "dhc x4", "dfc x4", "mhc x4", "dhc x4 rc", "mhc-v4 x4",
                         "mhc-lite x4", "kromhc x4", "attnres b2"}
    assert rows["residual"]["ratio"] == 1.0
    base = rows["residual"]["times_ms"]
    for r in rows.values():
        assert len(r["times_ms"]) == 2 and r["median_ms"] > 0
        # ratios are paired within each round
        paired = [a / b for a, b in zip(r["times_ms"], base, strict=True)]
        assert r["ratio_rounds"] == pytest.approx(paired, rel=2e-3)
        assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
        assert r["minor_faults_per_step"] >= 0
    # recomputation drops the branch input from the saved activations
    x_bytes = 2 * 8 * 32 * 4  # one branch input per layer, float32
    assert rows["dhc x4"]["saved_bytes"] - rows["dhc x4 rc"]["saved_bytes"] >= 2 * x_bytes
    assert rows["dhc x4"]["target"] == 1.40
    md = out.with_suffix(".md").read_text()
    assert "| eager | dfc x4 |" in md


def test_unknown_variant_is_rejected(tmp_path):
    with pytest.raises(SystemExit, match="unknown variant"):
        main(["bench", "connections", "--variants", "dhc x5", "--out", str(tmp_path / "x")])


@pytest.mark.parametrize("name", ["naive dhc x4", "naive dfc x4"])
def test_naive_yardstick_computes_the_same_function(name):
    torch.manual_seed(0)
    base = torch.nn.ModuleList(bench.mlp_branch(16, 32) for _ in range(3))
    fused = bench.our_variants()[name.removeprefix("naive ")](copy.deepcopy(base), 16)
    naive = bench.our_variants()[name](copy.deepcopy(base), 16)
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    naive.load_state_dict(fused.state_dict())
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(naive(x), fused(x), rtol=1e-5, atol=1e-5)
