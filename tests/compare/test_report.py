"""The report from hand-made per-seed values: every new results.json field agrees with a
recomputation from those values, the page opens its verdicts with one line per arm, small or
at-chance suites are marked, and the page opens in headless Chromium with every image loaded
and no console error."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hyperfrac.compare import spec_from_dict, write_report

pytest.importorskip("matplotlib")

L, W = 4, 40  # sublayers, validation windows
ARMS = {"residual": (1, 1), "dhc2": (2, 1), "dfc4": (4, 4)}  # name -> (slots S, inputs R)


def _probe(kind: str, rng) -> dict:
    S, R = ARMS[kind]
    cos = {k: list(rng.uniform(0.3, 0.9, L - 1)) for k in ("median", "low", "high", "mean")}
    return {
        "n_layers": L, "tokens": 64, "windows": 2, "cosine": cos,
        "unfolded": rng.normal(0.5, 0.3, (L, L + 1, R, R)).tolist(),
        "unfolded_per_stream": rng.normal(0.2, 0.2, (S, L, L + 1, R, R)).tolist(),
        "unfolded_final": rng.normal(1.0, 0.3, (L + 1, R, R)).tolist(),
        "unfolded_final_per_stream": rng.normal(0.3, 0.1, (S, L + 1, R, R)).tolist(),
        "amax": {k: list(1 + rng.uniform(0, 0.5 if kind != "residual" else 0, L))
                 for k in ("single_forward", "single_backward", "composite_forward",
                           "composite_backward")},
    }


def fake_run(arm: str, seed: int, shift: float, rate: float) -> dict:
    """One analyze_run-shaped result whose validation bpb is ``2.5 + shift`` (plus seed noise),
    20 periodic evaluations, a training log at ``rate`` tokens/s and two suites."""
    rng = np.random.default_rng(seed * 10 + len(arm))
    windows = np.random.default_rng(seed).uniform(0.9, 1.1, W)  # one validation set per seed
    nbytes = np.full(W, 400.0)
    level = 2.5 + shift + 0.01 * seed + 0.003 * rng.standard_normal()
    nll = nbytes * math.log(2) * level * windows
    val_bpb = float(nll.sum() / nbytes.sum() / math.log(2))
    tokens = [2048 * 10 * (i + 1) for i in range(20)]
    curve = [3.5 + shift - 0.9 * (1 - math.exp(-i / 6)) + 0.005 * seed for i in range(20)]
    mc = {"cloze": (40, 0.25, 10 + seed), "pairs": (300, 0.5, 200 + seed + int(30 * -shift))}
    return {
        "arm": arm, "seed": seed, "train_wall_s": tokens[-1] / rate, "peak_rss_mb": None,
        "analysis": {
            "run": f"/x/{arm}-seed{seed}", "step": 200, "tokens": tokens[-1],
            "model": {"dim": 16, "n_layers": L // 2, "moe": False, "seq_len": 32},
            "metrics": {
                "val_bpb": val_bpb, "val_loss": val_bpb * 0.9, "val_tokens": 1000,
                "val_windows": {"nll": list(nll), "bytes": list(nbytes), "tokens": [25] * W},
                "heldout": {}, "tok_per_s": rate, "saved_act_mb": 1.0 + 0.1 * len(arm),
                "params": 1000 + 10 * ARMS[arm][0], "conn_params": 10 * ARMS[arm][0],
                "conn_flops_per_token": 5 * len(arm), "model_flops_per_token": 10_000,
                "loss_spikes": 0, "nonfinite": 0,
                "mc": {k: c / n for k, (n, _, c) in mc.items()},
                "mc_detail": {k: {"accuracy": c / n, "items": n, "correct": c, "chance": ch,
                                  "ci95": [0, 1]} for k, (n, ch, c) in mc.items()},
            },
            "curves": {
                "train": {"step": list(range(10, 210, 10)), "tokens": tokens,
                          "loss": [c * 0.7 for c in curve],
                          "seconds": [t / rate for t in tokens]},
                "val": {"step": list(range(10, 210, 10)), "tokens": tokens, "loss": curve,
                        "bpb": curve, "accuracy": [None] * 20},
            },
            "probe": _probe(arm, rng),
            "grad_norms": {"names": [f"{i // 2}.{'attn' if i % 2 == 0 else 'ffn'}"
                                     for i in range(L)],
                           "sublayer": list(rng.uniform(0.1, 1.0, L)), "total": 1.0,
                           "loss": 3.0},
        },
    }


SPEC = spec_from_dict({
    "name": "fake", "seeds": [0, 1, 2],
    "arms": ["residual", "dhc2=dhc,n_streams=2", "dfc4=dfc,n_fracs=4"],
    "base": {"model": {"dim": 16}, "eval": {"interval": 10, "max_batches": 4}},
    "paper": [{"source": "HC Table 1", "metric": "V2 loss", "values":
               {"residual": 2.811, "dhc2": 2.802}}],
})
SHIFT = {"residual": 0.0, "dhc2": -0.05, "dfc4": 0.001}
RATE = {"residual": 1000.0, "dhc2": 600.0, "dfc4": 800.0}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    runs = [fake_run(a, s, SHIFT[a], RATE[a]) for s in SPEC.seeds for a in ARMS]
    res = write_report(SPEC, runs, out, budget=1.0, machine={"cpu_count": 2, "threads": 2},
                       wall_s=10.0, command=["/venv/bin/hyperfrac", "compare", "fake"])
    return out, res


def test_new_fields_agree_with_a_recomputation(report) -> None:
    stats = pytest.importorskip("scipy.stats")
    out, _ = report
    data = json.loads((out / "results.json").read_text())
    runs = {(r["arm"], r["seed"]): r for r in data["runs"]}
    p_values = []
    for a in data["arms"][1:]:
        d = a["diff"]["val_bpb"]
        diffs = [runs[(a["name"], s)]["metrics"]["val_bpb"]
                 - runs[("residual", s)]["metrics"]["val_bpb"] for s in a["seeds"]]
        ref = stats.ttest_1samp(diffs, 0.0)
        lo, hi = stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs),
                                  scale=stats.sem(diffs))
        assert d["mean"] == pytest.approx(np.mean(diffs), abs=1e-12) and d["df"] == 2
        assert d["ci95"] == pytest.approx([lo, hi], rel=1e-8) and d["p"] == pytest.approx(
            ref.pvalue, rel=1e-8)
        side = "better" if hi < 0 else "worse" if lo > 0 else "no detectable difference"
        assert a["verdict"] == d["verdict"] == side
        assert 0 < d["eval_se"] < d["se"] and d["eval_ci95"][0] < d["eval_ci95"][1]
        p_values.append(ref.pvalue)
        c = a["convergence"]
        assert c["points"] == [20, 20, 20] and len(c["tokens_to_baseline"]) == 3
        sp = np.array([runs[("residual", s)]["tokens"] for s in a["seeds"]], dtype=float)
        reached = [t for t in c["tokens_to_baseline"] if t is not None]
        if len(reached) == 3:
            geo = math.exp(np.mean(np.log(sp / np.array(reached))))
            assert c["speedup_tokens"]["mean"] == pytest.approx(geo, rel=1e-9)
            assert c["speedup_time"]["mean"] == pytest.approx(
                geo * RATE[a["name"]] / RATE["residual"], rel=1e-6)
    # Holm over the two arms, by hand
    order = np.argsort(p_values)
    adj = [0.0, 0.0]
    adj[order[0]] = min(1, 2 * p_values[order[0]])
    adj[order[1]] = max(adj[order[0]], min(1, p_values[order[1]]))
    assert [a["holm"]["p_adj"] for a in data["arms"][1:]] == pytest.approx(adj)
    assert data["arms"][1]["verdict"] == "better"  # dhc2 is 0.05 bpb better in every seed
    assert data["command"] == "hyperfrac compare fake" and data["version"]
    assert data["claims"][0]["arm"] == "dhc2" and data["claims"][0]["verdict"] == "agrees"


def test_report_opens_with_verdicts_and_marks_weak_suites(report) -> None:
    out, res = report
    md = (out / "summary.md").read_text().splitlines()
    assert md[2] == "## Verdicts"
    assert md[4].startswith("* dhc2: better — Δ val bpb vs residual −0.04")
    assert md[5].startswith("* dfc4: no detectable difference — Δ val bpb")
    assert all("(95% CI, 3 seeds, p = " in line for line in md[4:6])
    text = "\n".join(md)
    assert "## Run settings" in text and "hyperfrac compare fake" in text
    cloze = next(r for r in res["arms"][0]["mc"].items() if r[0] == "cloze")[1]
    assert cloze["few_items"] and cloze["items"] == 40
    assert "too few items (< 100) to read" in text
    row = next(line for line in md if line.startswith("| pairs |"))
    assert "readable" in row and "300" in row
    for p in res["figures"]:
        assert f"figures/{Path(p).name}" in text


def test_figures_have_sane_sizes(report) -> None:
    from PIL import Image

    out, _ = report
    for p in (out / "figures").glob("*.png"):
        w, h = Image.open(p).size
        assert w <= 2000 and h <= 1400, (p.name, w, h)  # the DFC panels were 4476 px wide


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if p := shutil.which(name):
            return p
    return None


def _dump_dom(page: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """The page's DOM after headless Chromium ran its scripts and loaded its images."""
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.skipif(_chromium() is None, reason="needs chromium (apt-get install chromium)")
def test_report_opens_in_headless_chromium_without_errors(report, tmp_path) -> None:
    out, res = report
    res_ = _dump_dom(out / "report.html", tmp_path)
    assert res_.returncode == 0, res_.stderr[-2000:]
    dom = res_.stdout
    n = len(res["figures"])
    assert f'data-images="{n}"' in dom and n >= 8
    assert 'data-images-ok="true"' in dom and 'data-errors="0"' in dom, dom[:500]
    assert dom.index("dhc2: better") < dom.index("Run settings") < dom.index("<figure>")
    assert dom.count("<figcaption>") == n


def test_a_broken_page_is_caught(report, tmp_path) -> None:
    """The checks above can fail: a console error and a missing image are both counted."""
    if _chromium() is None:
        pytest.skip("needs chromium")
    out, _ = report
    page = (out / "report.html").read_text().replace(
        "</body>", "<img src='missing.png'><script>console.error('boom')</script></body>")
    bad = tmp_path / "bad.html"
    bad.write_text(page)
    dom = _dump_dom(bad, tmp_path).stdout
    # the console error and the failed image load are both counted
    assert 'data-images-ok="false"' in dom and 'data-errors="2"' in dom
