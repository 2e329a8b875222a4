"""Results of a comparison: statistics over seeds, ``results.json``, ``summary.md`` and a
self-contained ``report.html`` (figures embedded as data URIs, no server, no network).

Statistics (:mod:`hyperfrac.compare.stats`): for every arm and metric the mean over seeds and
its standard error; differences to the baseline are **paired by seed** (same data order and
initial weights): mean, SE, a 95 % t-interval with n − 1 degrees of freedom, the two-sided
paired p-value and, for metrics with a better side, a verdict derived from the interval
(``better`` / ``worse`` / ``no detectable difference``; one seed: ``single seed — no
uncertainty``). ``arms[i].verdict`` is the primary metric's (validation bpb; test accuracy for
a ViT) and ``arms[i].holm`` its Holm-adjusted p across the arms. The evaluation set's own
sampling error (bootstrap over validation windows, seeds fixed) sits beside the seed error
as ``eval_se`` / ``eval_ci95``. ``arms[i].convergence`` holds the convergence speed and the
equal-compute view (:mod:`hyperfrac.compare.convergence`); ``arms[i].mc`` the multiple-choice
suites with item counts, chance and Wilson intervals. Speed and memory are per-seed ratios to
the baseline, averaged. A metric a run does not have is ``null`` in JSON and "n/a" in the
tables — never filled in.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hyperfrac.compare.convergence import arm_convergence
from hyperfrac.compare.spec import CompareSpec
from hyperfrac.compare.stats import direction, holm, t_interval, verdict, window_bootstrap
from hyperfrac.compare.tables import fmt
from hyperfrac.eval.scoring import wilson_interval
from hyperfrac.eval.suites import MIN_ITEMS

__all__ = ["aggregate", "fmt", "mean_se", "primary_metric", "timing", "write_report"]


def mean_se(values: list[float | None]) -> dict[str, Any]:
    """{"mean", "se", "n", "values"} of the non-missing values (se None when n < 2)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return {"mean": None, "se": None, "n": 0, "values": []}
    mean = sum(vals) / n
    se = None
    if n >= 2:
        var = sum((v - mean) ** 2 for v in vals) / (n - 1)
        se = math.sqrt(var / n)
    return {"mean": mean, "se": se, "n": n, "values": vals}


def _run_metrics(run: dict[str, Any]) -> dict[str, float | None]:
    """Flat metric dict of one run (keys as in the results table)."""
    m = run["analysis"]["metrics"]
    flat: dict[str, float | None] = {
        "val_bpb": m["val_bpb"],
        "val_loss": m["val_loss"],
        "val_acc": m.get("val_acc"),
        "tok_per_s": m["tok_per_s"],
        "saved_act_mb": m["saved_act_mb"],
        "peak_rss_mb": run.get("peak_rss_mb"),
        "params": m["params"],
        "conn_params": m["conn_params"],
        "conn_flops_per_token": m["conn_flops_per_token"],
        "model_flops_per_token": m["model_flops_per_token"],
        "loss_spikes": m["loss_spikes"],
        "nonfinite": m["nonfinite"],
        "train_wall_s": run.get("train_wall_s"),
    }
    train = run["analysis"]["curves"]["train"]["loss"]
    flat["final_train_loss"] = train[-1] if train else None
    amax = run["analysis"]["probe"]["amax"]
    flat["max_composite_gain"] = max(max(amax["composite_forward"]),
                                     max(amax["composite_backward"]))
    flat.update(_stream_shares(run["analysis"]["probe"]))
    for split, r in m.get("heldout", {}).items():
        flat[f"heldout_bpb:{split}"] = r["bpb"]
    for suite, acc in m.get("mc", {}).items():
        flat[f"mc:{suite}"] = acc
    return flat


def _stream_shares(probe: dict[str, Any]) -> dict[str, float | None]:
    """Stream collapse (n-stream kinds; None otherwise): the largest stream's energy share
    averaged over / maximal across the sublayers' input states, that of the final state, and
    its balanced value 1/n."""
    shares = probe.get("stream_energy_max_share")
    if not shares:
        return {k: None for k in ("stream_share_mean", "stream_share_max",
                                  "stream_share_final", "stream_share_balanced")}
    return {"stream_share_mean": sum(shares) / len(shares), "stream_share_max": max(shares),
            "stream_share_final": probe.get("stream_energy_max_share_final"),
            "stream_share_balanced": 1.0 / len(probe["unfolded_per_stream"])}


def primary_metric(spec: CompareSpec) -> str:
    """The metric an arm's verdict is about: validation bpb, or test accuracy for a ViT."""
    return "val_acc" if spec.task == "vision" else "val_bpb"


def _windows(run: dict[str, Any] | None, metric: str) -> dict[str, Any] | None:
    """Per-window sums behind ``val_bpb`` / ``heldout_bpb:SPLIT`` of one run (None if absent)."""
    if run is None:
        return None
    m = run["analysis"]["metrics"]
    if metric == "val_bpb":
        return m.get("val_windows")
    if metric.startswith("heldout_bpb:"):
        return m.get("heldout", {}).get(metric.split(":", 1)[1], {}).get("windows")
    return None


def _paired(arm_vals: list[float | None], base_vals: list[float | None]) -> list[float]:
    return [a - b for a, b in zip(arm_vals, base_vals, strict=True)
            if a is not None and b is not None]


def _mc_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per suite: items, chance, mean accuracy over seeds, a Wilson interval over the items
    (seed-mean count) and whether the suite is too small to read."""
    out: dict[str, Any] = {}
    details = [r["analysis"]["metrics"].get("mc_detail") or {} for r in runs]
    for name in sorted({k for d in details for k in d}):
        rows = [d[name] for d in details if name in d and d[name].get("items")]
        if not rows:
            continue
        items = int(rows[0]["items"])
        correct = sum(float(r["correct"]) for r in rows) / len(rows)
        out[name] = {"items": items, "chance": rows[0].get("chance"), "seeds": len(rows),
                     "accuracy": correct / items,
                     "ci95": list(wilson_interval(round(correct), items)),
                     "few_items": items < MIN_ITEMS}
    return out


def aggregate(spec: CompareSpec, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-arm statistics over seeds, paired tests, ratios, convergence, suites and verdicts."""
    by = {(r["arm"], r["seed"]): _run_metrics(r) for r in runs}
    raw = {(r["arm"], r["seed"]): r for r in runs}
    keys = sorted({k for m in by.values() for k in m})
    base = spec.baseline
    out: dict[str, Any] = {}
    for arm in spec.arms:
        seeds = [s for s in spec.seeds if (arm.name, s) in by]
        paired_seeds = [s for s in seeds if (base, s) in by]
        stats = {k: mean_se([by[(arm.name, s)].get(k) for s in seeds]) for k in keys}
        diffs, ratios = {}, {}
        for k in keys:
            a_vals = [by[(arm.name, s)].get(k) for s in seeds]
            b_vals = [by.get((base, s), {}).get(k) for s in seeds]
            diffs[k] = t_interval(_paired(a_vals, b_vals))
            hib = direction(k)
            if hib is not None and arm.name != base:
                diffs[k]["verdict"] = verdict(diffs[k], higher_is_better=hib)
            ratios[k] = mean_se([a / b for a, b in zip(a_vals, b_vals, strict=True)
                                 if a is not None and b])
        windowed = [k for k in keys if seeds and _windows(raw[(arm.name, seeds[0])], k)]
        for k in windowed:
            arm_w = [_windows(raw[(arm.name, s)], k) for s in paired_seeds]
            base_w = [_windows(raw[(base, s)], k) for s in paired_seeds]
            own = window_bootstrap([_windows(raw[(arm.name, s)], k) for s in seeds], None)
            stats[k].update(eval_se=own and own["se"], eval_ci95=own and own["ci95"])
            if arm.name != base:
                bs = window_bootstrap(arm_w, base_w)
                diffs[k].update(eval_se=bs and bs["se"], eval_ci95=bs and bs["ci95"],
                                eval_resamples=bs and bs["resamples"])
        conv = None
        if arm.name != base and paired_seeds:
            conv = arm_convergence([raw[(arm.name, s)]["analysis"] for s in paired_seeds],
                                   [raw[(base, s)]["analysis"] for s in paired_seeds])
        out[arm.name] = {"stats": stats, "diff": diffs, "ratio": ratios, "seeds": seeds,
                         "verdict": diffs[primary_metric(spec)].get("verdict"),
                         "convergence": conv,
                         "mc": _mc_summary([raw[(arm.name, s)] for s in seeds])}
    _holm(spec, out)
    _mc_at_chance(out)
    return out


def _holm(spec: CompareSpec, agg: dict[str, Any]) -> None:
    """``holm`` of every non-baseline arm: the primary metric's p adjusted across those arms."""
    names = [a.name for a in spec.arms if a.name != spec.baseline]
    key = primary_metric(spec)
    adj = holm([agg[n]["diff"][key]["p"] for n in names])
    for n, p in zip(names, adj, strict=True):
        agg[n]["holm"] = {"metric": key, "family": len(names), "p_adj": p,
                          "significant": None if p is None else p < 0.05}
    agg[spec.baseline]["holm"] = None


def _mc_at_chance(agg: dict[str, Any]) -> None:
    """Mark each suite whose Wilson interval contains chance for every arm."""
    suites = {s for a in agg.values() for s in a["mc"]}
    for s in suites:
        rows = [a["mc"][s] for a in agg.values() if s in a["mc"]]
        flag = all(r["chance"] is not None and r["ci95"][0] <= r["chance"] <= r["ci95"][1]
                   for r in rows)
        for r in rows:
            r["at_chance_every_arm"] = flag


TIMING_SPREAD = 1.25
"""Baseline tokens/s varying more than this factor across seeds marks the timings unreliable."""


def timing(spec: CompareSpec, agg: dict[str, Any]) -> dict[str, Any]:
    """How far the baseline's own tokens/s varies across seeds (max / min): a large spread
    means other load on the machine, and every time-based number (tok/s ×, speed-up in
    training time, equal compute) carries it."""
    rates = [v for v in agg[spec.baseline]["stats"]["tok_per_s"]["values"] if v]
    spread = max(rates) / min(rates) if len(rates) >= 2 else None
    return {"base_tok_per_s": rates, "spread": spread,
            "noisy": spread is not None and spread > TIMING_SPREAD}


def _settings(spec: CompareSpec, budget: float) -> dict[str, Any]:
    """The run settings the report prints (from the resolved base config of every arm)."""
    b = spec.base
    return {"seeds": list(spec.seeds), "budget": budget, "baseline": spec.baseline,
            "model": b.get("model", {}), "data": b.get("data", {}), "optim": b.get("optim", {}),
            "train": b.get("train", {}), "eval": b.get("eval", {}),
            "analysis": dict(spec.analysis)}


def write_report(spec: CompareSpec, runs: list[dict[str, Any]], out: Path, *, budget: float,
                 machine: dict[str, Any], wall_s: float, figures: bool = True,
                 command: Sequence[str] | None = None, lr_sweep: dict[str, Any] | None = None,
                 lrs: dict[str, float] | None = None) -> dict[str, Any]:
    """Write results.json, figures/, summary.md and report.html into ``out``.

    ``command`` is the command line to print in the report (e.g. ``sys.argv``); the hyperfrac
    version and the git commit of its source are found here. ``lr_sweep``: the sweep's
    record (:func:`hyperfrac.compare.sweep.choose`); ``lrs``: the learning rate each arm
    trained at.
    """
    from hyperfrac.compare import page, tables
    from hyperfrac.compare.provenance import provenance

    out = Path(out)
    agg = aggregate(spec, runs)
    fig_paths: list[Path] = []
    if figures:
        from hyperfrac.analysis.plots import all_figures

        per_arm = {a.name: [r["analysis"] for r in runs if r["arm"] == a.name]
                   for a in spec.arms}
        per_arm = {k: v for k, v in per_arm.items() if v}  # --report-only: finished arms
        labels = {a.name: a.display for a in spec.arms}
        fig_paths = all_figures(per_arm, out / "figures", reference=spec.baseline,
                                labels=labels)
    first = runs[0]["analysis"]
    results = {
        "name": spec.name,
        "description": spec.description,
        "caveats": spec.caveats,
        "budget": budget,
        "baseline": spec.baseline,
        "primary_metric": primary_metric(spec),
        "machine": machine,
        **provenance(command),
        "settings": _settings(spec, budget),
        "timing": timing(spec, agg),
        "wall_s": wall_s,
        "train_wall_s": sum(r["train_wall_s"] or 0.0 for r in runs),
        "model": first["model"],
        "steps": first["step"],
        "tokens_per_run": first["tokens"],
        "arms": [{"name": a.name, "label": a.display, "connection": a.connection,
                  "overrides": a.overrides, "lr": (lrs or {}).get(a.name), **agg[a.name]}
                 for a in spec.arms],
        "lr_sweep": lr_sweep,
        "runs": [{"arm": r["arm"], "seed": r["seed"], "train_wall_s": r["train_wall_s"],
                  "peak_rss_mb": r["peak_rss_mb"], **r["analysis"]} for r in runs],
        "paper": [dataclasses.asdict(p) for p in spec.paper],
        "figures": [str(p.relative_to(out)) for p in fig_paths],
        "spec": spec.to_dict(),
    }
    built = tables.build_all(spec, results)
    results["table"] = built["main"]
    results["claims"] = built["claims"]
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(out / "results.json")
    (out / "summary.md").write_text(page.markdown(spec, results, built, fig_paths, out))
    (out / "report.html").write_text(page.html_page(spec, results, built, fig_paths))
    return results
