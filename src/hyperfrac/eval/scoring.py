"""Scoring multiple-choice suites and arbitrary text with a language model.

A :class:`Scorer` answers one question: for a (context, continuation) pair, the summed
log-probability of the continuation's tokens (nats), the continuation's UTF-8 byte length, and
whether greedy decoding reproduces the continuation exactly. :func:`score_suite` turns those
answers into accuracy, a 95 % Wilson confidence interval and the chance level; any object with
the same ``score`` method (e.g. a rule-based test scorer) can be evaluated the same way.

:class:`LMScorer` scores with a :class:`~hyperfrac.models.TransformerLM` and the dataset's
byte-level BPE: context and continuation are encoded separately (contexts end without, and
continuations start with, a space) and concatenated after an end-of-text token; contexts are
cut from the left to fit ``max_seq_len``; sequences are right-padded into batches (causal
attention keeps padding from affecting real positions).

Axis legend: B batch, T time, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyperfrac.eval.suites import Suite
from hyperfrac.precision import autocast as precision_autocast


class Scorer(Protocol):
    def score(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, int, bool]]:
        """``[(log-prob of continuation in nats, its UTF-8 bytes, greedy match), ...]``."""
        ...


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def predictions(suite: Suite, scorer: Scorer) -> list[int]:
    """Predicted choice per item (``lastword``: 1 if greedy matched, else 0 -> label 0 = right).

    ``cloze`` ranks by log-probability per byte, ``pairs`` by total log-probability; ties go to
    the lowest index.
    """
    requests = [(it.context, c) for it in suite.items for c in it.choices]
    results = scorer.score(requests)
    if len(results) != len(requests):
        raise ValueError(f"the scorer returned {len(results)} results for {len(requests)} requests")
    preds, k = [], 0
    for it in suite.items:
        res = results[k : k + len(it.choices)]
        k += len(it.choices)
        if suite.name == "lastword":
            preds.append(0 if res[0][2] else -1)
            continue
        vals = [lp / max(nb, 1) if suite.name == "cloze" else lp for lp, nb, _ in res]
        preds.append(int(np.argmax(vals)))
    return preds


def score_suite(suite: Suite, scorer: Scorer) -> dict:
    """Accuracy, its 95 % Wilson interval, chance, item count, version and item hash."""
    if len(suite) == 0:
        raise ValueError(f"suite {suite.name!r} has no items")
    preds = predictions(suite, scorer)
    correct = sum(int(p == it.label) for p, it in zip(preds, suite.items, strict=True))
    lo, hi = wilson_interval(correct, len(suite))
    return {
        "suite": suite.name,
        "version": suite.version,
        "items": len(suite),
        "correct": correct,
        "accuracy": correct / len(suite),
        "ci95": [lo, hi],
        "chance": suite.chance,
        "sha256": suite.sha256,
    }


class LMScorer:
    """Scores (context, continuation) pairs with a causal LM and a ``tokenizers.Tokenizer``."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        max_seq_len: int,
        eos_id: int,
        batch_size: int = 16,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.model, self.tok, self.max_seq_len = model, tokenizer, max_seq_len
        self.eos_id, self.batch_size = eos_id, batch_size
        self.device, self.precision = torch.device(device), precision

    def _encode(self, context: str, continuation: str) -> tuple[list[int], int]:
        ctx = [self.eos_id] + (self.tok.encode(context).ids if context else [])
        cont = self.tok.encode(continuation).ids
        if not cont:
            raise ValueError(f"empty continuation for context {context[-40:]!r}")
        cont = cont[: self.max_seq_len]
        ids = (ctx + cont)[-(self.max_seq_len + 1) :]
        return ids, len(cont)

    @torch.no_grad()
    def score(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, int, bool]]:
        was_training = self.model.training
        self.model.eval()
        encoded = [self._encode(c, x) for c, x in requests]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
        out: list[tuple[float, int, bool] | None] = [None] * len(encoded)
        autocast = precision_autocast(self.device.type, self.precision)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            T = max(len(encoded[i][0]) for i in idx) - 1
            x = torch.zeros(len(idx), T, dtype=torch.long)  # (B, T)
            for row, i in enumerate(idx):
                ids = encoded[i][0]
                x[row, : len(ids) - 1] = torch.tensor(ids[:-1])
            with autocast:
                logits = self.model(x.to(self.device)).logits
            logp = F.log_softmax(logits.float(), dim=-1).cpu()  # (B, T, V)
            for row, i in enumerate(idx):
                ids, n_cont = encoded[i]
                L = len(ids) - 1
                tgt = torch.tensor(ids[-n_cont:])
                lp = logp[row, L - n_cont : L]  # (n_cont, V)
                total = float(lp.gather(1, tgt[:, None]).sum())
                greedy = bool((lp.argmax(-1) == tgt).all())
                nbytes = len(requests[i][1].encode())
                out[i] = (total, nbytes, greedy)
        self.model.train(was_training)
        return out  # type: ignore[return-value]


@torch.no_grad()
def text_bpb(
    model: nn.Module,
    tokenizer,
    text: str,
    *,
    seq_len: int,
    eos_id: int,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> dict[str, float]:
    """Bits per byte of ``text``: EOS + tokens, cut into non-overlapping windows of ``seq_len``
    predictions; every token of the text is predicted once (the first from the EOS).

    ``bpb = sum NLL / ln 2 / len(text.encode())`` — every byte of the text is counted.
    """
    if not text:
        raise ValueError("the text is empty; bits-per-byte needs at least one character")
    ids = [eos_id] + tokenizer.encode(text).ids
    tokens = np.asarray(ids, dtype=np.int64)
    was_training = model.training
    model.eval()
    device = torch.device(device)
    autocast = precision_autocast(device.type, precision)
    nll, n_tok = 0.0, 0
    starts = list(range(0, len(tokens) - 1, seq_len))
    for b in range(0, len(starts), batch_size):
        chunk = starts[b : b + batch_size]
        rows = [tokens[s : s + seq_len + 1] for s in chunk]
        T = max(len(r) for r in rows) - 1
        x = torch.zeros(len(rows), T, dtype=torch.long)  # (B, T)
        y = torch.full((len(rows), T), -100, dtype=torch.long)  # (B, T), -100 = ignored
        for i, r in enumerate(rows):
            x[i, : len(r) - 1] = torch.from_numpy(r[:-1])
            y[i, : len(r) - 1] = torch.from_numpy(r[1:])
        with autocast:
            logits = model(x.to(device)).logits
        nll += float(
            F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum")
        )
        n_tok += int((y != -100).sum())
    model.train(was_training)
    n_bytes = len(text.encode())
    return {
        "loss": nll / n_tok,
        "bpb": nll / math.log(2) / n_bytes,
        "tokens": n_tok,
        "bytes": n_bytes,
    }
