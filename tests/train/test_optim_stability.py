"""LR schedules, AdamW parameter groups, the spike monitor."""

from __future__ import annotations

import pytest
from torch import nn

from hyperfrac.connections import build
from hyperfrac.models import build_preset
from hyperfrac.train.config import OptimConfig
from hyperfrac.train.optim import build_optimizer, lr_factor, param_groups
from hyperfrac.train.stability import SpikeMonitor


def test_cosine_and_wsd_schedules() -> None:
    cos = OptimConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cos, 110) == pytest.approx(0.1)
    assert lr_factor(9, cos, 110) == pytest.approx(1.0)
    assert lr_factor(60, cos, 110) == pytest.approx(0.55)  # halfway: (1 + 0.1) / 2
    assert lr_factor(110, cos, 110) == pytest.approx(0.1)
    wsd = OptimConfig(schedule="wsd", warmup_steps=10, min_lr_ratio=0.0, decay_fraction=0.2)
    assert lr_factor(50, wsd, 100) == 1.0 and lr_factor(79, wsd, 100) == 1.0
    assert lr_factor(89, wsd, 100) == pytest.approx(0.5)
    assert lr_factor(99, wsd, 100) == pytest.approx(0.0)
    const = OptimConfig(schedule="constant", warmup_steps=0)
    assert lr_factor(1234, const, 10) == 1.0


def test_no_weight_decay_on_static_connection_params() -> None:
    model = build_preset("tiny", connection={"kind": "dhc", "n_streams": 2})
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1))
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    static = [n for n in names if "static" in n]
    dynamic = [n for n in names if "dynamic" in n and names[n].dim() >= 2]
    assert static and dynamic
    assert all(wd[id(names[n])] == 0.0 for n in static)
    assert all(wd[id(names[n])] == 0.1 for n in dynamic)
    assert wd[id(model.embed.weight)] == 0.1  # embeddings decay, as in OLMo
    assert wd[id(model.blocks[0].attn.qkv.weight)] == 0.1
    assert wd[id(model.norm.weight)] == 0.0
    assert len(wd) == len({id(p) for p in model.parameters()})  # every parameter in one group


def test_param_groups_split_static_and_dynamic() -> None:
    model = nn.ModuleDict({
        "conn": build("dhc", 8, n_streams=2),
        "fc": build("dfc", 8, n_fracs=2),
        "mhc": build("mhc", 8),
        "lin": nn.Linear(8, 8),
    })
    groups = {g["name"]: g for g in param_groups(model, 0.1)}
    decay = {id(p) for p in groups["decay"]["params"]}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0
    for c in (model["conn"], model["fc"]):
        assert id(c.dynamic_alpha) in decay and id(c.dynamic_beta) in decay
        for p in (c.static_alpha, c.static_beta, c.alpha_scale, c.beta_scale):
            assert id(p) in no_decay
    assert id(model["fc"].norm_weight) in no_decay
    assert id(model["mhc"].phi) in decay and id(model["mhc"].b_res) in no_decay
    assert id(model["lin"].weight) in decay and id(model["lin"].bias) in no_decay
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


def test_param_groups_leave_out_frozen_parameters() -> None:
    conn = build("dhc", 8, n_streams=2, freeze=("width",))
    names = {id(p) for g in param_groups(conn, 0.1) for p in g["params"]}
    assert id(conn.static_alpha) not in names and id(conn.static_beta) in names


def test_spike_monitor_flags_spikes_and_round_trips() -> None:
    mon = SpikeMonitor(window=50, sigma=6.0, min_history=20)
    trace = [3.0 + 0.01 * ((i * 7) % 5) for i in range(40)]
    trace[30] = 6.0  # a spike
    flagged = [s for i, x in enumerate(trace) if (s := mon.update(i, x)) is not None]
    assert [s["step"] for s in flagged] == [30]
    assert flagged[0]["score"] > 6
    clone = SpikeMonitor(window=50, sigma=6.0, min_history=20)
    clone.load_state_dict(mon.state_dict())
    assert clone.update(40, 6.0) == mon.update(40, 6.0) is not None
    assert mon.update(41, float("nan")) is None  # non-finite values are the NaN guard's job
