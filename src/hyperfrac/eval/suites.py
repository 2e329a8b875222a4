"""Offline multiple-choice suites built deterministically from held-out text.

No benchmark data (LAMBADA, HellaSwag, BLiMP...) can be installed offline, so the three suites
follow their recipes on text the model never trained on (project data notes, section 2). Each
suite has a ``VERSION``; the items are a pure function of (text, suite, version): the same text
gives the same items on every machine (``random.Random`` seeded with a string), and every suite
reports the SHA-256 of its items so two reports can be checked to use the same items.

* ``lastword`` (LAMBADA-style, v1): paragraphs of >= 60 words whose last word (>= 3 letters)
  also occurs earlier in the paragraph; context = the paragraph up to that word, target =
  `` word``. Correct iff greedy decoding reproduces every token of the target. Chance: the
  model's greedy accuracy has no fixed chance level; reported as 0.
* ``cloze`` (HellaSwag-style, 4-way, v1): paragraphs of >= 4 sentences; context = 3 sentences,
  correct ending = the next sentence; 3 distractors = sentences of other paragraphs with a byte
  length within [0.67, 1.5] x the correct one; the correct ending's position is drawn per item.
  Scored by log-likelihood per byte of each ending. Chance 25 %.
* ``pairs`` (BLiMP-style minimal pairs, v1): held-out sentences of 6-40 words, each corrupted by
  one edit — agreement swaps (is/are, was/were, has/have, does/do), article swaps (a/an),
  reflexive swaps (himself/herself -> themselves) or swapping two adjacent words. Correct iff
  log P(good) > log P(bad) (whole sentences, after an end-of-text token). Chance 50 %.

Texts are split into paragraphs at blank lines; line breaks inside a paragraph become spaces.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass

SUITES = ("lastword", "cloze", "pairs")
VERSION = {"lastword": 1, "cloze": 1, "pairs": 1}
CHANCE = {"lastword": 0.0, "cloze": 0.25, "pairs": 0.5}
MAX_ITEMS = {"lastword": 500, "cloze": 500, "pairs": 1000}


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


_BLANK = re.compile(r"\n\s*\n")
_WS = re.compile(r"\s+")
_SENT = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z])")
_WORD = re.compile(r"[A-Za-z]+")


def paragraphs(text: str) -> list[str]:
    """Paragraphs (split at blank lines, whitespace collapsed), empty ones dropped."""
    return [p for p in (_WS.sub(" ", b).strip() for b in _BLANK.split(text)) if p]


def sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENT.split(paragraph) if s.strip()]


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
        words = p.split(" ")
        if len(words) < 60:
            continue
        m = re.search(r"([A-Za-z]+)[^A-Za-z]*$", p)
        if m is None or len(m.group(1)) < 3:
            continue
        target = m.group(1)
        context = p[: m.start(1)].rstrip()
        earlier = {w.lower() for w in _WORD.findall(context)}
        if target.lower() in earlier and context and p[m.start(1) - 1] == " ":
            items.append(Item(context, (" " + target,), 0))
    _need(items, name, ">= 60-word paragraphs whose last word occurs earlier", len(paras))
    items = _subsample(items, max_items or MAX_ITEMS[name], _rng(name, VERSION[name]))
    return Suite(name, VERSION[name], tuple(items))


def build_cloze(text: str, *, max_items: int | None = None) -> Suite:
    name = "cloze"
    rng = _rng(name, VERSION[name])
    paras = paragraphs(text)
    split = [sentences(p) for p in paras]
    pool = [(i, s) for i, ss in enumerate(split) for s in ss if len(s.split()) >= 4]
    pool.sort(key=lambda t: len(t[1].encode()))
    lengths = [len(s.encode()) for _, s in pool]
    items = []
    for i, ss in enumerate(split):
        if len(ss) < 4 or len(ss[3].split()) < 4:
            continue
        correct = ss[3]
        n = len(correct.encode())
        lo = next((k for k, v in enumerate(lengths) if v >= 0.67 * n), len(lengths))
        hi = next((k for k, v in enumerate(lengths) if v > 1.5 * n), len(lengths))
        cands = [s for j, s in pool[lo:hi] if j != i and s != correct]
        cands = list(dict.fromkeys(cands))
        if len(cands) < 3:
            continue
        endings = rng.sample(cands, 3)
        label = rng.randrange(4)
        endings.insert(label, correct)
        items.append(Item(" ".join(ss[:3]), tuple(" " + e for e in endings), label))
    _need(items, name, "paragraphs of >= 4 sentences", len(paras))
    items = _subsample(items, max_items or MAX_ITEMS[name], rng)
    return Suite(name, VERSION[name], tuple(items))


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


def _corrupt(words: list[str], rng: random.Random) -> str | None:
    """One ungrammatical edit of ``words`` (a list of space-separated tokens), or None."""
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
        return " ".join(new)
    plain = [k for k in range(len(words) - 1) if words[k].isalpha() and words[k + 1].isalpha()]
    plain = [k for k in plain if words[k].lower() != words[k + 1].lower()]
    if not plain:
        return None
    k = plain[rng.randrange(len(plain))]
    new = list(words)
    new[k], new[k + 1] = new[k + 1], new[k]
    return " ".join(new)


def build_pairs(text: str, *, max_items: int | None = None) -> Suite:
    name = "pairs"
    rng = _rng(name, VERSION[name])
    paras = paragraphs(text)
    items = []
    seen = set()
    for p in paras:
        for s in sentences(p):
            words = s.split(" ")
            if not 6 <= len(words) <= 40 or s in seen:
                continue
            seen.add(s)
            bad = _corrupt(words, rng)
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
