"""Evaluation: validation loss and bits-per-byte (:func:`evaluate_lm`), ``hyperfrac eval``."""

from hyperfrac.eval.lm import evaluate_lm

__all__ = ["evaluate_lm"]
