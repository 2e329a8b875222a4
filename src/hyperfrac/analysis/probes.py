"""Record what every connection of any model sees and does, with forward hooks.

Works on any ``nn.Module`` that calls :class:`hyperfrac.connections.Connection` modules: the
model code needs no changes. For every connection call (in call order) a
:class:`ProbeRecord` keeps the branch input (the "layer input" of HC Fig. 3 / FC Fig. 2) and
the per-token paper-layout connection matrix, both recomputed from the stream state the
connection received. Axes: N tokens (sampled), D width, S slots, R branch-input slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hyperfrac.connections import Connection


@dataclass
class ProbeRecord:
    """One connection call."""

    name: str  # module path in the model
    layer_idx: int  # sublayer index (attention and FFN count separately)
    layer_input: Tensor  # (N, D) branch input, float32, on CPU
    matrix: Tensor  # (N, S+1, R+S) connection matrix per token, float64, on CPU


class ConnectionProbe:
    """Context manager: ``with ConnectionProbe(model, max_tokens=512) as probe: model(x)``.

    ``max_tokens`` keeps a fixed, evenly spaced subset of token positions per call (the same
    positions in every layer, so adjacent layers compare the same tokens).
    """

    def __init__(self, model: nn.Module, *, max_tokens: int | None = 1024) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.records: list[ProbeRecord] = []
        #: (N, R, S) per token, when the model collapses the state with a learned reduce (a
        #: module with ``reduce_weights``: AttnRes' final read, HyperHead); None for a fixed sum.
        self.reduce: Tensor | None = None
        self._handles: list = []
        self._patched: list[nn.Module] = []

    def _select(self, n: int) -> Tensor:
        if self.max_tokens is None or n <= self.max_tokens:
            return torch.arange(n)
        return torch.linspace(0, n - 1, self.max_tokens).round().long()

    def _hook(self, name: str):
        def hook(module: Connection, args, output) -> None:
            h = args[0]
            with torch.no_grad():
                x, _ = module.width_connection(h)
                mat = module.connection_matrix(h)
            if module.channel_first:
                x = x.movedim(1, -1)
            x = x.reshape(-1, x.shape[-1])  # (N, D)
            mat = mat.reshape(-1, *mat.shape[-2:]) if mat.dim() > 2 else mat.expand(
                x.shape[0], *mat.shape)  # (N, S+1, R+S)
            idx = self._select(x.shape[0])
            self.records.append(ProbeRecord(
                name, module.layer_idx, x[idx].detach().float().cpu(),
                mat[idx].detach().double().cpu(),
            ))

        return hook

    def _record_reduce(self, module: nn.Module, h: Tensor) -> None:
        with torch.no_grad():
            w = module.reduce_weights(h)  # (..., R, S)
        w = w.reshape(-1, *w.shape[-2:])  # (N, R, S)
        self.reduce = w[self._select(w.shape[0])].detach().double().cpu()

    def _watch_reduce(self, module: nn.Module) -> None:
        """Record the learned reduce's weights whenever the model collapses the state: a
        forward hook on a head module, a wrapper on a connection's ``reduce`` method (an
        instance attribute, removed on exit)."""
        if not isinstance(module, Connection):
            self._handles.append(module.register_forward_hook(
                lambda mod, args, out: self._record_reduce(mod, args[0])))
            return
        method = module.reduce

        def reduce(h: Tensor) -> Tensor:
            self._record_reduce(module, h)
            return method(h)

        module.reduce = reduce
        self._patched.append(module)

    def __enter__(self) -> ConnectionProbe:
        self.records.clear()
        self.reduce = None
        for name, module in self.model.named_modules():
            if isinstance(module, Connection):
                self._handles.append(module.register_forward_hook(self._hook(name)))
            if callable(getattr(module, "reduce_weights", None)):
                self._watch_reduce(module)
        if not self._handles:
            raise ValueError("the model has no hyperfrac connection modules to probe")
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._patched:
            del module.reduce  # back to the class's method
        self._patched.clear()

    # convenience views
    @property
    def layer_inputs(self) -> list[Tensor]:
        return [r.layer_input for r in self.records]

    @property
    def matrices(self) -> list[Tensor]:
        return [r.matrix for r in self.records]
