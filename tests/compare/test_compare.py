"""End to end: a tiny comparison writes every artefact, resumes, and its report opens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import hyperfrac.compare.driver as driver
from hyperfrac.compare import arm_config, build_trainer, run_compare, spec_from_dict

pytest.importorskip("matplotlib")


def tiny_spec(data: Path, arms=("residual", "dhc2=dhc,n_streams=2"), seeds=(0, 1), steps=6):
    return spec_from_dict({
        "name": "tiny",
        "arms": list(arms),
        "seeds": list(seeds),
        "base": {
            "model": {"preset": "tiny", "dim": 32, "n_heads": 2},
            "data": {"path": str(data), "seq_len": 32},
            "optim": {"lr": 1e-2, "warmup_steps": 2},
            "train": {"steps": steps, "batch_size": 4, "threads": 1},
            "eval": {"interval": 3, "max_batches": 2, "batch_size": 8},
            "checkpoint": {"interval": 3, "keep": 1},
            "log": {"interval": 1, "progress": "never"},
        },
        "analysis": {"windows": 2, "max_tokens": 64},
        "paper": [{"source": "HC Table 2", "metric": "V2 loss",
                   "values": {"residual": 2.811, "dhc2": 2.802}}],
    })


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("cmp")
    results = run_compare(tiny_spec(tiny_dataset), out, isolate=False, estimate=False,
                          eval_batches=2, log=lambda m: None)
    return out, results


def test_compare_writes_every_artefact(compared):
    out, results = compared
    for f in ("results.json", "summary.md", "report.html", "plan.json"):
        assert (out / f).is_file(), f
    figs = {p.name for p in (out / "figures").glob("*.png")}
    assert {"loss_curves.png", "cosine.png", "amax_gain.png", "grad_norms.png",
            "unfolded_residual.png", "unfolded_dhc2.png", "unfolded_streams_dhc2.png"} <= figs
    for p in (out / "figures").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    data = json.loads((out / "results.json").read_text())
    assert len(data["runs"]) == 4 and {r["arm"] for r in data["runs"]} == {"residual", "dhc2"}
    dhc = next(a for a in data["arms"] if a["name"] == "dhc2")
    assert dhc["stats"]["val_bpb"]["n"] == 2 and dhc["stats"]["val_bpb"]["se"] is not None
    assert dhc["diff"]["val_bpb"]["n"] == 2
    assert dhc["stats"]["conn_params"]["mean"] > 0 and dhc["ratio"]["tok_per_s"]["mean"] > 0
    run = data["runs"][0]
    L = 2 * run["model"]["n_layers"]
    assert len(run["probe"]["cosine"]["median"]) == L - 1
    assert len(run["grad_norms"]["sublayer"]) == L
    summary = (out / "summary.md").read_text()
    assert "Δ val bpb vs residual" in summary and "HC Table 2" in summary and "2.802" in summary
    # missing metrics are n/a, never invented (no held-out split / MC suite in the fixture,
    # in-process training has no peak RSS)
    row = next(r for r in data["table"]["rows"] if r[0].startswith("dhc2"))
    assert row[3] == "n/a" and row[data["table"]["head"].index("peak RSS ×")] == "n/a"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figs) and "src='http" not in html
    assert "<link" not in html  # self-contained: nothing fetched


def test_arms_share_data_order_and_branch_init(tiny_dataset, tmp_path):
    spec = tiny_spec(tiny_dataset)
    a = build_trainer(arm_config(spec, spec.arms[0], 0, tmp_path))
    b = build_trainer(arm_config(spec, spec.arms[1], 0, tmp_path))
    ma, mb = a.model, b.model
    torch.testing.assert_close(ma.embed.weight, mb.embed.weight, rtol=0, atol=0)
    for ba, bb in zip(ma.blocks, mb.blocks, strict=True):
        torch.testing.assert_close(ba.attn.qkv.weight, bb.attn.qkv.weight, rtol=0, atol=0)
        torch.testing.assert_close(ba.ffn.w_in.weight, bb.ffn.w_in.weight, rtol=0, atol=0)
        # HC §4: output projections scaled by sqrt(n) from the same draws
        torch.testing.assert_close(ba.attn.out.weight * 2**0.5, bb.attn.out.weight)
    xa, _ = a.loader.next_batch()
    xb, _ = b.loader.next_batch()
    assert torch.equal(xa, xb)
    c = build_trainer(arm_config(spec, spec.arms[0], 1, tmp_path))
    assert not torch.equal(c.model.embed.weight, ma.embed.weight)  # seeds do differ


def test_interrupted_compare_resumes_without_retraining(tiny_dataset, tmp_path, monkeypatch):
    spec = tiny_spec(tiny_dataset, seeds=(0,))
    calls = []
    real = driver.train_in_process

    def interrupted(cfg):
        calls.append(cfg.name)
        if cfg.name.startswith("dhc2"):
            cfg.train.stop_at = 3  # checkpoint at step 3, then "Ctrl-C"
            real(cfg)
            raise KeyboardInterrupt
        return real(cfg)

    monkeypatch.setattr(driver, "train_in_process", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_compare(spec, tmp_path, isolate=False, estimate=False, eval_batches=2,
                    log=lambda m: None)
    assert calls == ["residual-seed0", "dhc2-seed0"]
    assert not (tmp_path / "results.json").exists()
    # --report-only: a report of what has finished, nothing trained
    part = run_compare(spec, tmp_path, isolate=False, estimate=False, eval_batches=2,
                       train=False, log=lambda m: None)
    assert [r["arm"] for r in part["runs"]] == ["residual"] and calls == calls[:2]
    resumed = []

    def counting(cfg):
        resumed.append(cfg.name)
        t = build_trainer(cfg)
        assert t.step == 3 and t.resumed_from is not None  # continues the checkpoint
        return {**t.fit(), "peak_rss_mb": None}

    monkeypatch.setattr(driver, "train_in_process", counting)
    res = run_compare(spec, tmp_path, isolate=False, estimate=False, eval_batches=2,
                      log=lambda m: None)
    assert resumed == ["dhc2-seed0"]  # the finished arm was not retrained
    assert all(r["step"] == 6 for r in res["runs"])
    # a third call trains nothing; a changed config is refused
    monkeypatch.setattr(driver, "train_in_process", lambda cfg: pytest.fail("retrained"))
    run_compare(spec, tmp_path, isolate=False, estimate=False, eval_batches=2,
                log=lambda m: None)
    with pytest.raises(ValueError, match="different"):
        run_compare(spec.scaled(2), tmp_path, isolate=False, estimate=False, log=lambda m: None)


def test_isolated_training_measures_peak_rss(tiny_dataset, tmp_path):
    spec = tiny_spec(tiny_dataset, seeds=(0,), steps=3)
    res = run_compare(spec, tmp_path, isolate=True, estimate=True, eval_batches=1,
                      figures=False, log=lambda m: None)
    rss = [r["peak_rss_mb"] for r in res["runs"]]
    assert all(x is not None and x > 50 for x in rss)
    dhc = next(a for a in res["arms"] if a["name"] == "dhc2")
    assert dhc["ratio"]["peak_rss_mb"]["mean"] > 0


# The report in headless Chromium: tests/compare/test_report.py.


def test_analyze_cli_on_a_compare_run(compared, capsys):
    from hyperfrac.cli import main

    out, _ = compared
    run = out / "runs" / "dhc2-seed0"
    shutil.rmtree(run / "analysis")
    assert main(["analyze", str(run), "--eval-batches", "1", "--windows", "2"]) == 0
    assert "val bpb" in capsys.readouterr().out
    assert (run / "analysis" / "analysis.json").is_file()
    assert (run / "analysis" / "unfolded_streams_dhc2-seed0.png").is_file()


def test_compare_cli_dry_run_and_list(capsys):
    from hyperfrac.cli import main

    assert main(["compare", "--list"]) == 0
    assert "hc-table1" in capsys.readouterr().out
    assert main(["compare", "smoke", "--dry-run", "--arm", "residual", "--arm",
                 "m=mhc,n_streams=2", "--seeds", "2", "--set", "optim.lr=1e-3"]) == 0
    text = capsys.readouterr().out
    assert "seeds [0, 1]" in text and "m: {'kind': 'mhc', 'n_streams': 2}" in text
    assert "lr: 0.001" in text


def test_vision_compare_on_a_fixture_image_set(tmp_path):
    vision = pytest.importorskip("hyperfrac.data.vision")
    if not hasattr(vision, "_write_dataset"):
        pytest.skip("the issue-4 image dataset writer is not present")
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 64), ("test", 32)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, y in enumerate(labels):  # a learnable bright square per class
            images[i, 2 * y: 2 * y + 6, 4:10] = 250
        arrays[(split, "images")], arrays[(split, "labels")] = images, labels
    data = vision._write_dataset(tmp_path / "imgs", arrays, {"name": "fixture"})
    spec = spec_from_dict({
        "name": "vit", "task": "vision", "seeds": [0],
        "arms": ["residual", "dhc2=dhc,n_streams=2"],
        "base": {
            "data": {"kind": "fashion_mnist", "path": str(data)},
            "model": {"preset": "vit-fmnist", "dim": 32, "n_layers": 2, "n_heads": 2},
            "optim": {"lr": 3e-3, "warmup_steps": 1},
            "train": {"steps": 4, "batch_size": 16, "threads": 1},
            "eval": {"interval": 2, "batch_size": 32},
            "checkpoint": {"interval": 2, "keep": 1},
            "log": {"interval": 1, "progress": "never"},
        },
        "analysis": {"windows": 1, "max_tokens": 64},
    })
    res = run_compare(spec, tmp_path / "out", isolate=False, log=lambda m: None)
    assert res["table"]["head"][1] == "test acc"
    run = res["runs"][1]
    assert 0 <= run["metrics"]["val_acc"] <= 1 and run["metrics"]["val_bpb"] is None
    assert len(run["probe"]["cosine"]["median"]) == 2 * 2 - 1
    assert (tmp_path / "out" / "figures" / "unfolded_streams_dhc2.png").is_file()
