"""Activation memory as autograd sees it: the bytes saved for backward by one forward pass."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


def saved_tensor_bytes(fn: Callable[[], Any], exclude: Iterable[Tensor] = ()) -> int:
    """Run ``fn()`` and return the total size of the distinct storages autograd saved for
    backward, each counted once, leaving out the storages of ``exclude`` (parameters, inputs).

    Saved-tensor hooks active inside ``fn`` (e.g. a connection's ``recompute``) chain to this
    one, so tensors they drop are correctly not counted.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. tensor subclasses without storage
            return t
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())
