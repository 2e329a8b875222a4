"""Opening a prepared token dataset, checked at the door.

A dataset folder (see :mod:`hyperfrac.data.prepare`) is trusted only as far as it is checked:
:func:`load_meta` parses ``meta.json`` and checks its fields; :func:`open_tokens` memmaps a
split after checking that the file exists, is not empty, holds as many tokens as ``meta.json``
says and no id outside the tokenizer's vocabulary (one ``np.max`` over the memmap, which reads
the split once: a few milliseconds for our corpora of up to ~10 M tokens);
:func:`check_split_length` says whether a split holds one window of ``seq_len + 1`` tokens.
:func:`validate_text_dataset` runs all of it for a run at start-up. Every error names the file
and the fix (usually: prepare the dataset again with ``--force``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

TOKEN_DTYPES = ("uint16", "uint32")


def is_ready(path: Path) -> bool:
    """Whether ``path`` holds a finished preparation (its ``READY`` file is written last)."""
    return (Path(path) / "READY").is_file()


def prepare_hint(path: Path) -> str:
    """The command that (re)builds the dataset at ``path``: corpus and vocabulary come from a
    cache folder name ``<corpus>-bpe<vocab>``, else they are left for the reader to fill in."""
    m = re.fullmatch(r"(.+)-bpe(\d+)", Path(path).name)
    corpus, vocab = (m.group(1), m.group(2)) if m else ("CORPUS", "VOCAB")
    return f"re-run `hyperfrac data prepare --corpus {corpus} --vocab-size {vocab} --force`"


def load_meta(path: Path) -> dict:
    """``meta.json`` of a prepared dataset, checked: vocab_size, dtype, per-split token counts."""
    path = Path(path)
    if not is_ready(path):
        raise FileNotFoundError(
            f"no prepared dataset at {path}; run `hyperfrac data prepare` (see --help) first"
        )
    file = path / "meta.json"
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} is missing; {prepare_hint(path)}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}); {prepare_hint(path)}") from None
    problem = _meta_problem(meta)
    if problem:
        raise ValueError(f"{file} {problem}; {prepare_hint(path)}")
    return meta


def _meta_problem(meta: object) -> str | None:
    """What is wrong with a parsed ``meta.json`` (None when nothing is)."""
    if not isinstance(meta, dict):
        return f"holds {type(meta).__name__}, not an object"
    vocab = meta.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        return f"has vocab_size={vocab!r}, not a positive integer"
    if meta.get("dtype") not in TOKEN_DTYPES:
        return f"has dtype={meta.get('dtype')!r}, not one of {TOKEN_DTYPES}"
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not splits:
        return "lists no splits"
    for name, s in splits.items():
        if not isinstance(s, dict) or not isinstance(s.get("tokens"), int):
            return f"has no token count for split {name!r}"
    return None


def open_tokens(path: Path, split: str) -> np.memmap:
    """Read-only memmap of a split's token ids, checked (see the module docstring)."""
    path = Path(path)
    meta = load_meta(path)
    if split not in meta["splits"]:
        raise KeyError(
            f"the dataset at {path} has no {split!r} split (it has {sorted(meta['splits'])})"
        )
    file = path / f"{split}.bin"
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing; {prepare_hint(path)}")
    itemsize = np.dtype(meta["dtype"]).itemsize
    size, expected = file.stat().st_size, meta["splits"][split]["tokens"]
    if size == 0:
        raise ValueError(f"{file} is empty (0 tokens); {prepare_hint(path)}")
    if size % itemsize or size // itemsize != expected:
        raise ValueError(
            f"{file} is {size:,} bytes but meta.json says {expected:,} {meta['dtype']} tokens "
            f"({expected * itemsize:,} bytes): truncated or from another preparation; "
            + prepare_hint(path)
        )
    tokens = np.memmap(file, dtype=meta["dtype"], mode="r")
    top = int(tokens.max())
    if top >= meta["vocab_size"]:
        raise ValueError(
            f"{file} holds token id {top} but the tokenizer has {meta['vocab_size']} ids "
            f"(0..{meta['vocab_size'] - 1}): corrupt or from another tokenizer; "
            + prepare_hint(path)
        )
    return tokens


def check_split_length(tokens: np.ndarray, seq_len: int, split: str, path: Path) -> None:
    """Raise unless ``tokens`` (the ``split`` of the dataset at ``path``) holds at least one
    window of ``seq_len + 1`` tokens (inputs and shifted targets)."""
    n = len(tokens)
    if n < seq_len + 1:
        shorter = f"lower data.seq_len to at most {n - 1} or " if n > 1 else ""
        raise ValueError(
            f"the {split} split of {path} has {n:,} tokens, fewer than one window of "
            f"data.seq_len + 1 = {seq_len + 1:,}; {shorter}prepare more {split} text "
            "(e.g. a smaller --val-every for the val split)"
        )


def load_token_bytes(path: Path, vocab_size: int) -> np.ndarray:
    """``token_bytes.npy`` (byte length of every token id), checked to cover ``vocab_size`` ids."""
    file = Path(path) / "token_bytes.npy"
    try:
        tb = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} is missing; {prepare_hint(path)}") from None
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{file} is not a NumPy array file ({e}); {prepare_hint(path)}") from None
    if tb.ndim != 1 or len(tb) < vocab_size:
        raise ValueError(
            f"{file} has shape {tb.shape} but the tokenizer has {vocab_size} ids; "
            + prepare_hint(path)
        )
    return tb


class TextDataset(NamedTuple):
    """What :func:`validate_text_dataset` opened and checked (memmaps, no copies)."""

    meta: dict
    tokens: dict[str, np.memmap]  # split name -> token ids
    token_bytes: np.ndarray


def validate_text_dataset(
    path: Path, *, vocab_size: int, seq_len: int, splits: tuple[str, ...] = ("train", "val")
) -> TextDataset:
    """Everything a run needs of the dataset at ``path``, checked at start-up: parseable meta,
    a tokenizer no larger than the model's ``vocab_size`` (``model.vocab_size``), byte lengths
    for every id, and each of ``splits`` non-empty, consistent with meta.json, with ids below
    the vocabulary and at least one window of ``seq_len + 1`` tokens (``data.seq_len``).
    Returns what it opened, so a caller does not open (and scan) it again."""
    meta = load_meta(path)
    if meta["vocab_size"] > vocab_size:
        raise ValueError(
            f"the tokenizer at {path} has {meta['vocab_size']} tokens but model.vocab_size="
            f"{vocab_size}; set model.vocab_size >= {meta['vocab_size']}"
        )
    token_bytes = load_token_bytes(path, meta["vocab_size"])
    tokens = {split: open_tokens(path, split) for split in splits}
    for split, t in tokens.items():
        check_split_length(t, seq_len, split, path)
    return TextDataset(meta, tokens, token_bytes)
