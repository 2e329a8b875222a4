"""Figures of the comparison report (matplotlib, Agg backend, PNG).

Each function takes per-arm lists of :func:`hyperfrac.analysis.analyze.analyze_run` results
(one per seed; seed-level curves are averaged where the figure says so) and writes one PNG:

* ``loss_curves.png`` — training loss and validation bits-per-byte against tokens;
* ``cosine.png`` — adjacent-layer cosine similarity of the layer inputs, median and 5-95% band
  per layer (HC Fig. 3, FC Fig. 2);
* ``unfolded_<arm>.png`` and ``unfolded_streams_<arm>.png`` — token-averaged unfolded
  connection matrix and its per-stream parts (HC Eq. 27-29, Figs. 7 and 13); FC arms show the
  (R x R) fraction blocks expanded;
* ``amax_gain.png`` — single-layer and composite Amax gain of the residual mixing across depth
  (mHC Fig. 3), forward (row sums) and backward (column sums);
* ``grad_norms.png`` — gradient norm per sublayer at the final checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

Results = dict[str, list[dict[str, Any]]]  # arm name -> one analyze_run result per seed


def _plt():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "figures need matplotlib: pip install 'hyperfrac[plot]' (or pip install matplotlib)"
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(names: list[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def _sublayer_names(n_layers: int) -> list[str]:
    return [f"{i // 2}.{'attn' if i % 2 == 0 else 'ffn'}" for i in range(n_layers)]


def _label(labels: dict[str, str] | None, name: str) -> str:
    return (labels or {}).get(name, name)


def plot_loss_curves(results: Results, path: Path, labels: dict[str, str] | None = None) -> Path:
    """Training loss (mean over seeds, each seed faint) and validation bpb against tokens."""
    plt = _plt()
    colors = _colors(list(results))
    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in results.items():
        c = colors[name]
        curves = [r["curves"]["train"] for r in runs if r["curves"]["train"]["step"]]
        for cv in curves:
            if len(curves) > 1:
                ax_t.plot(cv["tokens"], cv["loss"], color=c, alpha=0.25, lw=0.8)
        if curves:
            n = min(len(cv["loss"]) for cv in curves)
            mean = np.mean([cv["loss"][:n] for cv in curves], axis=0)
            ax_t.plot(curves[0]["tokens"][:n], mean, color=c, lw=1.6,
                      label=f"{_label(labels, name)} (n={len(curves)})")
        vals = [r["curves"]["val"] for r in runs if r["curves"]["val"]["step"]]
        key = "bpb" if vals and vals[0]["bpb"][0] is not None else "accuracy"
        if vals and vals[0].get(key) and vals[0][key][0] is not None:
            n = min(len(v[key]) for v in vals)
            mean = np.mean([v[key][:n] for v in vals], axis=0)
            ax_v.set(ylabel="validation bits per byte" if key == "bpb" else "test accuracy",
                     title=f"Validation {'bpb' if key == 'bpb' else 'accuracy'} "
                     "(mean over seeds)")
            ax_v.plot(vals[0]["tokens"][:n], mean, "o-", color=c, lw=1.4, ms=4,
                      label=_label(labels, name))
    ax_t.set(xlabel="training tokens (images for a ViT)",
             ylabel="training loss (nats, interval mean)", title="Training loss (mean over seeds)")
    ax_v.set(xlabel="training tokens (images for a ViT)")
    for ax in (ax_t, ax_v):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cosine(results: Results, path: Path, labels: dict[str, str] | None = None) -> Path:
    """Cosine similarity between the inputs of sublayers k and k+1: median line, 5-95% band
    (first seed of each arm), as in HC Fig. 3 / FC Fig. 2."""
    plt = _plt()
    colors = _colors(list(results))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    n_max = 0
    for name, runs in results.items():
        cos = runs[0]["probe"].get("cosine")
        if cos is None:
            continue
        x = np.arange(len(cos["median"]))
        n_max = max(n_max, len(x))
        ax.plot(x, cos["median"], "o-", color=colors[name], lw=1.5, ms=3,
                label=_label(labels, name))
        ax.fill_between(x, cos["low"], cos["high"], color=colors[name], alpha=0.15)
    names = _sublayer_names(n_max + 1)
    ax.set_xticks(range(n_max))
    ax.set_xticklabels([f"{names[i]}→{names[i + 1]}" for i in range(n_max)],
                       rotation=60, ha="right", fontsize=7)
    tokens = next(iter(results.values()))[0]["probe"]["tokens"]
    ax.set(ylabel="cosine similarity of layer inputs",
           title=f"Adjacent-layer cosine similarity (median, 5–95% band; {tokens} tokens)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def expand_blocks(m: np.ndarray) -> np.ndarray:
    """(L, L+1, R, R) -> (L*R, (L+1)*R) image with each (R x R) block in place."""
    L, J, R, _ = m.shape
    return m.transpose(0, 2, 1, 3).reshape(L * R, J * R)


def _heatmap(ax, m: np.ndarray, vmax: float, title: str, annotate: bool):
    """One unfolded matrix (L, L+1, R, R) as an image; entries j > k (not inputs) greyed."""
    L, J, R, _ = m.shape
    img = expand_blocks(m)
    mask = np.zeros((L, J), dtype=bool)
    for k in range(L):
        mask[k, k + 1:] = True
    mask = np.repeat(np.repeat(mask, R, 0), R, 1)
    data = np.ma.array(img, mask=mask)
    im = ax.imshow(data, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.set_facecolor("#dddddd")
    names = _sublayer_names(L)
    step = max(1, L // 16)
    ax.set_yticks([k * R + (R - 1) / 2 for k in range(0, L, step)])
    ax.set_yticklabels([names[k] for k in range(0, L, step)], fontsize=7)
    xn = ["emb"] + names
    ax.set_xticks([j * R + (R - 1) / 2 for j in range(0, J, step)])
    ax.set_xticklabels([xn[j] for j in range(0, J, step)], rotation=90, fontsize=7)
    if R > 1:
        for b in range(1, max(L, J)):
            if b < J:
                ax.axvline(b * R - 0.5, color="white", lw=0.4)
            if b < L:
                ax.axhline(b * R - 0.5, color="white", lw=0.4)
    if annotate:
        for k in range(L * R):
            for j in range(J * R):
                if not mask[k, j]:
                    v = img[k, j]
                    ax.text(j, k, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                            color="white" if abs(v) > 0.6 * vmax else "black")
    ax.set(xlabel="output of (0 = embedding)", ylabel="input of sublayer", title=title)
    return im


def plot_unfolded(name: str, result: dict[str, Any], out_dir: Path,
                  label: str | None = None) -> list[Path]:
    """``unfolded_<arm>.png`` (HC Fig. 7) and, with several slots, ``unfolded_streams_<arm>.png``
    (HC Fig. 13: the contribution routed through each stream; the panels sum to the first)."""
    plt = _plt()
    label = label or name
    probe = result["probe"]
    m = np.asarray(probe["unfolded"], dtype=float)  # (L, L+1, R, R)
    per = np.asarray(probe["unfolded_per_stream"], dtype=float)  # (S, L, L+1, R, R)
    L, _, R, _ = m.shape
    annotate = L * R <= 16
    vmax = float(np.abs(m).max()) or 1.0
    paths = []
    size = max(4.5, 0.32 * (L + 1) * R + 2)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = _heatmap(ax, m, vmax, f"{label}: unfolded connection matrix\n"
                  f"(token mean over {probe['tokens']} tokens; HC Eq. 27, Fig. 7)", annotate)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    p = out_dir / f"unfolded_{safe_name(name)}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    S = per.shape[0]
    if S > 1:
        vmax_s = float(np.abs(per).max()) or 1.0
        cols = min(S, 4)
        rows = int(np.ceil(S / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(cols * size * 0.8 + 1.5,
                                                      rows * size * 0.8 + 1.0),
                                 squeeze=False, layout="constrained")
        for s in range(rows * cols):
            ax = axes[s // cols][s % cols]
            if s >= S:
                ax.axis("off")
                continue
            im = _heatmap(ax, per[s], vmax_s, f"stream {s}", annotate=False)
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7)
        fig.suptitle(f"{label}: unfolded matrix per stream (HC Eq. 28-29, Fig. 13)\n"
                     "the panels sum to the full matrix")
        p = out_dir / f"unfolded_streams_{safe_name(name)}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths


def plot_amax(results: Results, path: Path, labels: dict[str, str] | None = None) -> Path:
    """Amax gain magnitude per sublayer: single H_res and composite prod H_res (mHC Fig. 3)."""
    plt = _plt()
    colors = _colors(list(results))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in results.items():
        g = runs[0]["probe"]["amax"]
        for ax, kind in zip(axes, ("single", "composite"), strict=True):
            x = np.arange(len(g[f"{kind}_forward"]))
            ax.plot(x, g[f"{kind}_forward"], "-", color=colors[name], lw=1.5,
                    label=f"{_label(labels, name)} forward")
            ax.plot(x, g[f"{kind}_backward"], "--", color=colors[name], lw=1.2,
                    label=f"{_label(labels, name)} backward")
    values = [v for runs in results.values() for k, v in runs[0]["probe"]["amax"].items()]
    flat = [x for v in values for x in v]
    wide = max(flat) / max(min(flat), 1e-12) > 10  # log axis only over a wide range
    n = max(len(v) for v in values)
    names = _sublayer_names(n)
    for ax, kind in zip(axes, ("single-layer H_res", "composite H_res^l…H_res^1"), strict=True):
        if wide:
            ax.set_yscale("log")
        ax.set_xticks(range(n))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set(ylabel="Amax gain (max abs row / column sum)", title=f"Amax gain, {kind}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_grad_norms(results: Results, path: Path, labels: dict[str, str] | None = None) -> Path:
    """Gradient norm of each sublayer's parameters (with its norm and connection)."""
    plt = _plt()
    colors = _colors(list(results))
    fig, ax = plt.subplots(figsize=(8, 4))
    names: list[str] = []
    for name, runs in results.items():
        g = runs[0]["grad_norms"]
        names = g["names"] if len(g["names"]) > len(names) else names
        ax.plot(range(len(g["sublayer"])), g["sublayer"], "o-", color=colors[name], ms=3,
                label=_label(labels, name))
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="gradient L2 norm", title="Per-sublayer gradient norm at the final checkpoint")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def all_figures(results: Results, out_dir: Path, *, reference: str | None = None,
                labels: dict[str, str] | None = None) -> list[Path]:
    """Every figure of the report into ``out_dir``; returns the paths in report order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_loss_curves(results, out_dir / "loss_curves.png", labels),
        plot_cosine(results, out_dir / "cosine.png", labels),
        plot_amax(results, out_dir / "amax_gain.png", labels),
        plot_grad_norms(results, out_dir / "grad_norms.png", labels),
    ]
    for name, runs in results.items():
        paths += plot_unfolded(name, runs[0], out_dir, _label(labels, name))
    return paths
