"""Figures of the comparison report (matplotlib, Agg backend, PNG).

Each function takes per-arm lists of :func:`hyperfrac.analysis.analyze.analyze_run` results
(one per seed, in seed order) and writes one PNG. Seed-level values are averaged and the
figure says so; the unfolded matrices are per run and name the seed they show.

* ``loss_curves.png`` — training loss, the periodic validation value (bpb; loss or accuracy for
  a ViT) and its paired difference to the baseline against training tokens (images for a
  ViT); line = mean over seeds, band = range over seeds;
* ``loss_vs_time.png`` — the validation value against training seconds (equal compute);
* ``cosine.png`` — adjacent-layer cosine similarity of the layer inputs, median and 5-95% band
  per layer (HC Fig. 3, FC Fig. 2), mean over seeds;
* ``unfolded_<arm>.png`` and ``unfolded_streams_<arm>.png`` — token-averaged unfolded
  connection matrix with a last row for the final output, and its per-stream parts (HC Eq.
  27-29, Figs. 7 and 13); FC arms show the (R x R) fraction blocks expanded;
* ``amax_gain.png`` — single-layer and composite Amax gain of the residual mixing across depth
  (mHC Fig. 3), forward (row sums) and backward (column sums), mean over seeds;
* ``grad_norms.png`` — gradient norm per sublayer at the final checkpoint, mean over seeds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

Results = dict[str, list[dict[str, Any]]]  # arm name -> one analyze_run result per seed
_MARKERS = "osD^vP*Xh<>p"
_BASE_STYLE = {"color": "0.55", "lw": 4.0, "alpha": 0.6, "zorder": 1}


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


def _seed(result: dict[str, Any], default: int) -> int:
    m = re.search(r"-seed(\d+)$", Path(str(result.get("run", ""))).name)
    return int(m.group(1)) if m else default


def _is_vision(results: Results) -> bool:
    return any(r["model"].get("task") == "vision" for runs in results.values() for r in runs)


def _save(fig, path: Path, dpi: int = 110) -> Path:
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def _stack(curves: list[list[float]]) -> np.ndarray:
    n = min(len(c) for c in curves)
    return np.asarray([c[:n] for c in curves], dtype=float)


def _band(ax, x, ys: np.ndarray, color, label: str | None, marker: str | None = None) -> None:
    """Mean line over the rows of ``ys`` and the range over rows as a band."""
    ax.plot(x, ys.mean(0), color=color, lw=1.6, marker=marker, ms=3, label=label)
    if len(ys) > 1:
        ax.fill_between(x, ys.min(0), ys.max(0), color=color, alpha=0.18, lw=0)


def val_key(runs: list[dict[str, Any]]) -> str | None:
    """Which validation curve to draw: bpb (LM), else accuracy (ViT), else loss."""
    vals = [r["curves"]["val"] for r in runs if r["curves"]["val"]["step"]]
    if not vals:
        return None
    for key in ("bpb", "accuracy", "loss"):
        if all(v.get(key) and all(x is not None for x in v[key]) for v in vals):
            return key
    return None


_VAL_LABEL = {"bpb": "validation bits per byte", "accuracy": "test accuracy",
              "loss": "validation loss (nats)"}


def plot_loss_curves(results: Results, path: Path, labels: dict[str, str] | None = None,
                     reference: str | None = None) -> Path:
    """Training loss, validation value and its paired Δ to ``reference`` against tokens."""
    plt = _plt()
    colors = _colors(list(results))
    unit = "images" if _is_vision(results) else "tokens"
    with_delta = reference in results and len(results) > 1
    fig, axes = plt.subplots(1, 3 if with_delta else 2, figsize=(16 if with_delta else 11, 4.3))
    ax_t, ax_v = axes[0], axes[1]
    key = val_key(next(iter(results.values())))
    n_seeds = max(len(v) for v in results.values())
    for i, (name, runs) in enumerate(results.items()):
        c, mk = colors[name], _MARKERS[i % len(_MARKERS)]
        train = [r["curves"]["train"] for r in runs if r["curves"]["train"]["step"]]
        if train:
            ys = _stack([t["loss"] for t in train])
            _band(ax_t, train[0]["tokens"][: ys.shape[1]], ys, c, _label(labels, name))
        vals = [r["curves"]["val"] for r in runs if r["curves"]["val"]["step"]]
        if key and vals:
            ys = _stack([v[key] for v in vals])
            _band(ax_v, vals[0]["tokens"][: ys.shape[1]], ys, c, _label(labels, name), mk)
    if with_delta and key:
        ax_d = axes[2]
        base = {_seed(r, j): r["curves"]["val"] for j, r in enumerate(results[reference])}
        ax_d.axhline(0.0, **{**_BASE_STYLE, "lw": 2.0},
                     label=f"{_label(labels, reference)} (= 0)")
        for i, (name, runs) in enumerate(results.items()):
            if name == reference:
                continue
            pairs = [(r["curves"]["val"], base[_seed(r, j)]) for j, r in enumerate(runs)
                     if _seed(r, j) in base]
            pairs = [(a, b) for a, b in pairs if a["step"] and a["step"] == b["step"]]
            if not pairs:
                continue
            ys = _stack([list(np.subtract(a[key], b[key])) for a, b in pairs])
            _band(ax_d, pairs[0][0]["tokens"][: ys.shape[1]], ys, colors[name],
                  f"{_label(labels, name)} ({len(pairs)} paired seeds)",
                  _MARKERS[i % len(_MARKERS)])
        ax_d.set(xlabel=f"training {unit}", ylabel=f"Δ {_VAL_LABEL[key]} (arm − baseline)",
                 title=f"Paired difference to {_label(labels, reference)}")
    ax_t.set(xlabel=f"training {unit}", ylabel="training loss (nats, mean of each log interval)",
             title="Training loss")
    if key:
        points = len(next(iter(results.values()))[0]["curves"]["val"]["step"])
        ax_v.set(xlabel=f"training {unit}", ylabel=_VAL_LABEL[key],
                 title=f"Validation ({points} evaluations on a fixed subset)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    fig.suptitle(f"Line = mean over seeds (up to {n_seeds}), band = range over seeds",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_loss_vs_time(results: Results, path: Path, labels: dict[str, str] | None = None,
                      reference: str | None = None) -> Path | None:
    """The validation value against training seconds (equal compute); None without times."""
    from hyperfrac.analysis.analyze import curve_seconds

    plt = _plt()
    colors = _colors(list(results))
    key = val_key(next(iter(results.values())))
    if key is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.3))
    drawn = False
    for i, (name, runs) in enumerate(results.items()):
        secs = [curve_seconds(r["curves"]) for r in runs]
        pairs = [(s, r["curves"]["val"][key]) for s, r in zip(secs, runs, strict=True) if s]
        if not pairs:
            continue
        drawn = True
        xs, ys = _stack([p[0] for p in pairs]), _stack([p[1] for p in pairs])
        mk = _MARKERS[i % len(_MARKERS)]
        ax.plot(xs.mean(0), ys.mean(0), color=colors[name], lw=1.6, marker=mk, ms=3,
                label=_label(labels, name))
        for x, y in zip(xs, ys, strict=True):
            if len(xs) > 1:
                ax.plot(x, y, color=colors[name], lw=0.7, alpha=0.35)
        if name == reference:
            ax.axvline(xs[:, -1].mean(), color=colors[name], ls=":", lw=1.2,
                       label=f"{_label(labels, name)} training time")
    if not drawn:
        _plt().close(fig)
        return None
    ax.set(xlabel="training seconds (evaluation pauses excluded)", ylabel=_VAL_LABEL[key],
           title="Equal compute: validation against training time (mean over seeds; thin = "
                 "each seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_cosine(results: Results, path: Path, labels: dict[str, str] | None = None) -> Path:
    """Cosine similarity between the inputs of sublayers k and k+1: median line and 5-95%
    band, each the mean over seeds (HC Fig. 3 / FC Fig. 2)."""
    plt = _plt()
    colors = _colors(list(results))
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    n_max, n_seeds = 0, 0
    for i, (name, runs) in enumerate(results.items()):
        cos = [r["probe"]["cosine"] for r in runs if r["probe"].get("cosine")]
        if not cos:
            continue
        n_seeds = max(n_seeds, len(cos))
        med, lo, hi = (_stack([c[k] for c in cos]).mean(0) for k in ("median", "low", "high"))
        x = np.arange(len(med))
        n_max = max(n_max, len(x))
        ax.plot(x, med, color=colors[name], lw=1.5, marker=_MARKERS[i % len(_MARKERS)], ms=4,
                label=_label(labels, name))
        ax.fill_between(x, lo, hi, color=colors[name], alpha=0.15)
    names = _sublayer_names(n_max + 1)
    ax.set_xticks(range(n_max))
    ax.set_xticklabels([f"{names[i]}→{names[i + 1]}" for i in range(n_max)],
                       rotation=45, ha="right", fontsize=9)
    tokens = next(iter(results.values()))[0]["probe"]["tokens"]
    ax.set(xlabel="adjacent sublayers (input of k → input of k+1)",
           ylabel="cosine similarity of layer inputs",
           title=f"Adjacent-layer cosine similarity (median, 5–95% band over {tokens} tokens; "
                 f"mean of {n_seeds} seed{'s' if n_seeds != 1 else ''})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def expand_blocks(m: np.ndarray) -> np.ndarray:
    """(L, L+1, R, R) -> (L*R, (L+1)*R) image with each (R x R) block in place."""
    L, J, R, _ = m.shape
    return m.transpose(0, 2, 1, 3).reshape(L * R, J * R)


def with_final_row(m: np.ndarray, final: np.ndarray | None) -> np.ndarray:
    """Append the final output's row (L+1, R, R) to an unfolded matrix (L, L+1, R, R)."""
    if final is None:
        return m
    return np.concatenate([m, final[None]], axis=0)


def _heatmap(ax, m: np.ndarray, vmax: float, title: str, annotate: bool, final: bool,
             fontsize: float = 9):
    """One unfolded matrix (rows, L+1, R, R) as an image; entries that are not inputs greyed.
    With ``final`` the last row is the model's output (every column is an input of it)."""
    rows, J, R, _ = m.shape
    L = J - 1
    img = expand_blocks(m)
    mask = np.zeros((rows, J), dtype=bool)
    for k in range(min(rows, L)):
        mask[k, k + 1:] = True
    mask = np.repeat(np.repeat(mask, R, 0), R, 1)
    data = np.ma.array(img, mask=mask)
    im = ax.imshow(data, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.set_facecolor("#dddddd")
    names = _sublayer_names(L)
    ynames = names + (["output"] if final else [])
    step = max(1, J // 16)
    ax.set_yticks([k * R + (R - 1) / 2 for k in range(0, rows, step)])
    ax.set_yticklabels([ynames[k] for k in range(0, rows, step)], fontsize=fontsize)
    xn = ["emb"] + names
    ax.set_xticks([j * R + (R - 1) / 2 for j in range(0, J, step)])
    ax.set_xticklabels([xn[j] for j in range(0, J, step)], rotation=90, fontsize=fontsize)
    if R > 1:
        for b in range(1, max(rows, J)):
            if b < J:
                ax.axvline(b * R - 0.5, color="white", lw=0.5)
            if b < rows:
                ax.axhline(b * R - 0.5, color="white", lw=0.5)
    if final:
        ax.axhline(L * R - 0.5, color="black", lw=1.2)
    if annotate:
        for k in range(rows * R):
            for j in range(J * R):
                if not mask[k, j]:
                    v = img[k, j]
                    ax.text(j, k, f"{v:.2f}", ha="center", va="center", fontsize=fontsize - 1,
                            color="white" if abs(v) > 0.6 * vmax else "black")
    ax.set(xlabel="output of (emb = embedding)", ylabel="input of sublayer", title=title)
    return im


def _unfolded_size(rows: int, cols: int) -> tuple[float, float]:
    """Figure inches for a (rows x cols) matrix image: 0.45 in per cell, capped at 9 in."""
    scale = min(0.45, 9.0 / max(rows, cols))
    return max(4.5, cols * scale + 2.2), max(3.8, rows * scale + 1.6)


def plot_unfolded(name: str, result: dict[str, Any], out_dir: Path,
                  label: str | None = None, seed: int | None = None) -> list[Path]:
    """``unfolded_<arm>.png`` (HC Fig. 7) and, with several slots, ``unfolded_streams_<arm>.png``
    (HC Fig. 13: the contribution routed through each stream; the panels sum to the first).
    The last row of both is the model's final output (when the analysis has it)."""
    plt = _plt()
    label = label or name
    probe = result["probe"]
    final = probe.get("unfolded_final")
    m = with_final_row(np.asarray(probe["unfolded"], dtype=float),
                       None if final is None else np.asarray(final, dtype=float))
    per = np.asarray(probe["unfolded_per_stream"], dtype=float)  # (S, L, L+1, R, R)
    final_s = probe.get("unfolded_final_per_stream")
    if final_s is not None:
        per = np.concatenate([per, np.asarray(final_s, dtype=float)[:, None]], axis=1)
    rows, J, R, _ = m.shape
    annotate = rows * R <= 18 and J * R <= 18
    vmax = float(np.abs(m).max()) or 1.0
    which = f"seed {seed}" if seed is not None else "one run"
    w, h = _unfolded_size(rows * R, J * R)
    fig, ax = plt.subplots(figsize=(w + 1.0, h))
    im = _heatmap(ax, m, vmax, f"{label}: unfolded connection matrix ({which})\n"
                  f"token mean over {probe['tokens']} tokens; HC Eq. 27, Fig. 7",
                  annotate, final is not None)
    fig.colorbar(im, ax=ax, shrink=0.8, label="weight")
    fig.tight_layout()
    paths = [_save(fig, out_dir / f"unfolded_{safe_name(name)}.png")]
    S = per.shape[0]
    if S > 1:
        vmax_s = float(np.abs(per).max()) or 1.0
        cols = min(S, 4)
        nrows = int(np.ceil(S / cols))
        pw = min(4.2, 16.0 / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(cols * pw + 1.2, nrows * pw + 1.2),
                                 squeeze=False, layout="constrained")
        for s in range(nrows * cols):
            ax = axes[s // cols][s % cols]
            if s >= S:
                ax.axis("off")
                continue
            im = _heatmap(ax, per[s], vmax_s, f"stream {s}", annotate=False,
                          final=final_s is not None, fontsize=9 if J * R <= 20 else 8)
            if s % cols:
                ax.set_ylabel("")
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7, label="weight")
        fig.suptitle(f"{label}: unfolded matrix per stream ({which}; HC Eq. 28-29, Fig. 13); "
                     "the panels sum to the full matrix")
        paths.append(_save(fig, out_dir / f"unfolded_streams_{safe_name(name)}.png", dpi=100))
    return paths


def _draw_reference(ax, x, y, name: str, reference: str | None, color, marker: str,
                    label: str, ls: str = "-") -> None:
    """The baseline as a thick grey line under everything, other arms with markers."""
    if name == reference:
        ax.plot(x, y, ls=ls, label=label, **_BASE_STYLE)
    else:
        ax.plot(x, y, ls=ls, color=color, lw=1.4, marker=marker, ms=4, label=label, zorder=3)


def plot_amax(results: Results, path: Path, labels: dict[str, str] | None = None,
              reference: str | None = None) -> Path:
    """Amax gain magnitude per sublayer: single H_res and composite prod H_res (mHC Fig. 3),
    mean over seeds; the baseline drawn under the others so that no arm hides it."""
    plt = _plt()
    colors = _colors(list(results))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    flat: list[float] = []
    n = 0
    for i, (name, runs) in enumerate(results.items()):
        mk = _MARKERS[i % len(_MARKERS)]
        for ax, kind in zip(axes, ("single", "composite"), strict=True):
            for direction, ls in (("forward", "-"), ("backward", "--")):
                y = _stack([r["probe"]["amax"][f"{kind}_{direction}"] for r in runs]).mean(0)
                flat += list(y)
                n = max(n, len(y))
                _draw_reference(ax, np.arange(len(y)), y, name, reference, colors[name], mk,
                                f"{_label(labels, name)} {direction}", ls)
    wide = max(flat) / max(min(flat), 1e-12) > 10  # log axis only over a wide range
    names = _sublayer_names(n)
    for ax, kind in zip(axes, ("single-layer H_res", "composite H_res^l…H_res^1"), strict=True):
        if wide:
            ax.set_yscale("log")
        ax.set_xticks(range(n))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=9)
        ax.set(xlabel="sublayer l", ylabel="Amax gain (max abs row / column sum)",
               title=f"Amax gain, {kind} (mean over seeds)")
        ax.axhline(1.0, color="black", lw=0.6, ls=":")
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def plot_grad_norms(results: Results, path: Path, labels: dict[str, str] | None = None,
                    reference: str | None = None) -> Path:
    """Gradient norm of each sublayer's parameters (with its norm and connection), mean over
    seeds."""
    plt = _plt()
    colors = _colors(list(results))
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    names: list[str] = []
    for i, (name, runs) in enumerate(results.items()):
        g = [r["grad_norms"] for r in runs]
        names = g[0]["names"] if len(g[0]["names"]) > len(names) else names
        y = _stack([x["sublayer"] for x in g]).mean(0)
        _draw_reference(ax, np.arange(len(y)), y, name, reference, colors[name],
                        _MARKERS[i % len(_MARKERS)], _label(labels, name))
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=9)
    ax.set(xlabel="sublayer (block.attn / block.ffn, each with its norm and connection)",
           ylabel="gradient L2 norm",
           title="Per-sublayer gradient norm at the final checkpoint (mean over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def all_figures(results: Results, out_dir: Path, *, reference: str | None = None,
                labels: dict[str, str] | None = None) -> list[Path]:
    """Every figure of the report into ``out_dir``; returns the paths in report order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [plot_loss_curves(results, out_dir / "loss_curves.png", labels, reference)]
    timed = plot_loss_vs_time(results, out_dir / "loss_vs_time.png", labels, reference)
    paths += [timed] if timed else []
    paths += [
        plot_cosine(results, out_dir / "cosine.png", labels),
        plot_amax(results, out_dir / "amax_gain.png", labels, reference),
        plot_grad_norms(results, out_dir / "grad_norms.png", labels, reference),
    ]
    for name, runs in results.items():
        paths += plot_unfolded(name, runs[0], out_dir, _label(labels, name), _seed(runs[0], 0))
    return paths
