"""Memory as the tensors see it: the bytes autograd saves for backward in one forward pass
(:func:`saved_tensor_bytes`), and the peak bytes of live tensors during a step
(:func:`peak_live_bytes`)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.utils._pytree
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode


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


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages created by the ops dispatched inside it that are
    still alive, and their peak: a storage is alive while any tensor on it is (the last
    tensor's finaliser fires when autograd drops a saved tensor too, PyObject preservation)."""

    def __init__(self, before: set[int]) -> None:
        super().__init__()
        self._before = before
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # data_ptr -> [nbytes, live tensors]

    def _release(self, ptr: int) -> None:
        entry = self._refs.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._refs[ptr]

    def _track(self, t: Tensor) -> None:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        ptr, nbytes = st.data_ptr(), st.nbytes()
        if nbytes == 0:
            return
        entry = self._refs.get(ptr)
        if entry is None:
            if ptr in self._before:  # created before the step (parameters, inputs)
                return
            entry = self._refs[ptr] = [nbytes, 0]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        weakref.finalize(t, self._release, ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, Tensor):
                self._track(t)
        return out


def peak_live_bytes(fn: Callable[[], Any], before: Iterable[Tensor] = ()) -> int:
    """Peak bytes of tensor storage that ``fn()`` (e.g. a training step: forward, backward,
    optimizer) allocates and holds at once, not counting the storages of ``before``
    (parameters, optimizer state, inputs). Unlike a process's peak RSS this does not depend on
    the allocator's heap layout; it is the working set the step needs."""
    mode = _LiveBytes({t.untyped_storage().data_ptr() for t in before})
    with mode:
        fn()
    return mode.peak
