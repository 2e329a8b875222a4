"""Data: corpora from packages, deterministic splits, byte-level BPE, token streams, images.

``hyperfrac data prepare`` builds a dataset folder under the cache (see
:mod:`hyperfrac.data.prepare`; the package corpora in :mod:`hyperfrac.data.lit`, the image
datasets in :mod:`hyperfrac.data.vision`); :class:`TokenLoader` and :class:`ImageLoader` serve
resumable, rank-sharded batches. Opening a dataset checks it (:mod:`hyperfrac.data.dataset`);
a run calls :func:`validate_text_dataset` or :func:`validate_image_dataset` at start-up.
"""

from hyperfrac.data.dataset import (
    check_split_length,
    load_meta,
    load_token_bytes,
    open_tokens,
    validate_text_dataset,
)
from hyperfrac.data.loader import TokenLoader, eval_batches
from hyperfrac.data.prepare import cache_dir, dataset_dir, prepare
from hyperfrac.data.vision import (
    ImageLoader,
    check_image_split,
    load_images,
    prepare_images,
    validate_image_dataset,
)

__all__ = [
    "ImageLoader",
    "TokenLoader",
    "cache_dir",
    "check_image_split",
    "check_split_length",
    "dataset_dir",
    "eval_batches",
    "load_images",
    "load_meta",
    "load_token_bytes",
    "open_tokens",
    "prepare",
    "prepare_images",
    "validate_image_dataset",
    "validate_text_dataset",
]
