"""Offline multiple-choice suites built deterministically from held-out text.

No benchmark data (LAMBADA, HellaSwag, BLiMP...) can be installed offline, so the three suites
follow their recipes on text the model never trained on (project data notes, section 2). Each
suite has a ``VERSION``; the items are a pure function of (text, suite, version): the same text
gives the same items on every machine (``random.Random`` seeded with a string), and every suite
reports the SHA-256 of its items so two reports can be checked to use the same items.

* ``lastword`` (LAMBADA-style, v2): paragraphs of >= 60 words whose last word (>= 3 letters)
  also occurs earlier in the paragraph; context = the paragraph up to that word, target = the
  whitespace before the word (a space or a line break) + the word. Correct iff greedy decoding
  reproduces every token of the target. Chance: the model's greedy accuracy has no fixed
  chance level; reported as 0.
* ``cloze`` (HellaSwag-style, 4-way, v2): every group of 4 consecutive sentences of a
  paragraph (groups do not overlap); context = the group's first 3 sentences as they stand in
  the text, correct ending = the fourth; 3 distractors =
  sentences of other paragraphs with a byte length within [0.67, 1.5] x the correct one; every
  ending starts with the whitespace that precedes the correct one; the correct ending's
  position is drawn per item. Scored by log-likelihood per byte of each ending. Chance 25 %.
* ``pairs`` (BLiMP-style minimal pairs, v2): held-out sentences of 6-40 words, each corrupted by
  one edit — agreement swaps (is/are, was/were, has/have, does/do), article swaps (a/an),
  reflexive swaps (himself/herself -> themselves) or swapping two adjacent words. Correct iff
  log P(good) > log P(bad) (whole sentences, after an end-of-text token). Chance 50 %.

Texts are split into paragraphs at blank lines. **Line breaks inside a paragraph are kept**
(v2): the models train on hard-wrapped text (verse, wrapped prose), so a context with its
line breaks turned into spaces would be out of distribution. Only trailing spaces of lines and
whitespace around a paragraph are dropped. Reports mark a suite with fewer than
:data:`MIN_ITEMS` items as too small to read.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass

SUITES = ("lastword", "cloze", "pairs")
VERSION = {"lastword": 2, "cloze": 2, "pairs": 2}
CHANCE = {"lastword": 0.0, "cloze": 0.25, "pairs": 0.5}
MAX_ITEMS = {"lastword": 500, "cloze": 500, "pairs": 1000}
MIN_ITEMS = 100
"""Fewer items than this give a Wilson interval about ±0.1 wide or wider: shown as too small."""


@dataclass(frozen=True)
class Item:
    """One item: ``choices`` continue ``context``; ``label`` indexes the correct one.

    ``lastword`` items have one choice (the target) and label 0.
    """

    context: str
    choices: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    items: tuple[Item, ...]

    @property
    def chance(self) -> float:
        return CHANCE[self.name]

    @property
    def sha256(self) -> str:
        data = json.dumps([asdict(i) for i in self.items], sort_keys=True).encode()
        return hashlib.sha256(data).hexdigest()

    def __len__(self) -> int:
        return len(self.items)


_BLANK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_TRAILING = re.compile(r"[ \t\r\f\v]+\n")
_SENT = re.compile(r"[.!?][\"')\]]*(\s+)(?=[\"'(\[]?[A-Z])")
_WORD = re.compile(r"[A-Za-z]+")
_SPLIT_WS = re.compile(r"(\s+)")


def paragraphs(text: str) -> list[str]:
    """Paragraphs split at blank lines, their line breaks kept (trailing spaces of lines and
    whitespace around the paragraph dropped); empty ones dropped."""
    out = []
    for block in _BLANK.split(text):
        p = _TRAILING.sub("\n", block).strip()
        if p:
            out.append(p)
    return out


def sentence_spans(paragraph: str) -> list[tuple[str, str]]:
    """``(whitespace before, sentence)`` pairs in order; the first sentence has ``""`` before
    it. Joining them gives the paragraph back exactly."""
    out, start, sep = [], 0, ""
    for m in _SENT.finditer(paragraph):
        out.append((sep, paragraph[start:m.start(1)]))
        sep, start = m.group(1), m.end(1)
    out.append((sep, paragraph[start:]))
    return [(w, t) for w, t in out if t]


def sentences(paragraph: str) -> list[str]:
    """The sentences of a paragraph as they stand in it (line breaks inside kept)."""
    return [t for _, t in sentence_spans(paragraph)]


def _rng(name: str, version: int) -> random.Random:
    return random.Random(f"hyperfrac-suite-{name}-v{version}")


def _subsample(items: list[Item], k: int, rng: random.Random) -> list[Item]:
    if len(items) <= k:
        return items
    keep = sorted(rng.sample(range(len(items)), k))
    return [items[i] for i in keep]


def _need(items: list, name: str, what: str, n_paras: int) -> None:
    if not items:
        raise ValueError(
            f"suite {name!r}: no items could be built from the text ({n_paras} paragraphs; "
            f"needs {what}); pass a longer held-out text with blank lines between paragraphs"
        )


def build_lastword(text: str, *, max_items: int | None = None) -> Suite:
    name = "lastword"
    paras = paragraphs(text)
    items = []
    for p in paras:
        if len(p.split()) < 60:
            continue
        m = re.search(r"(\s+)([A-Za-z]+)[^A-Za-z]*$", p)
        if m is None or len(m.group(2)) < 3:
            continue
        target, context = m.group(2), p[: m.start(1)]
        earlier = {w.lower() for w in _WORD.findall(context)}
        if target.lower() in earlier and context:
            items.append(Item(context, (m.group(1) + target,), 0))
    _need(items, name, ">= 60-word paragraphs whose last word occurs earlier", len(paras))
    items = _subsample(items, max_items or MAX_ITEMS[name], _rng(name, VERSION[name]))
    return Suite(name, VERSION[name], tuple(items))


def build_cloze(text: str, *, max_items: int | None = None) -> Suite:
    name = "cloze"
    rng = _rng(name, VERSION[name])
    paras = paragraphs(text)
    spans = [sentence_spans(p) for p in paras]
    split = [[t for _, t in sp] for sp in spans]
    pool = [(i, s) for i, ss in enumerate(split) for s in ss if len(s.split()) >= 4]
    pool.sort(key=lambda t: len(t[1].encode()))
    lengths = [len(s.encode()) for _, s in pool]
    items = []
    for i, ss in enumerate(split):
        for g in range(0, len(ss) - 3, 4):  # consecutive groups of 4 sentences, no overlap
            item = _cloze_item(spans[i][g:g + 4], i, pool, lengths, rng)
            if item is not None:
                items.append(item)
    _need(items, name, "paragraphs of >= 4 sentences", len(paras))
    items = _subsample(items, max_items or MAX_ITEMS[name], rng)
    return Suite(name, VERSION[name], tuple(items))


def _cloze_item(group: list[tuple[str, str]], para: int, pool: list[tuple[int, str]],
                lengths: list[int], rng: random.Random) -> Item | None:
    """One item from 4 consecutive (whitespace, sentence) pairs of paragraph ``para``."""
    correct = group[3][1]
    if len(correct.split()) < 4:
        return None
    n = len(correct.encode())
    lo = next((k for k, v in enumerate(lengths) if v >= 0.67 * n), len(lengths))
    hi = next((k for k, v in enumerate(lengths) if v > 1.5 * n), len(lengths))
    cands = list(dict.fromkeys(s for j, s in pool[lo:hi] if j != para and s != correct))
    if len(cands) < 3:
        return None
    endings = rng.sample(cands, 3)
    label = rng.randrange(4)
    endings.insert(label, correct)
    context = group[0][1] + "".join(w + t for w, t in group[1:3])
    return Item(context, tuple(group[3][0] + e for e in endings), label)


_SWAPS = {
    "is": "are",
    "are": "is",
    "was": "were",
    "were": "was",
    "has": "have",
    "have": "has",
    "does": "do",
    "do": "does",
    "himself": "themselves",
    "herself": "themselves",
}
_VOWEL = re.compile(r"^[aeiouAEIOU]")


def _corrupt(parts: list[str], rng: random.Random) -> str | None:
    """One ungrammatical edit of a sentence given as ``re.split(r"(\\s+)", sentence)`` (words
    at even, whitespace at odd positions, kept as it was), or None."""
    words, seps = parts[0::2], parts[1::2]
    options = []
    for k, w in enumerate(words):
        if w in _SWAPS:
            options.append(("swap", k))
        if w in ("a", "an") and k + 1 < len(words) and _WORD.match(words[k + 1]):
            nxt = words[k + 1]
            if (w == "a") != bool(_VOWEL.match(nxt)) and not nxt.lower().startswith(("u", "h")):
                options.append(("article", k))
    if options:
        kind, k = options[rng.randrange(len(options))]
        new = list(words)
        new[k] = _SWAPS[words[k]] if kind == "swap" else ("an" if words[k] == "a" else "a")
        return _join(new, seps)
    plain = [k for k in range(len(words) - 1) if words[k].isalpha() and words[k + 1].isalpha()]
    plain = [k for k in plain if words[k].lower() != words[k + 1].lower()]
    if not plain:
        return None
    k = plain[rng.randrange(len(plain))]
    new = list(words)
    new[k], new[k + 1] = new[k + 1], new[k]
    return _join(new, seps)


def _join(words: list[str], seps: list[str]) -> str:
    return "".join(w + s for w, s in zip(words, [*seps, ""], strict=True))


def build_pairs(text: str, *, max_items: int | None = None) -> Suite:
    name = "pairs"
    rng = _rng(name, VERSION[name])
    paras = paragraphs(text)
    items = []
    seen = set()
    for p in paras:
        for s in sentences(p):
            parts = _SPLIT_WS.split(s)
            if not 6 <= len(parts[0::2]) <= 40 or s in seen:
                continue
            seen.add(s)
            bad = _corrupt(parts, rng)
            if bad is None or bad == s:
                continue
            label = rng.randrange(2)
            choices = (s, bad) if label == 0 else (bad, s)
            items.append(Item("", choices, label))
    _need(items, name, "sentences of 6-40 words", len(paras))
    items = _subsample(items, max_items or MAX_ITEMS[name], rng)
    return Suite(name, VERSION[name], tuple(items))


BUILDERS = {"lastword": build_lastword, "cloze": build_cloze, "pairs": build_pairs}


def build_suite(name: str, text: str, *, max_items: int | None = None) -> Suite:
    """Suite ``name`` from ``text`` (deterministic). Empty text is an error."""
    if name not in BUILDERS:
        raise ValueError(f"unknown suite {name!r}; choose one of {SUITES}")
    if not text or not text.strip():
        raise ValueError(f"suite {name!r}: the source text is empty")
    return BUILDERS[name](text, max_items=max_items)
