"""The report's text: verdict lines, run settings and every table, built from results.json.

Each builder returns plain strings (``{"head": [...], "rows": [[...]]}`` for a table), so the
Markdown and HTML pages (:mod:`hyperfrac.compare.page`) print the same words and numbers.
Numbers use a real minus sign; "n/a" is a value this run did not measure.
"""

from __future__ import annotations

from typing import Any

from hyperfrac.compare.spec import CompareSpec
from hyperfrac.compare.stats import claim_verdict, verdict
from hyperfrac.eval.suites import MIN_ITEMS

Table = dict[str, list]

LABELS = {"val_bpb": "val bpb", "val_acc": "test acc", "val_loss": "val loss",
          "final_train_loss": "final train loss"}


def label(metric: str) -> str:
    if metric.startswith("heldout_bpb:"):
        return f"{metric.split(':', 1)[1]} bpb"
    if metric.startswith("mc:"):
        return f"{metric.split(':', 1)[1]} acc"
    return LABELS.get(metric, metric)


# ---------------------------------------------------------------------------------- numbers


def num(x: float | None, digits: int = 4, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:{'+' if signed else ''}.{digits}f}".replace("-", "−")


def fmt(stat: dict[str, Any] | None, digits: int = 4, signed: bool = False) -> str:
    """``mean ± SE`` (± only with two or more values)."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    s = num(stat["mean"], digits, signed)
    if stat.get("se") is not None:
        s += " ± " + num(stat["se"], digits)
    return s


def ci(interval: list[float] | None, digits: int = 4, signed: bool = True) -> str:
    if not interval:
        return "n/a"
    return f"[{num(interval[0], digits, signed)}, {num(interval[1], digits, signed)}]"


def pval(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def delta_ci(stat: dict[str, Any] | None, digits: int = 4) -> str:
    """``Δ [lo, hi]`` (interval only with two or more seeds)."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    s = num(stat["mean"], digits, signed=True)
    return s + (f" {ci(stat['ci95'], digits)}" if stat.get("ci95") else " (1 seed)")


def ratio_ci(stat: dict[str, Any] | None, *, not_reached: int = 0, n: int = 0) -> str:
    if stat and not_reached:
        return f"not reached in {not_reached} of {n} seeds"
    if not stat or stat.get("mean") is None:
        return "n/a"
    s = f"{stat['mean']:.2f}×"
    return s + (f" [{stat['ci95'][0]:.2f}, {stat['ci95'][1]:.2f}]" if stat.get("ci95") else "")


def speedup(conv: dict[str, Any], key: str) -> str:
    """A convergence speed-up with its interval, or how many seeds never got there."""
    st = conv[key]
    return ratio_ci(st, not_reached=st["not_reached"], n=len(conv["tokens_to_baseline"]))


def _int(stat: dict[str, Any] | None, signed: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    return (f"{stat['mean']:+,.0f}" if signed else f"{stat['mean']:,.0f}").replace("-", "−")


def _seeds(a: dict[str, Any]) -> str:
    n = len(a["seeds"])
    return f"{n} seed{'s' if n != 1 else ''}"


# ---------------------------------------------------------------------------------- verdicts


def verdict_lines(spec: CompareSpec, results: dict[str, Any]) -> list[str]:
    """One line per non-baseline arm: Δ with interval, verdict, speed-up, cost ratios."""
    key = results["primary_metric"]
    arms = {a["name"]: a for a in results["arms"]}
    base = arms[spec.baseline]["label"]
    lines = []
    for a in results["arms"]:
        if a["name"] == spec.baseline:
            continue
        d = a["diff"][key]
        h = a.get("holm") or {}
        p = f"p = {pval(d['p'])}" if d.get("p") is not None else "no p"
        if h.get("family", 0) > 1 and h.get("p_adj") is not None:
            p += f", Holm-adjusted over {h['family']} arms {pval(h['p_adj'])}"
        line = (f"{a['label']}: {a['verdict'] or 'n/a'} — Δ {label(key)} vs {base} "
                f"{delta_ci(d)} (95% CI, {_seeds(a)}, {p})")
        base_lr = arms[spec.baseline].get("lr")
        if a.get("lr") is not None and base_lr is not None:
            line += f"; lr {a['lr']:g} (baseline {base_lr:g}"
            line += (", a different rate: this Δ is the connection's and the rate's effect "
                     "together)" if a["lr"] != base_lr else ")")
        c = a.get("convergence")
        if c:
            line += (f"; speed-up to {base}'s final {label(c['metric'])}: "
                     f"{speedup(c, 'speedup_tokens')} in tokens, "
                     f"{speedup(c, 'speedup_time')} in training time")
        r = a["ratio"]
        line += (f"; cost: {num(r['tok_per_s']['mean'], 2)}× tok/s, "
                 f"{num(r['saved_act_mb']['mean'], 2)}× activation memory, "
                 f"{_int(a['diff']['params'], signed=True)} params.")
        lines.append(line)
    t = results.get("timing") or {}
    if t.get("noisy"):
        lines.append(f"Timings unreliable: {base}'s own tokens/s varies {t['spread']:.1f}× across "
                     "seeds (other load on the machine); tok/s ×, speed-ups in training time "
                     "and the equal-compute view are not measurements of the connections.")
    return lines


def settings_rows(spec: CompareSpec, results: dict[str, Any]) -> list[list[str]]:
    """(setting, value) rows: the command, version, commit, machine and resolved config."""
    s, mach, m = results["settings"], results["machine"], results["model"]
    unit = "images" if m.get("task") == "vision" else "tokens"

    def kv(d: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v}" for k, v in d.items()) or "defaults"

    return [
        ["command", results.get("command") or "n/a (not run from the command line)"],
        ["hyperfrac", f"{results.get('version')}, commit {results.get('commit') or 'n/a'}"],
        ["machine", f"{mach.get('cpu_count')} CPUs, {mach.get('threads')} threads, torch "
                    f"{mach.get('torch')}, Python {mach.get('python')}, {mach.get('platform')}"],
        ["seeds", f"{s['seeds']} (paired: every arm of a seed shares data order and initial "
                  "branch weights)"],
        ["length", f"{results['steps']} steps, {results['tokens_per_run']:,} {unit} per run"
                   + (f" (budget ×{s['budget']:g})" if s["budget"] != 1 else "")],
        ["model", kv(s["model"])], ["data", kv(s["data"])], ["optimizer", kv(s["optim"])],
        ["training", kv(s["train"])],
        ["periodic evaluation", kv(s["eval"]) + _final_eval(s)],
        ["probes", kv(s["analysis"])],
        ["learning rates", _lr_setting(results)],
        ["time", f"{results['train_wall_s'] / 60:.1f} min of training summed over the runs; "
                 f"this invocation {results['wall_s'] / 60:.1f} min"],
    ]


def _final_eval(s: dict[str, Any]) -> str:
    nb = s["analysis"].get("eval_batches")
    if nb:
        bs = s["eval"].get("batch_size", "eval.batch_size")
        return (f" (the curves; the final numbers use the first {nb} × {bs} windows of every "
                "split)")
    return " (the curves; the final numbers use the whole validation split)"


def _lr_setting(results: dict[str, Any]) -> str:
    lrs = ", ".join(f"{a['label']} {a['lr']:g}" for a in results["arms"] if a.get("lr"))
    sw = results.get("lr_sweep")
    if not sw:
        return (lrs or "n/a") + " (set in the config; no sweep)"
    return (f"{lrs}: each arm's lowest final validation {sw['metric'].replace('val_', '')} "
            f"of a sweep over {', '.join(f'{x:g}' for x in sw['lrs'])} ({sw['steps']} steps, "
            f"seed {sw['seed']}; table 'Learning-rate sweep')")


# ------------------------------------------------------------------------------------ tables


def sweep_table(results: dict[str, Any]) -> Table | None:
    """The sweep: each arm's final validation value at every rate, the chosen one marked."""
    sw = results.get("lr_sweep")
    if not sw:
        return None
    head = ["arm"] + [f"lr {x:g}" for x in sw["lrs"]] + ["chosen lr"]
    rows = []
    for a in results["arms"]:
        vals = sw["values"].get(a["name"])
        if vals is None:
            continue
        chosen = sw["chosen"][a["name"]]
        cells = [("diverged" if v is None else num(v)) + (" ←" if lr == chosen else "")
                 for lr, v in zip(sw["lrs"], vals, strict=True)]
        rows.append([a["label"], *cells, f"{chosen:g}"])
    return {"head": head, "rows": rows}


def main_table(spec: CompareSpec, results: dict[str, Any]) -> Table:
    """Headline: primary metric with its paired interval, p and verdict; costs."""
    key = results["primary_metric"]
    arms = results["arms"]
    base = spec.baseline
    heldout = sorted({k for a in arms for k, v in a["stats"].items()
                      if k.startswith("heldout_bpb:") and v["n"]})
    head = ["arm", label(key), f"Δ {label(key)} vs {base} [95% CI]"]
    head += [f"Δ {label(k)} [95% CI]" for k in heldout] or ["held-out bpb"]
    head += [f"p ({label(key)})", f"verdict ({label(key)})"]
    head += ["tok/s ×", "act. mem ×", "peak RSS ×", "extra params", "extra FLOPs/token",
             "spikes"]
    base_f = next(a for a in arms if a["name"] == base)["stats"]["model_flops_per_token"]["mean"]
    rows = []
    for a in arms:
        st, d, r = a["stats"], a["diff"], a["ratio"]
        is_base = a["name"] == base
        row = [f"{a['label']} ({_seeds(a)})", fmt(st[key]),
               "—" if is_base else delta_ci(d[key])]
        row += ["—" if is_base else delta_ci(d.get(k)) for k in heldout] or ["n/a"]
        row += ["—" if is_base else pval(d[key]["p"]),
                "baseline" if is_base else (a["verdict"] or "n/a")]
        row += [num(r["tok_per_s"]["mean"], 2), num(r["saved_act_mb"]["mean"], 2),
                num(r["peak_rss_mb"]["mean"], 2)]
        row.append("—" if is_base else _int(d["params"], signed=True))
        ef = st["conn_flops_per_token"]["mean"]
        if is_base or ef is None:
            row.append("—" if is_base else "n/a")
        else:
            pct = f" ({100 * ef / base_f:.2f}%)" if base_f else ""
            row.append(f"{ef:+,.0f}{pct}".replace("-", "−"))
        row.append(_int(st["loss_spikes"]))
        rows.append(row)
    return {"head": head, "rows": rows}


def paired_table(spec: CompareSpec, results: dict[str, Any]) -> Table:
    """Every directional metric of every arm: Δ, SE, interval, df, p, verdict, and the
    evaluation set's bootstrap error beside the seed error."""
    head = ["arm", "metric", "Δ mean", "SE (seeds)", "95% CI (t, df)", "p", "verdict",
            "eval-set SE (bootstrap)", "eval-set 95% CI"]
    rows = []
    for a in results["arms"]:
        if a["name"] == spec.baseline:
            continue
        for k, d in sorted(a["diff"].items()):
            if "verdict" not in d or not d["n"] or k == "val_loss":
                continue
            digits = 3 if k.startswith("mc:") else 4
            rows.append([a["label"], label(k), num(d["mean"], digits, True),
                         num(d["se"], digits), f"{ci(d['ci95'], digits)} (df {d['df']})",
                         pval(d["p"]), d["verdict"], num(d.get("eval_se"), 4),
                         ci(d.get("eval_ci95"))])
    return {"head": head, "rows": rows}


def convergence_table(spec: CompareSpec, results: dict[str, Any]) -> Table | None:
    """Tokens and seconds to the baseline's final validation value, speed-ups, equal compute."""
    arms = [a for a in results["arms"] if a.get("convergence")]
    if not arms:
        return None
    m = label(arms[0]["convergence"]["metric"])
    base = next(a for a in results["arms"] if a["name"] == spec.baseline)["label"]
    head = ["arm", "eval points", f"tokens to {base}'s final {m} (per seed)",
            "speed-up, tokens [95% CI]", "speed-up, training time [95% CI]",
            f"Δ {m} at {base}'s training time [95% CI]", "verdict at equal time"]
    rows = []
    for a in arms:
        c = a["convergence"]
        toks = ", ".join("not reached" if t is None else f"{t:,.0f}"
                         for t in c["tokens_to_baseline"])
        eq = c["at_baseline_time"]
        d = eq["diff"]
        note = " (≤: finished sooner)" if any(eq["upper_bound"]) else ""
        v = verdict(d, higher_is_better=False) or "n/a"  # bpb or loss: lower is better
        pts = sorted({p for p in c["points"] if p is not None})
        rows.append([a["label"], "/".join(str(p) for p in pts), toks,
                     speedup(c, "speedup_tokens"), speedup(c, "speedup_time"),
                     delta_ci(d) + note, v])
    return {"head": head, "rows": rows}


def suites_table(results: dict[str, Any]) -> Table | None:
    """Multiple-choice suites: items, chance and every arm's accuracy with its Wilson interval;
    a suite too small or at chance for every arm says so."""
    arms = results["arms"]
    names = sorted({s for a in arms for s in a["mc"]})
    if not names:
        return None
    head = ["suite", "items", "chance"] + [a["label"] for a in arms] + ["read as"]
    rows = []
    for s in names:
        first = next(a["mc"][s] for a in arms if s in a["mc"])
        cells = []
        for a in arms:
            r = a["mc"].get(s)
            cells.append("n/a" if r is None else
                         f"{r['accuracy']:.3f} {ci(r['ci95'], 3, signed=False)}")
        notes = []
        if first["few_items"]:
            notes.append(f"too few items (< {MIN_ITEMS}) to read")
        if first.get("at_chance_every_arm"):
            notes.append("at chance for every arm")
        below = [a["label"] for a in arms if s in a["mc"] and a["mc"][s]["chance"] is not None
                 and a["mc"][s]["ci95"][1] < a["mc"][s]["chance"]]
        if below:
            notes.append("below chance: " + ", ".join(below))
        rows.append([s, str(first["items"]), num(first["chance"], 2)] + cells
                    + ["; ".join(notes) or "readable"])
    return {"head": head, "rows": rows}


def collapse_table(results: dict[str, Any]) -> Table | None:
    """Stream collapse of the n-stream arms: the share of the state's energy in its largest
    stream (1/n balanced, 1 collapsed), seed means; None when no arm has streams."""
    arms = [a for a in results["arms"] if a["stats"].get("stream_share_mean", {}).get("n")]
    if not arms:
        return None
    head = ["arm", "balanced (1/n)", "mean over sublayers", "max over sublayers",
            "final state"]
    rows = [[a["label"]] + [num(a["stats"][k]["mean"], 3) for k in
                            ("stream_share_balanced", "stream_share_mean", "stream_share_max",
                             "stream_share_final")] for a in arms]
    return {"head": head, "rows": rows}


def paper_tables(spec: CompareSpec, results: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """One table per paper reference (its numbers beside our paired Δ with interval and a
    claim verdict), and the flat list of claims for results.json."""
    arms = {a["name"]: a for a in results["arms"]}
    tables, claims = [], []
    for ref in spec.paper:
        pb = None if ref.deltas else ref.values.get(spec.baseline)
        rows = []
        for arm in spec.arms:
            if arm.name not in ref.values and arm.name != spec.baseline:
                continue
            if arm.name not in arms:
                continue
            pv = ref.values.get(arm.name)
            is_base = arm.name == spec.baseline
            if ref.deltas:
                p_abs, p_delta = None, None if is_base else pv
            else:
                p_abs = pv
                p_delta = None if is_base or pv is None or pb is None else pv - pb
            a = arms[arm.name]
            ours = a["diff"].get(ref.ours)
            claim = "—" if is_base else claim_verdict(p_delta, ours)
            rows.append([arm.display, "n/a" if p_abs is None else f"{p_abs:g}",
                         "—" if p_delta is None else num(p_delta, 3, True),
                         fmt(a["stats"].get(ref.ours)),
                         "—" if is_base else delta_ci(ours), claim])
            if not is_base:
                claims.append({"source": ref.source, "metric": ref.metric, "arm": arm.name,
                               "paper_delta": p_delta, "ours": ref.ours,
                               "ours_diff": None if ours is None else
                               {k: ours.get(k) for k in ("mean", "ci95", "p", "df", "n")},
                               "verdict": claim})
        tables.append({"source": ref.source, "metric": ref.metric, "notes": ref.notes,
                       "head": ["arm", f"paper: {ref.metric}", "paper Δ vs baseline",
                                f"ours: {label(ref.ours)}",
                                "ours: Δ vs baseline [95% CI]", "claim"],
                       "rows": rows})
    return tables, claims


def build_all(spec: CompareSpec, results: dict[str, Any]) -> dict[str, Any]:
    papers, claims = paper_tables(spec, results)
    return {"verdicts": verdict_lines(spec, results), "settings": settings_rows(spec, results),
            "main": main_table(spec, results), "paired": paired_table(spec, results),
            "convergence": convergence_table(spec, results),
            "suites": suites_table(results), "collapse": collapse_table(results),
            "sweep": sweep_table(results),
            "papers": papers, "claims": claims}
