"""Data: corpora from packages, deterministic splits, byte-level BPE, token streams, images.

``hyperfrac data prepare`` builds a dataset folder under the cache (see
:mod:`hyperfrac.data.prepare`; the package corpora in :mod:`hyperfrac.data.lit`, the image
datasets in :mod:`hyperfrac.data.vision`); :class:`TokenLoader` and :class:`ImageLoader` serve
resumable, rank-sharded batches.
"""

from hyperfrac.data.loader import TokenLoader, eval_batches
from hyperfrac.data.prepare import cache_dir, dataset_dir, load_meta, open_tokens, prepare
from hyperfrac.data.vision import ImageLoader, load_images, prepare_images

__all__ = [
    "ImageLoader",
    "TokenLoader",
    "eval_batches",
    "cache_dir",
    "dataset_dir",
    "load_images",
    "load_meta",
    "open_tokens",
    "prepare",
    "prepare_images",
]
