"""Multiple-choice suites: deterministic, versioned items with the intended structure; scorers
that follow a known rule get exactly the expected accuracy; empty or unusable text is an error."""

from __future__ import annotations

import math
import random

import pytest

from hyperfrac.eval.scoring import predictions, score_suite, wilson_interval
from hyperfrac.eval.suites import SUITES, build_suite, paragraphs, sentence_spans, sentences

WORDS = (
    "the house was quiet and she is walking to a garden where he has found an old letter "
    "which they were reading by the window while rain does fall upon every stone"
).split()


def held_out_text(n_paras: int = 60, seed: int = 0) -> str:
    rng = random.Random(seed)
    paras = []
    for p in range(n_paras):
        sents = []
        for _ in range(rng.randint(4, 8)):
            n = rng.randint(6, 16)
            sents.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + ".")
        if p % 3 == 0:  # a long paragraph ending with a word seen before (lastword material)
            sents.append("And so the letter was read by the window again and again, like a letter.")
        paras.append(f"Paragraph {p} begins. " + " ".join(sents))
    return "\n\n".join(paras) + "\n"


TEXT = held_out_text()


def test_suites_are_deterministic_and_versioned() -> None:
    for name in SUITES:
        a, b = build_suite(name, TEXT), build_suite(name, TEXT)
        assert a == b and a.sha256 == b.sha256 and a.version >= 1 and len(a) > 10
        assert build_suite(name, held_out_text(seed=1)).sha256 != a.sha256
    assert len(build_suite("pairs", TEXT, max_items=7)) == 7


def test_item_structure() -> None:
    lastword = build_suite("lastword", TEXT)
    for it in lastword.items:
        assert it.choices[0].startswith(" ") and it.label == 0
        word = it.choices[0].strip()
        assert len(word) >= 3 and word.lower() in it.context.lower()
        assert len(it.context.split()) >= 59
    cloze = build_suite("cloze", TEXT)
    nexts = {}
    for p in paragraphs(TEXT):
        ss = sentences(p)
        for g in range(0, len(ss) - 3, 4):  # non-overlapping groups of four sentences
            nexts[" ".join(ss[g:g + 3])] = ss[g + 3]
    labels = [it.label for it in cloze.items]
    assert set(labels) == {0, 1, 2, 3}  # the correct ending moves around
    for it in cloze.items:
        assert len(it.choices) == 4 and len(set(it.choices)) == 4
        assert it.choices[it.label] == " " + nexts[it.context]
        n = len(nexts[it.context].encode())
        assert all(0.67 * n <= len(c.encode()) - 1 <= 1.5 * n for c in it.choices)
    pairs = build_suite("pairs", TEXT)
    for it in pairs.items:
        good, bad = it.choices[it.label].split(), it.choices[1 - it.label].split()
        diff = [k for k in range(len(good)) if good[k] != bad[k]]
        assert len(good) == len(bad) and diff
        one_word = len(diff) == 1
        adjacent_swap = diff == [diff[0], diff[0] + 1] and good[diff[0]] == bad[diff[1]]
        assert one_word or adjacent_swap, (good, bad)
        assert it.choices[it.label] in TEXT and it.context == ""


class RuleScorer:
    """Log-probability = +1 for the (context, continuation) pairs in ``liked``, else 0; greedy
    match for the pairs in ``greedy`` (a known rule, so the accuracy is known exactly)."""

    def __init__(self, liked=frozenset(), greedy=frozenset()) -> None:
        self.liked, self.greedy = set(liked), set(greedy)

    def score(self, requests):
        return [
            (1.0 if r in self.liked else 0.0, len(r[1].encode()), r in self.greedy)
            for r in requests
        ]


@pytest.mark.parametrize("name", ["cloze", "pairs"])
def test_rule_scorers_get_the_expected_accuracy(name: str) -> None:
    suite = build_suite(name, TEXT)
    right = {(it.context, it.choices[it.label]) for it in suite.items}
    assert score_suite(suite, RuleScorer(right))["accuracy"] == 1.0
    res = score_suite(suite, RuleScorer())  # all ties -> the first choice
    expected = sum(it.label == 0 for it in suite.items) / len(suite)
    assert res["accuracy"] == expected and res["chance"] == {"cloze": 0.25, "pairs": 0.5}[name]
    assert 0 < expected < 1
    wrong = {(it.context, it.choices[(it.label + 1) % len(it.choices)]) for it in suite.items}
    assert score_suite(suite, RuleScorer(wrong))["accuracy"] == 0.0
    lo, hi = res["ci95"]
    assert lo < res["accuracy"] < hi and res["items"] == len(suite)
    assert res["version"] == suite.version and res["sha256"] == suite.sha256


def test_lastword_accuracy_counts_greedy_matches() -> None:
    suite = build_suite("lastword", TEXT)
    half = {(it.context, it.choices[0]) for k, it in enumerate(suite.items) if k % 2 == 0}
    res = score_suite(suite, RuleScorer(greedy=half))
    assert res["accuracy"] == len(half) / len(suite) and res["chance"] == 0.0
    all_items = {(it.context, it.choices[0]) for it in suite.items}
    assert predictions(suite, RuleScorer(greedy=all_items)) == [0] * len(suite)


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(50, 100)
    assert math.isclose(lo, 0.4038, abs_tol=1e-4) and math.isclose(hi, 0.5962, abs_tol=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and math.isclose(wilson_interval(10, 10)[1], 1.0)


@pytest.mark.parametrize("name", SUITES)
def test_empty_and_unusable_text_are_clear_errors(name: str) -> None:
    with pytest.raises(ValueError, match="source text is empty"):
        build_suite(name, "  \n\n ")
    with pytest.raises(ValueError, match="no items could be built"):
        build_suite(name, "Too short.\n\nAlso short.\n")
    with pytest.raises(ValueError, match="unknown suite"):
        build_suite("hellaswag", TEXT)


# Items of version 2 on TEXT. A change to a recipe must bump VERSION in hyperfrac.eval.suites
# and update these (same version -> same items on every machine).
GOLDEN_V2 = {
    "lastword": (39, "ae7405404031189cb35b0e08701f38c8f9d7c839a5757c390bc4966f1c5502fe"),
    "cloze": (92, "0dd15cdd58cd60f4b520e1d269508b25347c49311d6786d40bb6e928bc22f460"),
    "pairs": (371, "7094c2c197c4f24145e269509e1498c2f1485f312970695c9d3d7784d6645177"),
}


@pytest.mark.parametrize("name", SUITES)
def test_version_2_items_are_pinned(name: str) -> None:
    suite = build_suite(name, TEXT)
    assert suite.version == 2, "new version: update GOLDEN_V2"
    assert (len(suite), suite.sha256) == GOLDEN_V2[name]


def wrapped_text(width: int = 48) -> str:
    """TEXT hard-wrapped at ``width`` columns, like the training corpus (verse, wrapped prose)."""
    import textwrap

    return "\n\n".join(textwrap.fill(p, width) for p in TEXT.split("\n\n") if p.strip()) + "\n"


WRAPPED = wrapped_text()


def test_paragraphs_and_sentences_keep_the_line_format() -> None:
    paras = paragraphs(WRAPPED)
    assert len(paras) == 60 and all("\n" in p for p in paras)
    assert all(p in WRAPPED for p in paras)  # verbatim, line breaks and all
    for p in paras:
        spans = sentence_spans(p)
        assert "".join(w + t for w, t in spans) == p and spans[0][0] == ""
        assert any("\n" in t for _, t in spans) or any(w == "\n" for w, _ in spans)
    assert paragraphs("a  \nb\n \n\nc\n") == ["a\nb", "c"]  # trailing spaces, blank lines


def test_suite_items_keep_the_line_format() -> None:
    for name in SUITES:
        suite = build_suite(name, WRAPPED)
        assert len(suite) > 10
        for it in suite.items:
            for choice in it.choices:
                # context + continuation is text that stands in the wrapped source as it is
                # (for cloze only the correct ending continues the context)
                if name == "lastword" or choice == it.choices[it.label]:
                    assert (it.context + choice) in WRAPPED, (it.context[-60:], choice)
        assert any("\n" in it.context + "".join(it.choices) for it in suite.items), name
    cloze = build_suite("cloze", WRAPPED)
    for it in cloze.items:  # every ending starts with the whitespace before the correct one
        seps = {c[: len(c) - len(c.lstrip())] for c in it.choices}
        assert len(seps) == 1 and seps.pop() in (" ", "\n")
    lastword = build_suite("lastword", WRAPPED)
    assert {it.choices[0][0] for it in lastword.items} <= {" ", "\n"}
