"""Name -> connection class. Variants are registered here, never chosen by if-chains."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

from hyperfrac.connections.base import Connection
from hyperfrac.connections.frac import FracConnection
from hyperfrac.connections.hyper import DynamicMixing, HyperConnection
from hyperfrac.connections.mhc import ManifoldHyperConnection
from hyperfrac.connections.residual import PostNorm, Residual

_REGISTRY: dict[str, Callable[..., Connection]] = {}
_OPTIONS: dict[str, set[str]] = {}


def _keyword_options(*classes: type) -> set[str]:
    names: set[str] = set()
    for cls in classes:
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                names.add(p.name)
    return names


def register(name: str, factory: Callable[..., Connection], options: set[str]) -> None:
    """Register ``factory(dim, *, layer_idx, **options)`` under ``name``."""
    if name in _REGISTRY:
        raise ValueError(f"connection kind {name!r} is already registered")
    _REGISTRY[name] = factory
    _OPTIONS[name] = set(options)


_stream_opts = _keyword_options(DynamicMixing) - {"n_slots", "slot_dim", "n_inputs", "dynamic"}
register("residual", Residual, {"channel_first"})
register("postnorm", PostNorm, {"channel_first", "eps"})
register("hc", partial(HyperConnection, dynamic=False), _stream_opts | {"n_streams"})
register("dhc", partial(HyperConnection, dynamic=True), _stream_opts | {"n_streams"})
register("fc", partial(FracConnection, dynamic=False), _stream_opts | {"n_fracs"})
register("dfc", partial(FracConnection, dynamic=True), _stream_opts | {"n_fracs"})
register("mhc", ManifoldHyperConnection, _keyword_options(ManifoldHyperConnection))

KINDS: tuple[str, ...] = tuple(_REGISTRY)


def options_for(kind: str) -> set[str]:
    """The keyword options that ``build(kind, ...)`` accepts."""
    _check_kind(kind)
    return set(_OPTIONS[kind]) - {"layer_idx"}


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise ValueError(f"unknown connection kind {kind!r}; expected one of {sorted(_REGISTRY)}")


def build(kind: str, dim: int, *, layer_idx: int = 0, **options) -> Connection:
    """Build a connection module.

    Args:
        kind: one of :data:`KINDS` ("residual", "postnorm", "hc", "dhc", "fc", "dfc", "mhc").
        dim: model width D.
        layer_idx: index of the layer (sub-layer: attention and FFN count separately); HC
            reads stream ``layer_idx mod n`` at init (HC Eq. 14).
        **options: kind-specific options, e.g. ``n_streams``, ``n_fracs``, ``tanh``, ``norm``,
            ``rescale``, ``freeze``, ``sinkhorn_iters``, ``channel_first``.
    """
    _check_kind(kind)
    unknown = set(options) - _OPTIONS[kind]
    if unknown:
        raise TypeError(
            f"unknown option(s) {sorted(unknown)} for connection kind {kind!r}; "
            f"valid options: {sorted(options_for(kind))}"
        )
    return _REGISTRY[kind](dim, layer_idx=layer_idx, **options)
