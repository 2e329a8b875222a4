"""``hyperfrac analyze RUN_DIR``: every number the comparison report shows, for one trained run.

For the latest complete checkpoint of a run folder (or a given one):

* **metrics**: validation loss and bits-per-byte over the whole validation split, with the
  per-window sums (``windows``: NLL, bytes, tokens of every validation window, for the report's
  bootstrap over the evaluation set); held-out splits and multiple-choice suites (accuracy, and
  under ``mc_detail`` items, correct, chance and Wilson interval) when the dataset / eval
  package provide them (else absent, shown as "n/a"); training tokens/s (median of the logged
  intervals); activation memory (bytes autograd saves for backward in one training
  micro-batch); parameters, connection parameters
  and forward FLOPs per token (:func:`hyperfrac.connections.overhead`); loss spikes and
  non-finite steps from ``metrics.jsonl``;
* **curves**: training and validation loss from ``metrics.jsonl``, with the cumulative
  training seconds at every point (logged tokens / tokens per second; evaluation and
  checkpoint pauses excluded);
* **probes** on ``windows`` validation windows (:class:`~hyperfrac.analysis.ConnectionProbe`):
  adjacent-layer cosine similarity of the layer inputs per layer, median and 5-95% band
  (HC Fig. 3, FC Fig. 2); token-averaged unfolded connection matrices, also per stream
  (HC Eq. 27-29, Figs. 7 and 13); single and composite Amax gains across depth (mHC §3.1,
  Fig. 3); for n-stream kinds the stream-collapse diagnostic (arXiv 2606.03483): per sublayer
  the token mean of the share of its input state's energy in the largest stream
  (``stream_energy_max_share``, L values; 1/n balanced, 1 collapsed) and the same for the
  final state (``stream_energy_max_share_final``);
* **gradient norms** per sublayer (attention / FFN of every block, each with its norm and its
  connection) of the loss on the same windows at the checkpoint.

Everything lands in ``RUN_DIR/analysis/analysis.json`` (and figures with ``figures=True``).
Axes: L sublayers (attention and FFN count separately), S slots, R branch-input slots.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hyperfrac.analysis.metrics import (
    adjacent_cosine,
    band,
    connection_summary,
    stream_energy_max_share,
)
from hyperfrac.analysis.probes import ConnectionProbe
from hyperfrac.bench.memory import saved_tensor_bytes
from hyperfrac.precision import autocast as precision_autocast
from hyperfrac.train.task import ImageClassificationTask, LanguageModelTask, task_class

ANALYSIS_VERSION = 3  # 3: stream_energy_max_share


# ------------------------------------------------------------------------------ model probes


@torch.no_grad()
def probe_model(model: nn.Module, x: Tensor, *, max_tokens: int | None = 512) -> dict[str, Any]:
    """Run ``model(x)`` under a :class:`ConnectionProbe`; return the paper diagnostics.

    Returns ``cosine`` (median/low/high/mean per adjacent pair, L-1 values), ``unfolded``
    (L, L+1, R, R) and ``unfolded_per_stream`` (S, L, L+1, R, R) as nested lists, the final
    output's row ``unfolded_final`` (L+1, R, R) and ``unfolded_final_per_stream``, and the
    Amax gain curves (L,) under ``amax``; for n-stream kinds ``stream_energy_max_share`` (L,)
    and ``stream_energy_max_share_final`` over every token (None for other kinds).
    """
    was_training = model.training
    model.eval()
    with ConnectionProbe(model, max_tokens=max_tokens) as probe, StreamShares(model) as shares:
        model(x)
    model.train(was_training)
    inputs = probe.layer_inputs  # L x (N, D)
    out: dict[str, Any] = {"n_layers": len(inputs), "tokens": int(inputs[0].shape[0])}
    if len(inputs) >= 2:
        cos = adjacent_cosine(inputs)  # (L-1, N)
        out["cosine"] = {**band(cos), "mean": cos.mean(-1).tolist()}
    summary = connection_summary(probe.matrices, probe.reduce)
    out["unfolded"] = summary["unfolded"].tolist()  # (L, L+1, R, R)
    out["unfolded_per_stream"] = summary["unfolded_per_stream"].tolist()  # (S, L, L+1, R, R)
    out["unfolded_final"] = summary["final"].tolist()  # (L+1, R, R)
    out["unfolded_final_per_stream"] = summary["final_per_stream"].tolist()  # (S, L+1, R, R)
    out["amax"] = {
        k: summary[k].tolist()
        for k in ("single_forward", "single_backward", "composite_forward", "composite_backward")
    }
    out["stream_energy_max_share"] = shares.inputs or None
    out["stream_energy_max_share_final"] = shares.outputs[-1] if shares.outputs else None
    return out


class StreamShares:
    """Context manager recording, for every call of an n-stream connection (in call order),
    the token mean of :func:`~hyperfrac.analysis.metrics.stream_energy_max_share` of the state
    it receives (``inputs``) and returns (``outputs``)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.inputs: list[float] = []
        self.outputs: list[float] = []
        self._handles: list = []

    def _hook(self, module: nn.Module, args, output) -> None:
        cf = module.channel_first
        self.inputs.append(float(stream_energy_max_share(args[0], channel_first=cf).mean()))
        self.outputs.append(float(stream_energy_max_share(output, channel_first=cf).mean()))

    def __enter__(self) -> StreamShares:
        from hyperfrac.connections import Connection

        for module in self.model.modules():
            if isinstance(module, Connection) and module.slot_option == "n_streams":
                self._handles.append(module.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def sublayer_groups(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """(name, parameters) of every sublayer: attention and FFN of each block, each with its
    pre-norm and its connection; models without ``blocks`` give one group per child."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return [(n, list(m.parameters())) for n, m in model.named_children()]
    groups = []
    for i, b in enumerate(blocks):
        for part in ("attn", "ffn"):
            mods = [getattr(b, part, None), getattr(b, f"{part}_norm", None),
                    getattr(b, f"{part}_conn", None)]
            params = [p for m in mods if m is not None for p in m.parameters()]
            groups.append((f"{i}.{part}", params))
    return groups


Objective = Callable[[nn.Module, Tensor, Tensor], Any]
"""A task's training objective (:meth:`hyperfrac.train.task.Task.objective`)."""


def training_loss(model: nn.Module, x: Tensor, y: Tensor, objective: Objective) -> Tensor:
    """The trainer's loss on ``(x, y)``: the task loss plus its auxiliary losses (MoE)."""
    obj = objective(model, x, y)
    return obj.loss + obj.aux_loss


def gradient_norms(model: nn.Module, x: Tensor, y: Tensor,
                   objective: Objective = LanguageModelTask.objective) -> dict[str, Any]:
    """L2 norm of the gradient of the training loss on ``(x, y)`` per sublayer (fp32)."""
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    loss = training_loss(model, x, y, objective)
    loss.backward()
    names, norms = [], []
    for name, params in sublayer_groups(model):
        sq = sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None)
        names.append(name)
        norms.append(math.sqrt(sq))
    total = math.sqrt(sum(float(p.grad.double().pow(2).sum())
                          for p in model.parameters() if p.grad is not None))
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {"names": names, "sublayer": norms, "total": total, "loss": float(loss.detach())}


def saved_activation_bytes(model: nn.Module, x: Tensor, y: Tensor, precision: str,
                           objective: Objective = LanguageModelTask.objective) -> int:
    """Bytes autograd saves for backward in one training forward (each storage once, parameters
    excluded): the activation memory of a training step."""
    ctx = precision_autocast(x.device.type, precision)
    model.train()

    def forward():
        with ctx:
            return training_loss(model, x, y, objective)

    return saved_tensor_bytes(forward, exclude=model.parameters())


# ------------------------------------------------------------------------------ run folder


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    recs = []
    for line in path.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return recs


def curves_and_events(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Training/validation curves, median tokens/s and event counts from metrics.jsonl."""
    train = [r for r in records if "loss_avg" in r]
    val = [r for r in records if "val_loss" in r]
    # the first logged interval includes start-up; skip it when there are others
    rates = [r["tok_per_s"] for r in train[1:] or train if r.get("tok_per_s")]
    return {
        "curves": {
            "train": {
                "step": [r["step"] for r in train],
                "tokens": [r.get("tokens") for r in train],
                "loss": [r["loss_avg"] for r in train],
                "seconds": training_seconds(train),
            },
            "val": {
                "step": [r["step"] for r in val],
                "tokens": [r.get("tokens") for r in val],
                "loss": [r["val_loss"] for r in val],
                "bpb": [r.get("val_bpb") for r in val],
                "accuracy": [r.get("val_accuracy") for r in val],
            },
        },
        "tok_per_s": statistics.median(rates) if rates else None,
        "loss_spikes": sum(1 for r in records if r.get("event") == "loss_spike"),
        "nonfinite": sum(1 for r in records if r.get("event") == "nonfinite"),
    }


def training_seconds(train: list[dict[str, Any]]) -> list[float] | None:
    """Cumulative training seconds at each logged record: the tokens of each interval divided
    by its tokens/s (the trainer times intervals without evaluation and checkpoint pauses);
    None when a record lacks tokens or a rate."""
    out, total, prev = [], 0.0, 0
    for r in train:
        tok, rate = r.get("tokens"), r.get("tok_per_s")
        if tok is None or not rate:
            return None
        total += (tok - prev) / rate
        prev = tok
        out.append(total)
    return out


def curve_seconds(curves: dict[str, Any]) -> list[float] | None:
    """Training seconds at each validation point (interpolated over the training log)."""
    train, val = curves["train"], curves["val"]
    secs, toks = train.get("seconds"), train.get("tokens")
    if not secs or not toks or any(t is None for t in toks) or not val.get("tokens"):
        return None
    return [float(s) for s in np.interp(val["tokens"], [0, *toks], [0.0, *secs])]


def window_sums(model: nn.Module, tokens: np.ndarray, token_bytes: np.ndarray, *, seq_len: int,
                batch_size: int, max_batches: int | None, device: torch.device,
                precision: str) -> dict[str, Any]:
    """:func:`hyperfrac.eval.lm.evaluate_lm` with the sums of every window kept: ``loss``,
    ``bpb``, ``tokens``, ``bytes`` over the split and ``windows`` = per-window ``nll`` (nats),
    ``bytes`` and ``tokens`` (the report resamples them for the evaluation set's error)."""
    from hyperfrac.data.loader import IGNORE_INDEX
    from hyperfrac.data.loader import eval_batches as batches

    was_training = model.training
    model.eval()
    tb = torch.from_numpy(np.asarray(token_bytes, dtype=np.int64))
    nll_w: list[float] = []
    bytes_w: list[int] = []
    tok_w: list[int] = []
    with torch.no_grad(), precision_autocast(device.type, precision):
        for x, y in batches(tokens, seq_len, batch_size, max_batches=max_batches):
            logits = model(x.to(device)).logits  # (b, T, V)
            y = y.to(device)
            nll = torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), y, reduction="none", ignore_index=IGNORE_INDEX
            )  # (b, T)
            valid = (y != IGNORE_INDEX).cpu()
            nll_w += nll.double().sum(-1).tolist()
            bytes_w += (tb[y.cpu().clamp_min(0)] * valid).sum(-1).tolist()
            tok_w += valid.sum(-1).tolist()
    model.train(was_training)
    n_tok, n_bytes, total = sum(tok_w), sum(bytes_w), sum(nll_w)
    return {"loss": total / max(n_tok, 1), "bpb": total / math.log(2) / max(n_bytes, 1),
            "tokens": n_tok, "bytes": n_bytes,
            "windows": {"nll": nll_w, "bytes": bytes_w, "tokens": tok_w}}


def _extra_splits(meta: dict[str, Any]) -> list[str]:
    """Held-out splits a prepared dataset provides besides train and val (issue 4)."""
    return [s for s in meta.get("splits", {}) if s not in ("train", "val")]


def _mc_results(model: nn.Module, cfg: Any, data_path: Path, max_items: int | None
                ) -> dict[str, dict[str, Any]]:
    """Multiple-choice results from the eval package's suites (issue 4:
    ``hyperfrac.eval.run.run_suites``, built from the dataset's held-out text) when that
    package is installed: accuracy, items, correct, chance, Wilson interval, item hash and
    source per suite; suites it cannot build are left out, so the report shows "n/a"."""
    if max_items == 0:
        return {}
    try:
        from hyperfrac.eval.run import run_suites
    except ImportError:
        return {}
    res = run_suites(model, cfg, data_path, max_items=max_items,
                     batch_size=cfg.eval.batch_size)
    keep = ("accuracy", "items", "correct", "chance", "ci95", "version", "sha256", "source")
    return {name: {k: r.get(k) for k in keep} for name, r in res.items() if "accuracy" in r}


def model_flops_per_token(model: nn.Module, seq_len: int) -> int:
    """Approximate forward FLOPs per token: 2 x every matmul weight (embedding lookup excluded,
    LM head included, MoE experts counted at top_k / n_experts) + causal attention
    2 x 2 x (T/2) x D per layer."""
    from hyperfrac.models.moe import MoE

    cfg = model.cfg
    total = 0
    skip = {id(model.embed.weight)} if hasattr(model, "embed") else set()
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m.weight) not in skip:
            total += 2 * m.weight.numel()
        if isinstance(m, MoE):
            frac = m.top_k / m.n_experts
            total += int(2 * (m.w_in.numel() + m.w_out.numel()) * frac)
    if getattr(cfg, "tie_embeddings", False):
        total += 2 * model.embed.weight.numel()
    total += 2 * 2 * (seq_len // 2) * cfg.dim * cfg.n_layers
    return int(total)


def connection_cost(model: nn.Module) -> dict[str, int]:
    """Connection parameters in the model and their forward FLOPs per token (vs residual),
    the learned stream head (``model.stream_head: learned``) counted once."""
    from hyperfrac.connections import Connection, overhead

    conns = [m for m in model.modules() if isinstance(m, Connection)]
    params = sum(p.numel() for c in conns for p in c.parameters())
    spec = dict(model.cfg.connection)
    kind = spec.pop("kind")
    flops = overhead(kind, model.cfg.dim, len(conns), **spec)["flops_per_token"]
    head = getattr(model, "stream_head", None)
    if head is not None:
        params += head.extra_params()
        flops += head.flops_per_token()
    return {"conn_params": int(params), "conn_flops_per_token": int(flops)}


def analyze_run(
    run_dir: str | Path,
    *,
    checkpoint: Path | None = None,
    data_path: Path | None = None,
    windows: int = 4,
    max_tokens: int | None = 512,
    eval_batches: int | None = None,
    mc_items: int | None = 200,
    figures: bool = False,
    write: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """All per-run numbers of the report (see the module docstring); cached by checkpoint.

    ``eval_batches`` limits validation/held-out batches (None = whole split); ``mc_items``
    limits the items per multiple-choice suite (None = the suite's default, 0 = skip).
    """
    from hyperfrac.runs import load_run, resolve_data_path

    run_dir = Path(run_dir)
    out_dir = run_dir / "analysis"
    run = load_run(run_dir, checkpoint, device="cpu")
    model, cfg, ckpt_path, state = run.model, run.cfg, run.checkpoint, run.train_state
    key = {"checkpoint": ckpt_path.name, "windows": windows, "max_tokens": max_tokens,
           "eval_batches": eval_batches, "mc_items": mc_items, "version": ANALYSIS_VERSION}
    cached = out_dir / "analysis.json"
    if cached.is_file():
        old = json.loads(cached.read_text())
        if old.get("key") == key:
            if figures:
                _run_figures(old, out_dir)
            return old
    dev = torch.device(device)
    model.to(dev)
    path = Path(data_path) if data_path else resolve_data_path(cfg)
    analyze = _ANALYZERS[task_class(cfg.data.kind)]
    result = analyze(model, cfg, path, run_dir, dev, windows, max_tokens, eval_batches, mc_items)
    result.update({"key": key, "checkpoint": str(ckpt_path), "step": int(state["step"]),
                   "tokens": int(state["tokens"])})
    return _finish(result, cached, out_dir, write, figures)


def _analyze_text(model: nn.Module, cfg: Any, path: Path, run_dir: Path, dev: torch.device,
                  windows: int, max_tokens: int | None, eval_batches: int | None,
                  mc_items: int | None) -> dict[str, Any]:
    """A language model: bits per byte on validation and held-out text, suites, probes on
    ``windows`` validation windows."""
    from hyperfrac.data.loader import eval_batches as batches
    from hyperfrac.data.prepare import open_tokens
    from hyperfrac.models.lm import count_params

    logged = curves_and_events(read_metrics(run_dir))
    x, y = next(batches(open_tokens(path, "val"), cfg.data.seq_len, windows))  # (W, T)
    x, y = x.to(dev), y.to(dev)
    # activation memory of one training micro-batch (fixed random tokens: same for every arm)
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.data.seq_len + 1),
                        generator=g).to(dev)  # (B, T + 1)
    metrics = {
        **evaluation_metrics(model, cfg, path, dev, eval_batches, mc_items),
        "tok_per_s": logged["tok_per_s"],
        "saved_act_mb": saved_activation_bytes(model, tok[:, :-1], tok[:, 1:],
                                               cfg.train.precision) / 2**20,
        "saved_act_batch": [cfg.train.batch_size, cfg.data.seq_len],
        "params": count_params(model),
        "params_non_embedding": count_params(model, exclude_embeddings=True),
        **connection_cost(model),
        "model_flops_per_token": model_flops_per_token(model, cfg.data.seq_len),
        "loss_spikes": logged["loss_spikes"],
        "nonfinite": logged["nonfinite"],
    }
    result = {
        "run": str(run_dir),
        "connection": dict(cfg.model.connection),
        "model": {"dim": cfg.model.dim, "n_layers": cfg.model.n_layers,
                  "moe": cfg.model.moe is not None, "seq_len": cfg.data.seq_len},
        "metrics": metrics,
        "curves": logged["curves"],
        "probe": probe_model(model, x, max_tokens=max_tokens),
        "grad_norms": gradient_norms(model, x, y),
    }
    result["probe"]["windows"] = int(x.shape[0])
    return result


def evaluation_metrics(model: nn.Module, cfg: Any, path: Path, dev: torch.device,
                       eval_batches: int | None, mc_items: int | None) -> dict[str, Any]:
    """Validation (whole split unless ``eval_batches`` caps it) and held-out splits with their
    per-window sums, and the multiple-choice suites."""
    from hyperfrac.data.dataset import load_token_bytes
    from hyperfrac.data.prepare import load_meta, open_tokens

    meta = load_meta(path)
    token_bytes = load_token_bytes(path, meta["vocab_size"])
    ev = dict(seq_len=cfg.data.seq_len, batch_size=cfg.eval.batch_size, max_batches=eval_batches,
              device=dev, precision=cfg.train.precision)
    val = window_sums(model, open_tokens(path, "val"), token_bytes, **ev)
    heldout = {s: window_sums(model, open_tokens(path, s), token_bytes, **ev)
               for s in _extra_splits(meta)}
    mc = _mc_results(model, cfg, path, mc_items)
    return {
        "val_loss": val["loss"],
        "val_bpb": val["bpb"],
        "val_tokens": val["tokens"],
        "val_windows": val["windows"],
        "heldout": {s: {"loss": r["loss"], "bpb": r["bpb"], "tokens": r["tokens"],
                        "windows": r["windows"]} for s, r in heldout.items()},
        "mc": {name: r["accuracy"] for name, r in mc.items()},
        "mc_detail": mc,
    }


def _finish(result: dict[str, Any], cached: Path, out_dir: Path, write: bool, figures: bool
            ) -> dict[str, Any]:
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps(result) + "\n")
        tmp.replace(cached)
    if figures:
        _run_figures(result, out_dir)
    return result


def _analyze_images(model: nn.Module, cfg: Any, path: Path, run_dir: Path, dev: torch.device,
                    windows: int, max_tokens: int | None, eval_batches: int | None,
                    mc_items: int | None = None) -> dict[str, Any]:
    """The same analyses for an image classifier (ViT, issue 4): test-set accuracy instead of
    bits per byte; probes on ``8 * windows`` test images (tokens = patches)."""
    from hyperfrac.data.vision import load_images, to_tensor
    from hyperfrac.eval.vision import evaluate_classifier
    from hyperfrac.models.lm import count_params

    images, labels = load_images(path, "test")
    ev = evaluate_classifier(model, images, labels, batch_size=cfg.eval.batch_size,
                             max_batches=eval_batches, device=dev,
                             precision=cfg.train.precision)
    logged = curves_and_events(read_metrics(run_dir))
    n = min(8 * windows, len(images))
    x = to_tensor(images[:n]).to(dev)  # (N, 1, H, W)
    y = torch.from_numpy(labels[:n].astype(np.int64)).to(dev)  # (N,)
    bx = to_tensor(images[: cfg.train.batch_size]).to(dev)
    by = torch.from_numpy(labels[: cfg.train.batch_size].astype(np.int64)).to(dev)
    metrics = {
        "val_loss": ev["loss"], "val_bpb": None, "val_acc": ev["accuracy"],
        "val_tokens": ev["n"], "heldout": {}, "mc": {},
        "tok_per_s": logged["tok_per_s"],
        "saved_act_mb": saved_activation_bytes(model, bx, by, cfg.train.precision,
                                               ImageClassificationTask.objective) / 2**20,
        "saved_act_batch": [int(bx.shape[0])],
        "params": count_params(model),
        "params_non_embedding": count_params(model),
        **connection_cost(model),
        "model_flops_per_token": None,
        "loss_spikes": logged["loss_spikes"],
        "nonfinite": logged["nonfinite"],
    }
    probe = probe_model(model, x, max_tokens=max_tokens)
    probe["windows"] = n
    return {
        "run": str(run_dir),
        "connection": dict(cfg.model.connection),
        "model": {"dim": cfg.model.dim, "n_layers": cfg.model.n_layers, "moe": False,
                  "seq_len": None, "task": "vision"},
        "metrics": metrics,
        "curves": logged["curves"],
        "probe": probe,
        "grad_norms": gradient_norms(model, x, y, ImageClassificationTask.objective),
    }


# the analyses of each task (the objective and evaluation differ; the probes are shared)
_ANALYZERS = {LanguageModelTask: _analyze_text, ImageClassificationTask: _analyze_images}


def _run_figures(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """The report's figures for one run (single-arm versions) into ``out_dir``."""
    from hyperfrac.analysis import plots

    name = Path(result["run"]).name
    arms = {name: [result]}
    return plots.all_figures(arms, out_dir, reference=name)
