"""The report pages: ``summary.md`` and a self-contained ``report.html`` (figures embedded as
data URIs) with the same content in the same order: verdicts first, then run settings, the
results table, the paired statistics, convergence and equal compute, the suites, the papers'
numbers, notes, and every figure with a caption saying what it should show if the paper is
right."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from hyperfrac.compare.spec import CompareSpec

NOTES = [
    "bpb = bits per byte (exact, from the byte length of every predicted token); lower is "
    "better. The final numbers use the whole validation split; the curves, the convergence "
    "numbers and the equal-compute view use the periodic evaluations on the fixed subset "
    "named in the run settings.",
    "Δ = arm − baseline, paired by seed (same data order and initial weights). 95% CI = mean ± "
    "t(0.975, n − 1) × SE with SE = sd / √n over the n seeds; p = two-sided paired t-test of "
    "Δ = 0. Verdict from the interval: better / worse when it excludes 0 on that side, else "
    "no detectable difference; one seed has no interval (single seed — no uncertainty). With "
    "two seeds the interval has one degree of freedom (t = 12.7): only large effects show.",
    "Across arms the primary metric's p-values are Holm-adjusted (family-wise error 5%); the "
    "verdict line shows the adjusted p next to the per-arm one.",
    "eval-set SE / CI = bootstrap over validation windows (2000 resamples, the same windows "
    "for every run, seeds held fixed): how much the number would move on another validation "
    "set of this size. It is not part of the seed interval.",
    "Speed-up = baseline tokens (or training seconds) to reach the baseline's final "
    "validation value ÷ the arm's, per seed, interpolated between evaluations; geometric mean "
    "with a t-interval on the log scale. Training seconds exclude evaluation and checkpoint "
    "pauses and include other load on the machine.",
    "tok/s × = training tokens per second relative to the baseline (median of the logged "
    "intervals, same machine, arms run one after another); act. mem × = bytes autograd saves "
    "for backward in one training micro-batch; peak RSS × = peak resident memory of the "
    "training process (needs the default isolated training; n/a otherwise).",
    "extra params / FLOPs = connection parameters and forward FLOPs per token beyond the "
    "residual add (hyperfrac.connections.overhead); the percentage is of the baseline model's "
    "forward FLOPs per token.",
    "Multiple-choice suites: accuracy with a Wilson 95% interval over the items; a suite with "
    "fewer than 100 items, or whose interval contains chance for every arm, is marked so.",
    "n/a = not measured in this run; never an estimate.",
]

CAPTIONS = {
    "loss_curves": "Training loss (left), periodic validation value on the fixed evaluation "
                   "subset (middle) and its paired difference to the baseline at each "
                   "evaluation (right); line = mean over seeds, band = range over seeds. If "
                   "the papers are right (HC Fig. 1, FC Fig. 4), the connection arms run "
                   "below the baseline and the gap opens early (faster convergence).",
    "loss_vs_time": "Validation value against training seconds (evaluation pauses excluded): "
                    "the equal-compute view; dotted line = the baseline's training time. An "
                    "arm that wins per token but runs slower can lose at equal time.",
    "cosine": "Cosine similarity between the inputs of adjacent sublayers: median over the "
              "probed tokens, band = 5–95%, mean over seeds. HC Fig. 3 / FC Fig. 2: Pre-Norm "
              "near 1 in deep layers (representation collapse), HC lower with a wider band, "
              "FC in between.",
    "amax_gain": "Amax gain (max absolute row sum = forward, column sum = backward) of each "
                 "sublayer's residual mixing and of their product over depth, mean over "
                 "seeds. mHC Fig. 3: unconstrained HC's composite gain grows with depth (about "
                 "3000 at 27B), mHC's stays near 1 — Pre-Norm is exactly 1 (thick grey line, "
                 "drawn under the others).",
    "grad_norms": "Gradient norm of each sublayer's parameters (with its norm and connection) "
                  "on the probed windows at the final checkpoint, mean over seeds. No paper "
                  "figure; the stability argument (mHC §3.1) predicts no sublayer of mHC far "
                  "above the baseline's.",
    "unfolded": "Token-averaged unfolded connection matrix (HC Eq. 27, Fig. 7), first seed: "
                "row = input of a sublayer (last row = the model's final output after the "
                "streams are reduced), column = the embedding or an earlier sublayer's "
                "output; grey = not an input. Pre-Norm is a lower triangle of ones; HC Fig. 7 "
                "shows a Λ shape for a trained DHC (weak long-range weights, strong reuse of "
                "the embedding and early layers).",
    "unfolded_streams": "The unfolded matrix split by the stream (or fraction) that carries "
                        "each contribution (HC Eqs. 28–29, Fig. 13), first seed; the panels "
                        "sum to the full matrix. HC Fig. 13: the streams differ, long-range "
                        "weights often come in +/− pairs that cancel in the sum.",
}


def caption(path: Path) -> str:
    stem = path.stem
    for key in ("unfolded_streams", "unfolded", "loss_vs_time", "loss_curves"):
        if stem.startswith(key):
            return CAPTIONS[key]
    return CAPTIONS.get(stem, "")


def title(path: Path, labels: dict[str, str]) -> str:
    stem = path.stem
    for key, text in (("unfolded_streams_", "Unfolded matrix per stream"),
                      ("unfolded_", "Unfolded connection matrix")):
        if stem.startswith(key):
            arm = stem[len(key):]
            return f"{text}: {labels.get(arm, arm)}"
    return {"loss_curves": "Loss curves", "loss_vs_time": "Equal compute: validation vs time",
            "cosine": "Adjacent-layer cosine similarity", "amax_gain": "Amax gain",
            "grad_norms": "Gradient norms"}.get(stem, stem)


def _md_table(t: dict[str, list]) -> str:
    lines = ["| " + " | ".join(t["head"]) + " |", "|" + "---|" * len(t["head"])]
    lines += ["| " + " | ".join(r) + " |" for r in t["rows"]]
    return "\n".join(lines)


def _sections(built: dict[str, Any]) -> list[tuple[str, dict | None, str]]:
    return [
        ("Results", built["main"], ""),
        ("Learning-rate sweep", built.get("sweep"),
         "Final validation value (the trainer's last evaluation on the fixed validation "
         "subset) of each arm's short sweep runs on the first seed; every seed of the arm "
         "then trained at the lowest (←). Selected on validation text only, never on the "
         "held-out splits. A short run favours larger rates than a full-length one."),
        ("Paired differences", built["paired"],
         "Every metric with a better side, per arm; the seed interval and the evaluation "
         "set's bootstrap error side by side."),
        ("Convergence speed and equal compute", built["convergence"],
         "HC reports up to 1.8× faster convergence (OLMoE-1B-7B, HC Fig. 1); here: how many "
         "tokens and training seconds each arm needs to reach the baseline's final "
         "validation value, and where it stands when the baseline's training time is up."),
        ("Multiple-choice suites", built["suites"],
         "Built from held-out text in the training text's line format."),
        ("Stream collapse", built.get("collapse"),
         "Share of the stream state's energy in its largest stream, max_s ||h_s||² / "
         "Σ_s ||h_s||², token mean at each sublayer's input (arXiv 2606.03483 reports HC/mHC "
         "streams collapsing to one): 1/n is balanced, 1 is one stream carrying everything."),
    ]


def markdown(spec: CompareSpec, results: dict[str, Any], built: dict[str, Any],
             fig_paths: list[Path], out: Path) -> str:
    labels = {a["name"]: a["label"] for a in results["arms"]}
    parts = [f"# Comparison `{spec.name}`", ""]
    if spec.caveats:
        parts += ["**What this run can and cannot show:** " + " ".join(spec.caveats.split()),
                  ""]
    parts += ["## Verdicts", ""]
    parts += [f"* {v}" for v in built["verdicts"]] or ["* (baseline only)"]
    parts += [""]
    if spec.description:
        parts += [spec.description.strip(), ""]
    parts += ["## Run settings", "", _md_table({"head": ["setting", "value"],
                                                "rows": built["settings"]}), ""]
    for name, table, intro in _sections(built):
        if table is None or not table["rows"]:
            continue
        parts += [f"## {name}", ""] + ([intro, ""] if intro else []) + [_md_table(table), ""]
    for t in built["papers"]:
        parts += [f"## Paper: {t['source']}", "", _md_table(t), ""]
        if t["notes"]:
            parts += [t["notes"].strip(), ""]
    parts += ["## Notes", ""] + [f"* {n}" for n in NOTES] + [""]
    if fig_paths:
        parts += ["## Figures", ""]
        for p in fig_paths:
            parts += [f"### {title(p, labels)}", "", f"![{p.stem}]({p.relative_to(out)})", "",
                      caption(p), ""]
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3}
.settings td{text-align:left}
ul.verdicts{font-size:15px;line-height:1.5}
figure{margin:1.5em 0}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
figcaption,.notes{font-size:13px;color:#444}
"""

_SCRIPT = """
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); },
                        true);
(function () {
  var orig = console.error;
  console.error = function () {
    window.__errors.push(Array.prototype.join.call(arguments, ' '));
    return orig.apply(console, arguments);
  };
})();
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-ok', String(ok));
  document.body.setAttribute('data-errors', String(window.__errors.length));
});
"""


def _html_table(t: dict[str, list], cls: str = "") -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in t["head"])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in t["rows"])
    c = f" class='{cls}'" if cls else ""
    return f"<table{c}><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def html_page(spec: CompareSpec, results: dict[str, Any], built: dict[str, Any],
              fig_paths: list[Path]) -> str:
    esc = html.escape
    labels = {a["name"]: a["label"] for a in results["arms"]}
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>hyperfrac compare: {esc(spec.name)}</title>",
        f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>",
        f"<h1>Comparison <code>{esc(spec.name)}</code></h1>",
        ("<p class='caveats'><b>What this run can and cannot show:</b> "
         f"{esc(' '.join(spec.caveats.split()))}</p>") if spec.caveats else "",
        "<ul class='verdicts'>" + "".join(f"<li>{esc(v)}</li>" for v in built["verdicts"])
        + "</ul>",
    ]
    if spec.description:
        parts.append(f"<p>{esc(spec.description.strip())}</p>")
    parts.append("<h2>Run settings</h2>")
    parts.append(_html_table({"head": ["setting", "value"], "rows": built["settings"]},
                             "settings"))
    for name, table, intro in _sections(built):
        if table is None or not table["rows"]:
            continue
        parts.append(f"<h2>{esc(name)}</h2>")
        if intro:
            parts.append(f"<p class='notes'>{esc(intro)}</p>")
        parts.append(_html_table(table))
    for t in built["papers"]:
        parts.append(f"<h2>Paper: {esc(t['source'])}</h2>")
        parts.append(_html_table(t))
        if t["notes"]:
            parts.append(f"<p class='notes'>{esc(t['notes'].strip())}</p>")
    parts.append("<h2>Notes</h2><ul class='notes'>"
                 + "".join(f"<li>{esc(n)}</li>" for n in NOTES) + "</ul>")
    if fig_paths:
        parts.append("<h2>Figures</h2>")
        for p in fig_paths:
            data = base64.b64encode(Path(p).read_bytes()).decode()
            parts.append(f"<figure><h3>{esc(title(p, labels))}</h3><img alt='{esc(p.stem)}' "
                         f"src='data:image/png;base64,{data}'>"
                         f"<figcaption>{esc(caption(p))}</figcaption></figure>")
    parts.append("<p class='notes'>Every number is in results.json next to this file.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
