"""Results of a comparison: statistics over seeds, ``results.json``, ``summary.md`` and a
self-contained ``report.html`` (figures embedded as data URIs, no server, no network).

Statistics: for every arm and metric the mean over seeds and its standard error
(sample std / √n, shown only for n >= 2); differences to the baseline are **paired by seed**
(same data order and initial weights), mean ± standard error of the per-seed differences;
speed and memory are per-seed ratios to the baseline, averaged. A metric a run does not have
(no held-out split, no multiple-choice suite, in-process training without a peak-RSS
measurement) is ``null`` in JSON and "n/a" in the tables — never filled in.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
from pathlib import Path
from typing import Any

from hyperfrac.compare.spec import CompareSpec


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
    for split, r in m.get("heldout", {}).items():
        flat[f"heldout_bpb:{split}"] = r["bpb"]
    for suite, acc in m.get("mc", {}).items():
        flat[f"mc:{suite}"] = acc
    return flat


def aggregate(spec: CompareSpec, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-arm statistics over seeds, paired differences and ratios to the baseline."""
    by = {(r["arm"], r["seed"]): _run_metrics(r) for r in runs}
    keys = sorted({k for m in by.values() for k in m})
    base = spec.baseline
    out: dict[str, Any] = {}
    for arm in spec.arms:
        seeds = [s for s in spec.seeds if (arm.name, s) in by]
        stats = {k: mean_se([by[(arm.name, s)].get(k) for s in seeds]) for k in keys}
        diffs, ratios = {}, {}
        for k in keys:
            pairs = [(by[(arm.name, s)].get(k), by.get((base, s), {}).get(k)) for s in seeds]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            diffs[k] = mean_se([a - b for a, b in pairs])
            ratios[k] = mean_se([a / b for a, b in pairs if b])
        out[arm.name] = {"stats": stats, "diff": diffs, "ratio": ratios, "seeds": seeds}
    return out


# -------------------------------------------------------------------------------- format


def fmt(stat: dict[str, Any] | None, digits: int = 4, signed: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    s = f.format(stat["mean"]).replace("-", "−")
    if stat.get("se") is not None:
        s += " ± " + f"{stat['se']:.{digits}f}"
    return s


def _int(stat: dict[str, Any] | None, signed: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    return (f"{stat['mean']:+,.0f}" if signed else f"{stat['mean']:,.0f}").replace("-", "−")


def table_rows(spec: CompareSpec, agg: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main results table."""
    base = spec.baseline
    extra = sorted({k for a in agg.values() for k, v in a["stats"].items()
                    if (k.startswith("heldout_bpb:") or k.startswith("mc:")) and v["n"]})
    heldout = [k for k in extra if k.startswith("heldout_bpb:")]
    mc = [k for k in extra if k.startswith("mc:")]
    vision = any(a["stats"].get("val_acc", {}).get("n") for a in agg.values())
    head = (["arm", "test acc", f"Δ test acc vs {base}"] if vision
            else ["arm", "val bpb", f"Δ val bpb vs {base}"])
    main = "val_acc" if vision else "val_bpb"
    if heldout:
        for k in heldout:
            head += [f"{k.split(':', 1)[1]} bpb", "Δ"]
    else:
        head += ["held-out bpb", "Δ"]
    head += [f"{k.split(':', 1)[1]} acc" for k in mc] or ["MC acc"]
    head += ["tok/s ×", "act. mem ×", "peak RSS ×", "extra params", "extra FLOPs/token",
             "spikes"]
    rows = []
    for arm in spec.arms:
        a = agg[arm.name]
        st, d, r = a["stats"], a["diff"], a["ratio"]
        is_base = arm.name == base
        row = [f"{arm.display} ({len(a['seeds'])} seed{'s' if len(a['seeds']) != 1 else ''})",
               fmt(st[main]), "—" if is_base else fmt(d[main], signed=True)]
        if heldout:
            for k in heldout:
                row += [fmt(st[k]), "—" if is_base else fmt(d.get(k), signed=True)]
        else:
            row += ["n/a", "n/a"]
        row += [fmt(st[k], 3) for k in mc] or ["n/a"]
        row += [fmt(r["tok_per_s"], 2), fmt(r["saved_act_mb"], 2), fmt(r.get("peak_rss_mb"), 2)]
        base_f = agg[base]["stats"]["model_flops_per_token"]["mean"]
        dp = d["params"]
        row.append("—" if is_base else _int(dp, signed=True))
        ef = st["conn_flops_per_token"]["mean"]
        if is_base or ef is None:
            row.append("—" if is_base else "n/a")
        else:
            pct = f" ({100 * ef / base_f:.2f}%)" if base_f else ""
            row.append(f"{ef:+,.0f}{pct}".replace("-", "−"))
        row.append(_int(st["loss_spikes"]))
        rows.append(row)
    return head, rows


def paper_rows(spec: CompareSpec, agg: dict[str, Any]) -> list[dict[str, Any]]:
    """One table per paper reference: the paper's numbers beside ours (same arms)."""
    tables = []
    for ref in spec.paper:
        pb = None if ref.deltas else ref.values.get(spec.baseline)
        rows = []
        for arm in spec.arms:
            if arm.name not in ref.values and arm.name != spec.baseline:
                continue
            pv = ref.values.get(arm.name)
            is_base = arm.name == spec.baseline
            if ref.deltas:
                p_abs, p_delta = "n/a", "—" if is_base or pv is None else f"{pv:+g}"
            else:
                p_abs = "n/a" if pv is None else f"{pv:g}"
                p_delta = ("—" if is_base or pv is None or pb is None
                           else f"{pv - pb:+.3f}")
            a = agg[arm.name]
            rows.append([
                arm.display, p_abs, p_delta.replace("-", "−"),
                fmt(a["stats"].get(ref.ours)),
                "—" if is_base else fmt(a["diff"].get(ref.ours), signed=True),
            ])
        tables.append({"source": ref.source, "metric": ref.metric, "notes": ref.notes,
                       "head": ["arm", f"paper: {ref.metric}", "paper Δ vs baseline",
                                f"ours: {ref.ours}", "ours: Δ vs baseline"],
                       "rows": rows})
    return tables


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


_NOTES = [
    "bpb = bits per byte (exact, from the byte length of every predicted token); lower is "
    "better. Δ = arm − baseline, paired by seed (same data order and initial weights), mean ± "
    "standard error over seeds (± only with two or more seeds).",
    "tok/s × = training tokens per second relative to the baseline (median of the logged "
    "intervals, same machine, arms run one after another); act. mem × = bytes autograd saves "
    "for backward in one training micro-batch; peak RSS × = peak resident memory of the "
    "training process (needs the default isolated training; n/a otherwise).",
    "extra params / FLOPs = connection parameters and forward FLOPs per token beyond the "
    "residual add (hyperfrac.connections.overhead); the percentage is of the baseline model's "
    "forward FLOPs per token.",
    "n/a = not measured in this run (e.g. no held-out split or multiple-choice suite is "
    "installed); never an estimate.",
]


def write_report(spec: CompareSpec, runs: list[dict[str, Any]], out: Path, *, budget: float,
                 machine: dict[str, Any], wall_s: float, figures: bool = True
                 ) -> dict[str, Any]:
    """Write results.json, figures/, summary.md and report.html into ``out``."""
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
    head, rows = table_rows(spec, agg)
    papers = paper_rows(spec, agg)
    first = runs[0]["analysis"]
    results = {
        "name": spec.name,
        "description": spec.description,
        "budget": budget,
        "baseline": spec.baseline,
        "machine": machine,
        "wall_s": wall_s,
        "train_wall_s": sum(r["train_wall_s"] or 0.0 for r in runs),
        "model": first["model"],
        "steps": first["step"],
        "tokens_per_run": first["tokens"],
        "arms": [{"name": a.name, "label": a.display, "connection": a.connection,
                  "overrides": a.overrides, **agg[a.name]} for a in spec.arms],
        "runs": [{"arm": r["arm"], "seed": r["seed"], "train_wall_s": r["train_wall_s"],
                  "peak_rss_mb": r["peak_rss_mb"], **r["analysis"]} for r in runs],
        "paper": [dataclasses.asdict(p) for p in spec.paper],
        "table": {"head": head, "rows": rows},
        "figures": [str(p.relative_to(out)) for p in fig_paths],
        "spec": spec.to_dict(),
    }
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(out / "results.json")
    (out / "summary.md").write_text(_summary_md(spec, results, head, rows, papers, fig_paths,
                                                out))
    (out / "report.html").write_text(_html(spec, results, head, rows, papers, fig_paths))
    return results


def _setting(results: dict[str, Any]) -> str:
    m = results["model"]
    mach = results["machine"]
    unit = "images" if m.get("task") == "vision" else "tokens"
    seq = f", seq {m['seq_len']}" if m.get("seq_len") else ""
    return (f"{m['n_layers']} layers × d={m['dim']}{' MoE' if m['moe'] else ''}{seq}, "
            f"{results['steps']} steps, {results['tokens_per_run']:,} {unit} per "
            f"run; machine: {mach['cpu_count']} CPUs, torch {mach['torch']}; training time "
            f"{results['train_wall_s'] / 60:.1f} min summed over the runs (including "
            f"interrupted sessions' last segment only), this invocation "
            f"{results['wall_s'] / 60:.1f} min")


def _summary_md(spec, results, head, rows, papers, fig_paths, out) -> str:
    parts = [f"# Comparison `{spec.name}`", ""]
    if spec.description:
        parts += [spec.description.strip(), ""]
    parts += [_setting(results) + ".", "", _md_table(head, rows), ""]
    parts += [f"* {n}" for n in _NOTES] + [""]
    for t in papers:
        parts += [f"## Paper: {t['source']}", "", _md_table(t["head"], t["rows"]), ""]
        if t["notes"]:
            parts += [t["notes"].strip(), ""]
    if fig_paths:
        parts += ["## Figures", ""]
        parts += [f"![{p.stem}]({p.relative_to(out)})" for p in fig_paths] + [""]
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.notes{font-size:13px;color:#444}
"""

_SCRIPT = """
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); });
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-ok', String(ok));
  document.body.setAttribute('data-errors', String(window.__errors.length));
});
"""


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _html(spec, results, head, rows, papers, fig_paths) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>hyperfrac compare: {esc(spec.name)}</title>",
        f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>",
        f"<h1>Comparison <code>{esc(spec.name)}</code></h1>",
    ]
    if spec.description:
        parts.append(f"<p>{esc(spec.description.strip())}</p>")
    parts.append(f"<p>{esc(_setting(results))}.</p>")
    parts.append(_html_table(head, rows))
    parts.append("<ul class='notes'>" + "".join(f"<li>{esc(n)}</li>" for n in _NOTES)
                 + "</ul>")
    for t in papers:
        parts.append(f"<h2>Paper: {esc(t['source'])}</h2>")
        parts.append(_html_table(t["head"], t["rows"]))
        if t["notes"]:
            parts.append(f"<p class='notes'>{esc(t['notes'].strip())}</p>")
    if fig_paths:
        parts.append("<h2>Figures</h2>")
        for p in fig_paths:
            data = base64.b64encode(Path(p).read_bytes()).decode()
            parts.append(f"<h3>{esc(p.stem)}</h3><img alt='{esc(p.stem)}' "
                         f"src='data:image/png;base64,{data}'>")
    parts.append("<p class='notes'>Every number is in results.json next to this file.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
