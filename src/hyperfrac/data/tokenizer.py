"""Byte-level BPE tokenizer (HF ``tokenizers``) trained on the train split only.

Byte-level BPE (GPT-2 style) never produces unknown tokens, and every non-special token stands
for a fixed byte string: the tokenizer's byte-to-unicode alphabet maps each byte to one
character, so a token of ``k`` characters decodes to exactly ``k`` bytes. ``token_bytes`` uses
that to give each id its byte length, which makes bits-per-byte exact on any subset of tokens:
``bpb = sum(NLL in nats) / ln 2 / sum(token_bytes[targets])``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

EOS = "<|endoftext|>"
"""End-of-text token, the only special token of the trained vocabulary; documents are
separated by it, so a model learns to emit it at the end of a text."""
PAD = "<|pad|>"
"""Pad token of exported tokenizers (:func:`hyperfrac.hf.export.load_bpe_tokenizer` appends it
after the trained vocabulary; the data never contain it)."""


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2):
    """Train a byte-level BPE with ``vocab_size`` entries (the EOS special token included)."""
    from tokenizers import ByteLevelBPETokenizer

    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size={vocab_size} is below 258 (256 bytes + EOS + 1 merge)")
    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        show_progress=False,
    )
    return tok._tokenizer  # the underlying tokenizers.Tokenizer (serialisable, fast encode)


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def token_bytes(tokenizer) -> np.ndarray:
    """(V,) int32 byte length of every token id; 0 for special tokens."""
    vocab = tokenizer.get_vocab()
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    out = np.zeros(max(vocab.values()) + 1, dtype=np.int32)
    for piece, idx in vocab.items():
        out[idx] = 0 if piece in specials else len(piece)
    return out
