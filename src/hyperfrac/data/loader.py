"""Stateful, rank-sharded batches from a memmapped token stream.

The stream of N tokens is viewed as W = (N - 1) // T windows of T + 1 tokens (window w covers
tokens [w*T, w*T + T]; inputs are the first T, targets the last T). Each epoch visits the
windows in a fresh permutation drawn from ``seed`` and the epoch number; one optimizer
micro-step consumes ``B * world_size`` consecutive permutation entries and rank r takes entries
[r*B, (r+1)*B). A tail shorter than a global batch is skipped. The loader's whole state is
``(epoch, pos)``: saving it in a checkpoint and loading it back resumes the exact sequence of
batches.

Axis legend: B batch (per rank), T sequence length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor


def _count(name: str, value: int, fix: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1; {fix}")


def check_batching(batch_size: int, rank: int = 0, world_size: int = 1) -> None:
    """Raise unless ``batch_size`` and ``world_size`` are integers >= 1 and ``rank`` lies in
    ``[0, world_size)`` (the loaders and evaluators share these arguments)."""
    _count("batch_size", batch_size, "set train.batch_size / eval.batch_size (e.g. 16)")
    _count("world_size", world_size, "it is the number of processes")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank!r} must be in [0, world_size={world_size})")


def check_seq_len(seq_len: int) -> None:
    """Raise unless ``seq_len`` (tokens per window, ``data.seq_len``) is an integer >= 1."""
    _count("seq_len", seq_len, "set data.seq_len (e.g. 256)")


class TokenLoader:
    """Infinite, shuffled, rank-sharded (B, T) batches with exact resume via ``state_dict``."""

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_batching(batch_size, rank, world_size)
        check_seq_len(seq_len)
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < batch_size * world_size:
            raise ValueError(
                f"{len(tokens):,} tokens make {self.n_windows} windows of seq_len={seq_len}, "
                f"fewer than one global batch ({batch_size} x {world_size} ranks); "
                "use a smaller batch_size or seq_len, or more data"
            )
        self.epoch, self.pos = 0, 0
        self._perm: Tensor | None = None

    def _permutation(self) -> Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.n_windows, generator=g)
        return self._perm

    def windows(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        T = self.seq_len
        rows = np.stack([np.asarray(self.tokens[int(w) * T : int(w) * T + T + 1]) for w in idx])
        batch = torch.from_numpy(rows.astype(np.int64))  # (B, T + 1)
        return batch[:, :-1], batch[:, 1:]

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """The next (inputs, targets) pair, each (B, T) int64."""
        global_b = self.batch_size * self.world_size
        if self.pos + global_b > self.n_windows:
            self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        start = self.pos + self.rank * self.batch_size
        idx = self._permutation()[start : start + self.batch_size]
        self.pos += global_b
        return self.windows(idx)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "pos": self.pos,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch": self.batch_size * self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        mine = self.state_dict()
        for key in ("seed", "seq_len", "global_batch"):
            if state[key] != mine[key]:
                raise ValueError(
                    f"loader state has {key}={state[key]} but this run uses {mine[key]}; "
                    "exact resume needs the same data settings"
                )
        self.epoch, self.pos, self._perm = int(state["epoch"]), int(state["pos"]), None


IGNORE_INDEX = -100
"""Target id of a padding batch (:func:`eval_batches`): ``cross_entropy`` skips it by default."""


def shard_batches(
    n: int,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    max_batches: int | None = None,
) -> Iterator[tuple[Tensor, bool]]:
    """``(item indices, real)`` batches of this rank's items, in order. The items are the first
    ``max_batches * batch_size`` of ``n`` (all with None), whatever the number of ranks, so a
    capped evaluation sees the same items on 1 or N processes; item i belongs to rank
    ``i % world_size``. Every rank yields the same number of batches (rank 0's, which has the
    most items), so that forwards with collectives inside (FSDP all-gathers) stay in step; a
    rank whose share has run out yields a one-item batch with ``real=False``, to be run and
    discarded."""
    if n < 1:
        raise ValueError("nothing to evaluate: the split has no items")
    check_batching(batch_size, rank, world_size)
    if max_batches is not None:
        _count("max_batches", max_batches, "give None for the whole split, or a count >= 1")
        n = min(n, max_batches * batch_size)
    mine = torch.arange(n)[rank::world_size]  # may be empty when n < world_size
    n_batches = math.ceil(math.ceil(n / world_size) / batch_size)
    pad = torch.zeros(1, dtype=torch.long)  # any valid item; its result is dropped
    for b in range(n_batches):
        idx = mine[b * batch_size : (b + 1) * batch_size]
        yield (idx, True) if len(idx) else (pad, False)


def eval_batches(
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    max_batches: int | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive non-overlapping windows in order (every token predicted once except the
    first of each window), sharded by rank (see :func:`shard_batches`; ``max_batches`` caps the
    windows at ``max_batches * batch_size`` in all). All ranks yield the same number of batches;
    a padding batch has every target ``IGNORE_INDEX``."""
    check_seq_len(seq_len)
    n = (len(tokens) - 1) // seq_len
    if n == 0:
        raise ValueError(
            f"the split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}"
        )
    for idx, real in shard_batches(
        n, batch_size, rank=rank, world_size=world_size, max_batches=max_batches
    ):
        rows = np.stack(
            [np.asarray(tokens[int(w) * seq_len : int(w) * seq_len + seq_len + 1]) for w in idx]
        )
        batch = torch.from_numpy(rows.astype(np.int64))  # (b, T + 1)
        x, y = batch[:, :-1], batch[:, 1:]
        yield x, (y if real else torch.full_like(y, IGNORE_INDEX))
