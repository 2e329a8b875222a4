"""Activation memory for stream connections (HC App. B: recompute the mixing).

:class:`RecomputeInput` drops the branch input x from autograd's saved tensors and rebuilds it
in backward as ``P^T h`` from the connection's own saved state; other saved tensors pass to the
hooks active outside, so it composes with offloading or a memory probe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor


class _XView(NamedTuple):
    """Placeholder for a saved view of the branch input."""

    size: torch.Size
    stride: tuple[int, ...]
    offset: int


class RecomputeInput:
    """saved_tensors_hooks that drop the branch input x from autograd's saved tensors and
    rebuild it in backward as P^T h from the connection's own saved state (one small bmm).

    Any saved tensor that is x or a view of x is replaced by an :class:`_XView`; x is
    recomputed once per backward and shared by all unpacks. Other tensors go to the hooks that
    were active outside (e.g. CPU offloading, or a memory probe), so the two compose.
    """

    def __init__(self, x: Tensor, recompute: Callable[[], Tensor]) -> None:
        self.ptr = x.untyped_storage().data_ptr()
        self.x_offset = x.storage_offset()
        self.recompute_fn = recompute
        # backward runs outside autocast: rebuild under the forward's autocast state, so that
        # x comes out in the same dtype and with the same values (functional.branch_dtype)
        self.device = x.device.type
        self.autocast = torch.is_autocast_enabled(self.device)
        self.autocast_dtype = torch.get_autocast_dtype(self.device)
        self.cache: Tensor | None = None
        top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
        outer = top(False) if top is not None else None
        self.outer_pack, self.outer_unpack = outer if outer else (None, None)

    def pack(self, t: Tensor):
        if t.untyped_storage().data_ptr() == self.ptr:
            return _XView(t.size(), t.stride(), t.storage_offset() - self.x_offset)
        return self.outer_pack(t) if self.outer_pack is not None else t

    def unpack(self, packed):
        if not isinstance(packed, _XView):
            return self.outer_unpack(packed) if self.outer_unpack is not None else packed
        if self.cache is None:
            with torch.no_grad(), torch.autocast(self.device, dtype=self.autocast_dtype,
                                                 enabled=self.autocast):
                self.cache = self.recompute_fn()
        return self.cache.as_strided(
            packed.size, packed.stride, self.cache.storage_offset() + packed.offset
        )
