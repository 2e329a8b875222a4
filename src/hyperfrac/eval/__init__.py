"""Evaluation: bits-per-byte on the evaluation splits and on any text, offline multiple-choice
suites built from held-out text, image-classifier accuracy, and ``hyperfrac eval``."""

from hyperfrac.eval.lm import evaluate_lm
from hyperfrac.eval.scoring import LMScorer, score_suite, text_bpb, wilson_interval
from hyperfrac.eval.suites import SUITES, Item, Suite, build_suite
from hyperfrac.eval.vision import evaluate_classifier

__all__ = [
    "SUITES",
    "Item",
    "LMScorer",
    "Suite",
    "build_suite",
    "evaluate_classifier",
    "evaluate_lm",
    "score_suite",
    "text_bpb",
    "wilson_interval",
]
