"""Per-arm learning rates: the sweep picks each arm's argmin, the rate reaches the run configs,
sweep runs resume like any others; and the default preset's shape (issue 13)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import hyperfrac.compare.driver as driver
from hyperfrac.compare import arm_config, load_spec, run_compare, spec_from_dict
from hyperfrac.compare.spec import parse_lr_sweep
from hyperfrac.compare.sweep import choose, sweep_arm_name, sweep_spec, with_lrs
from hyperfrac.train.config import load_config

LRS = [1e-3, 3e-3, 1e-2]


def spec_with_sweep(data: Path | None = None, *, lrs=LRS, seeds=(0, 1), steps=8):
    base = {
        "model": {"preset": "tiny", "dim": 32, "n_heads": 2},
        "data": {"path": str(data or "/nonexistent"), "seq_len": 32},
        "optim": {"lr": 5e-3, "warmup_steps": 2},
        "train": {"steps": steps, "batch_size": 4, "threads": 1},
        "eval": {"interval": 4, "max_batches": 2, "batch_size": 8},
        "checkpoint": {"interval": 4, "keep": 1},
        "log": {"interval": 1, "progress": "never"},
    }
    return spec_from_dict({"name": "sw", "arms": ["residual", "dhc2=dhc,n_streams=2"],
                           "seeds": list(seeds), "base": base, "lr_sweep": list(lrs),
                           "lr_sweep_budget": 0.5, "analysis": {"windows": 2, "max_tokens": 64}})


def _fake_sweep_run(runs: Path, arm: str, lr: float, bpb: float | None, seed: int = 0) -> None:
    d = runs / f"{sweep_arm_name(arm, lr)}-seed{seed}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"val_bpb": bpb, "finished": True}))


def test_choose_takes_each_arms_argmin_and_never_a_diverged_run(tmp_path):
    spec = spec_with_sweep()
    table = {"residual": [2.10, 1.95, 2.40], "dhc2": [2.30, float("nan"), 2.05]}
    for arm, vals in table.items():
        for lr, v in zip(LRS, vals, strict=True):
            _fake_sweep_run(tmp_path, arm, lr, None if math.isnan(v) else v)
    # the NaN run is reported as diverged (None), the argmin skips it
    (tmp_path / f"{sweep_arm_name('dhc2', 3e-3)}-seed0" / "summary.json").write_text(
        '{"val_bpb": NaN, "finished": true}')
    got = choose(spec, tmp_path)
    assert got["chosen"] == {"residual": 3e-3, "dhc2": 1e-2}
    assert got["values"]["residual"] == [2.10, 1.95, 2.40]
    assert got["values"]["dhc2"] == [2.30, None, 2.05]
    assert got["seed"] == 0 and got["lrs"] == LRS and got["metric"] == "val_bpb"


def test_every_diverged_sweep_is_an_error(tmp_path):
    spec = spec_with_sweep(lrs=[1e-3, 1e-2])
    for arm in ("residual", "dhc2"):
        for lr in (1e-3, 1e-2):
            _fake_sweep_run(tmp_path, arm, lr, 2.0 if arm == "residual" else None)
    with pytest.raises(RuntimeError, match="dhc2.*diverged"):
        choose(spec, tmp_path)


def test_chosen_rate_reaches_every_seeds_run_config(tmp_path):
    spec = with_lrs(spec_with_sweep(), {"residual": 3e-3, "dhc2": 1e-2})
    for seed in spec.seeds:
        assert arm_config(spec, spec.arm("residual"), seed, tmp_path).optim.lr == 3e-3
        assert arm_config(spec, spec.arm("dhc2"), seed, tmp_path).optim.lr == 1e-2
    assert spec.lr_sweep is None  # the runs are plain runs at their rate


def test_sweep_spec_is_every_arm_times_rate_on_the_first_seed_and_shorter():
    spec = spec_with_sweep(seeds=(3, 4), steps=8)
    s = sweep_spec(spec)
    assert s.seeds == [3] and len(s.arms) == 2 * len(LRS)
    assert s.base["train"]["steps"] == 4  # lr_sweep_budget 0.5
    lrs = {a.name: a.overrides for a in s.arms}
    assert lrs[sweep_arm_name("dhc2", 1e-2)] == ["optim.lr=0.01"]
    assert s.arms[0].connection == spec.arms[0].connection


def test_sweep_spec_errors():
    assert parse_lr_sweep("1e-3, 3e-3,1e-2") == LRS
    for bad in ("1e-3", "1e-3,1e-3", "1e-3,-1", "1e-3,x", "1e-3,inf"):
        with pytest.raises(ValueError, match="lr"):
            parse_lr_sweep(bad)
    with pytest.raises(ValueError, match="lr_sweep_budget"):
        spec_from_dict({"name": "x", "arms": ["residual"], "lr_sweep": LRS,
                        "lr_sweep_budget": 1.5})
    with pytest.raises(ValueError, match="sets optim.lr itself"):
        spec_from_dict({"name": "x", "lr_sweep": LRS, "arms": [
            {"name": "r", "connection": {"kind": "residual"}, "overrides": ["optim.lr=1e-3"]}]})


def test_sweep_end_to_end_picks_the_argmin_trains_at_it_and_resumes(tiny_dataset, tmp_path,
                                                                     monkeypatch):
    spec = spec_with_sweep(tiny_dataset, lrs=[1e-3, 1e-2], seeds=(0, 1))
    real = driver.train_in_process
    calls: list[str] = []

    def interrupted(cfg):  # the third sweep run is "Ctrl-C"-ed after its first checkpoint
        calls.append(cfg.name)
        if len(calls) == 3:
            cfg.train.stop_at = 2
            real(cfg)
            raise KeyboardInterrupt
        return real(cfg)

    monkeypatch.setattr(driver, "train_in_process", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_compare(spec, tmp_path, isolate=False, estimate=False, eval_batches=2,
                    figures=False, log=lambda m: None)
    assert len(calls) == 3 and all("-lr" in c for c in calls)
    resumed: list[str] = []

    def counting(cfg):
        resumed.append(cfg.name)
        return real(cfg)

    monkeypatch.setattr(driver, "train_in_process", counting)
    res = run_compare(spec, tmp_path, isolate=False, estimate=False, eval_batches=2,
                      figures=False, log=lambda m: None)
    # the two finished sweep runs were not retrained; the interrupted one continued
    assert resumed[0] == calls[2] and not set(calls[:2]) & set(resumed)
    assert sum("-lr" in r for r in resumed) == 2 and len(resumed) == 2 + 4
    sw = res["lr_sweep"]
    for arm in ("residual", "dhc2"):
        vals = []
        for lr in sw["lrs"]:
            d = tmp_path / "sweep" / "runs" / f"{sweep_arm_name(arm, lr)}-seed0"
            s = json.loads((d / "summary.json").read_text())
            assert s["finished"] and s["step"] == 4  # half the steps
            vals.append(s["val_bpb"])
        best = sw["lrs"][min(range(len(vals)), key=vals.__getitem__)]
        assert sw["chosen"][arm] == best
        arm_res = next(a for a in res["arms"] if a["name"] == arm)
        assert arm_res["lr"] == best
        for seed in (0, 1):  # the rate reached the trained run's own saved config
            cfg = load_config(tmp_path / "runs" / f"{arm}-seed{seed}" / "config.yaml")
            assert cfg.optim.lr == best and cfg.train.steps == 8
    summary = (tmp_path / "summary.md").read_text()
    assert "Learning-rate sweep" in summary and "chosen lr" in summary
    line = next(x for x in summary.splitlines() if x.startswith("* dhc2:"))
    assert f"lr {sw['chosen']['dhc2']:g} (baseline {sw['chosen']['residual']:g}" in line
    assert ("a different rate" in line) == (sw["chosen"]["dhc2"] != sw["chosen"]["residual"])
    # a re-run trains nothing (sweep and main runs are finished)
    monkeypatch.setattr(driver, "train_in_process", lambda cfg: pytest.fail("retrained"))
    again = run_compare(spec, tmp_path, isolate=False, estimate=False, eval_batches=2,
                        figures=False, log=lambda m: None)
    assert again["lr_sweep"]["chosen"] == sw["chosen"]
    part = run_compare(spec, tmp_path, isolate=False, estimate=False, eval_batches=2,
                       figures=False, train=False, log=lambda m: None)  # --report-only
    assert part["lr_sweep"]["chosen"] == sw["chosen"] and len(part["runs"]) == 4


def test_default_preset_is_deep_seeded_and_has_held_out_text(tmp_path):
    from hyperfrac.data.lit import CORPORA_LIT, HELDOUT
    from hyperfrac.data.prepare import dataset_dir, is_ready

    spec = load_spec("default")
    assert len(spec.seeds) >= 3 and spec.lr_sweep and len(spec.lr_sweep) >= 2
    assert {a.connection["kind"] for a in spec.arms} >= {"residual", "dhc", "dfc"}
    assert spec.caveats.strip()
    for arm in spec.arms:
        cfg = arm_config(spec, arm, spec.seeds[0], tmp_path)
        assert cfg.model.n_layers >= 8
        assert cfg.data.kind == "text" and cfg.data.corpus in CORPORA_LIT and HELDOUT
    d = dataset_dir(cfg.data.corpus, cfg.data.vocab_size)
    if is_ready(d):  # prepared on this machine: the held-out split is really there
        assert (d / "heldout.bin").stat().st_size > 0
