"""Multiple-choice suites: deterministic, versioned items with the intended structure; scorers
that follow a known rule get exactly the expected accuracy; empty or unusable text is an error."""

from __future__ import annotations

import math
import random

import pytest

from hyperfrac.eval.scoring import predictions, score_suite, wilson_interval
from hyperfrac.eval.suites import SUITES, build_suite, paragraphs, sentences

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
    paras = [sentences(p) for p in paragraphs(TEXT)]
    nexts = {" ".join(s[:3]): s[3] for s in paras if len(s) >= 4}
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


# Items of version 1 on TEXT. A change to a recipe must bump VERSION in hyperfrac.eval.suites
# and update these (same version -> same items on every machine).
GOLDEN_V1 = {
    "lastword": (39, "ae7405404031189cb35b0e08701f38c8f9d7c839a5757c390bc4966f1c5502fe"),
    "cloze": (60, "b691bce336bb38ab096099e88db21f55e0285bcee4159c14f6a105323b8f9228"),
    "pairs": (371, "fda7ff6e8d583deb46cfa335ce5a7a0fded491649ccb01bc53c4be7108c06450"),
}


@pytest.mark.parametrize("name", SUITES)
def test_version_1_items_are_pinned(name: str) -> None:
    suite = build_suite(name, TEXT)
    assert suite.version == 1, "new version: update GOLDEN_V1"
    assert (len(suite), suite.sha256) == GOLDEN_V1[name]
