"""n copies of the hidden state: the stream layout HC and mHC share (HC §2.1, mHC §2).

``expand`` copies the hidden state into n identical streams, ``reduce`` sums them (HC Alg. 1),
and the branches' output projections start sqrt(n) larger (HC §4), since the n streams are
summed at the end. Layouts: (..., D) -> (..., n, D); channel-first (B, C, *sp) ->
(B, n, C, *sp).

``stream_embed`` (off by default) breaks the symmetry of the n copies with a learned
per-stream embedding E (n, D): the state entering the first layer is ``h_s = x + E_s`` instead
of n equal copies. E starts at zero, so at init the network computes exactly the function it
computes without it; it is a static connection parameter (no weight decay). Streams that start
identical and are mixed by symmetric coefficients can stay or collapse to one effective stream
(arXiv 2606.03483); E gives each stream its own offset from the first step. E is held and added
by the ``layer_idx == 0`` connection, at the start of its width connection, on the state
``expand`` produced: the same function as adding it in ``expand``, but inside the first
block's forward, so ``expand`` (called at the model root) stays parameter-free and FSDP2,
which shards each block's parameters outside that block's forward, stays correct. It is
counted once in the overheads (parameters n*D, FLOPs n*D per token).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from hyperfrac.connections import functional as kernels
from hyperfrac.connections.base import StreamConnection

_FP32_STATE = [False]


@contextlib.contextmanager
def fp32_stream_state(enabled: bool = True) -> Iterator[None]:
    """Keep the stream state in float32 under autocast (the behaviour before the state
    followed the training precision); ``enabled=False`` restores the default inside."""
    with kernels.flag_set(_FP32_STATE, enabled):
        yield


def state_in_training_precision(h: Tensor) -> Tensor:
    """The stream state in the training precision (DeepSeek-V4 keeps its n streams in the
    model dtype): under ``torch.autocast`` a float32 state is cast to the autocast dtype, so
    the n-wide state is stored, saved for backward and read in bf16. The kernels still
    compute the coefficients and accumulate the mixing in float32
    (:mod:`hyperfrac.connections.functional`). Off inside :func:`fp32_stream_state`."""
    device = h.device.type
    if _FP32_STATE[0] or h.dtype != torch.float32 or not torch.is_autocast_enabled(device):
        return h
    return h.to(torch.get_autocast_dtype(device))


class CopiedStreams(StreamConnection):
    """Stream layout of n identical copies; the subclass supplies the coefficients.

    Subclasses accept ``stream_embed: bool = False`` and call :meth:`_init_stream_embed` once
    ``n_slots`` is set."""

    slot_option = "n_streams"
    #: the ``stream_embed`` option this module was built with
    stream_embed: bool = False

    def _init_stream_embed(self, enabled: bool) -> None:
        """Create the zero-initialised per-stream embedding E (n, D) on the layer-0 module
        (2-D, so FSDP2 can shard it)."""
        self.stream_embed = bool(enabled)
        if self.stream_embed and self.layer_idx == 0:
            self.stream_embedding = nn.Parameter(torch.zeros(self.n_slots, self.slot_dim))

    def _flatten(self, h: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        hb, lead = super()._flatten(h)  # (N, n, D)
        embed = self._parameters.get("stream_embedding")
        if embed is not None:  # the state expand() made enters layer 0 as x + E_s
            hb = hb + embed.to(hb.dtype)  # (N, n, D)
        return hb, lead

    @property
    def n_streams(self) -> int:
        return self.n_slots

    @property
    def layer_stream(self) -> int:
        """The stream this layer reads at init: layer_idx mod n (HC Eq. 14)."""
        return self.layer_idx % self.n_slots

    @property
    def output_scale(self) -> float:
        return math.sqrt(self.n_slots)

    def flops_per_token(self) -> int:
        extra = self.n_slots * self.slot_dim if "stream_embedding" in self._parameters else 0
        return super().flops_per_token() + extra  # + E in expand

    def expand(self, x: Tensor) -> Tensor:
        """Copy the hidden state into n identical streams (HC §2.1), in the training precision
        (:func:`state_in_training_precision`); with ``stream_embed`` the layer-0 connection
        adds E to them (module docstring)."""
        self._check_input(x, "input")
        n = self.n_slots
        # materialised (not a stride-0 view): the kernels' bmm falls off its fast path otherwise
        x = state_in_training_precision(x)
        if self.channel_first:
            return x.unsqueeze(1).expand(x.shape[0], n, *x.shape[1:]).contiguous()  # (B,n,C,*sp)
        return x.unsqueeze(-2).expand(*x.shape[:-1], n, x.shape[-1]).contiguous()  # (..., n, D)

    def reduce(self, h: Tensor) -> Tensor:
        """Sum the streams (HC Alg. 1); a bf16 state under autocast is summed into fp32
        (:func:`~hyperfrac.connections.functional.branch_dtype`), as the residual's state is."""
        self._check_state(h)
        return h.sum(dim=1 if self.channel_first else -2, dtype=kernels.branch_dtype(h))
