"""Compare specs and presets: parsing, budgets, statistics; every shipped preset resolves."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hyperfrac.compare import (
    CompareSpec,
    arm_config,
    available_presets,
    load_spec,
    mean_se,
    parse_arm,
    spec_from_dict,
)
from hyperfrac.compare.report import aggregate, fmt

PRESETS = available_presets()


def test_presets_present():
    for name in ("default", "smoke", "hc-table1", "hc-table2", "hc-table3", "fc-ablations",
                 "stability", "moe", "vit-fmnist"):
        assert name in PRESETS


@pytest.mark.parametrize("name", [p for p in PRESETS if p != "vit-fmnist"])
def test_every_preset_builds_its_arms(name: str, tmp_path: Path):
    from hyperfrac.models import TransformerLM

    spec = load_spec(name)
    assert spec.target_minutes and spec.baseline == "residual"
    names = {a.name for a in spec.arms}
    for ref in spec.paper:  # paper numbers refer to arms of the preset
        assert set(ref.values) <= names, (ref.source, set(ref.values) - names)
    for arm in spec.arms:
        cfg = arm_config(spec, arm, spec.seeds[0], tmp_path)
        assert cfg.model.connection == arm.connection
        with torch.device("meta"):
            TransformerLM(cfg.model)


def test_vision_preset_resolves(tmp_path: Path):
    spec = load_spec("vit-fmnist")
    cfg = arm_config(spec, spec.arms[1], 0, tmp_path)
    assert cfg.data.kind == "fashion_mnist" and cfg.model.connection["n_streams"] == 2


def test_parse_arm():
    a = parse_arm("dhc4=dhc,n_streams=4,tanh=false")
    assert (a.name, a.connection) == ("dhc4", {"kind": "dhc", "n_streams": 4, "tanh": False})
    assert parse_arm("residual").name == "residual"
    assert parse_arm("dfc,n_fracs=2").name == "dfc-n_fracs2"
    with pytest.raises(ValueError, match="unknown connection kind"):
        parse_arm("xyz")
    with pytest.raises(ValueError, match="option=value"):
        parse_arm("dhc,n_streams")


def test_spec_errors():
    arm = {"name": "a", "connection": {"kind": "residual"}}
    with pytest.raises(ValueError, match="duplicate arm"):
        spec_from_dict({"name": "x", "arms": [arm, arm]})
    with pytest.raises(ValueError, match="baseline"):
        spec_from_dict({"name": "x", "arms": [arm], "baseline": "b"})
    with pytest.raises(KeyError, match="unknown compare key"):
        spec_from_dict({"name": "x", "arms": [arm], "stepz": 3})
    with pytest.raises(FileNotFoundError, match="presets"):
        load_spec("no-such-preset")
    with pytest.raises(ValueError, match="budget"):
        load_spec("smoke").scaled(0)


def test_budget_scales_steps_and_intervals():
    spec = load_spec("default")
    s = spec.scaled(0.5)
    assert s.base["train"]["steps"] == spec.base["train"]["steps"] // 2
    assert s.base["eval"]["interval"] == spec.base["eval"]["interval"] // 2
    assert spec.scaled(1).base == spec.base


def test_mean_se_and_paired_differences():
    st = mean_se([1.0, 2.0, 4.0])
    assert math.isclose(st["mean"], 7 / 3)
    assert math.isclose(st["se"], math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 +
                                             (4 - 7 / 3) ** 2) / 2 / 3))
    assert mean_se([5.0])["se"] is None and mean_se([None])["mean"] is None
    assert fmt(mean_se([])) == "n/a" and fmt(mean_se([2.0])) == "2.0000"

    spec = CompareSpec(name="t", seeds=[0, 1], base={},
                       arms=[parse_arm("residual"), parse_arm("d=dhc")])

    def run(arm, seed, bpb, tps):
        return {"arm": arm, "seed": seed, "peak_rss_mb": None, "train_wall_s": 1.0,
                "analysis": {"metrics": {
                    "val_bpb": bpb, "val_loss": bpb, "tok_per_s": tps, "saved_act_mb": 1.0,
                    "params": 10, "conn_params": 0, "conn_flops_per_token": 0,
                    "model_flops_per_token": 100, "loss_spikes": 0, "nonfinite": 0,
                    "heldout": {}, "mc": {}},
                    "curves": {"train": {"loss": [1.0]}},
                    "probe": {"amax": {"composite_forward": [1.0],
                                       "composite_backward": [1.0]}}}}

    runs = [run("residual", 0, 2.0, 100.0), run("residual", 1, 3.0, 100.0),
            run("d", 0, 1.9, 50.0), run("d", 1, 2.7, 80.0)]
    agg = aggregate(spec, runs)
    d = agg["d"]["diff"]["val_bpb"]  # paired: -0.1, -0.3
    assert math.isclose(d["mean"], -0.2) and math.isclose(d["se"], 0.1)
    assert math.isclose(agg["d"]["ratio"]["tok_per_s"]["mean"], 0.65)
    assert agg["d"]["stats"]["peak_rss_mb"]["mean"] is None  # missing stays missing
