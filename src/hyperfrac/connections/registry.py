"""Name -> connection class and option schema. Variants are registered here, never chosen by
if-chains, and a spec is checked here only (:func:`validate_spec`)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from hyperfrac.connections.attnres import AttentionResidual, BlockSize
from hyperfrac.connections.base import Connection
from hyperfrac.connections.deepseek_v4 import DeepseekV4HyperConnection
from hyperfrac.connections.doubly_stochastic import StreamCount
from hyperfrac.connections.frac import FracConnection
from hyperfrac.connections.hyper import HyperConnection
from hyperfrac.connections.kromhc import KromHC
from hyperfrac.connections.mhc import ManifoldHyperConnection
from hyperfrac.connections.mhc_lite import MAX_STREAMS as _MHC_LITE_MAX
from hyperfrac.connections.mhc_lite import MHCLite
from hyperfrac.connections.mixing import FREEZABLE, NORM_TYPES
from hyperfrac.connections.options import (
    Choice,
    ConnectionSpecError,
    Count,
    Flag,
    Fraction,
    Option,
    Positive,
    Subset,
)
from hyperfrac.connections.residual import PostNorm, Residual


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Connection]
    schema: Mapping[str, Option]


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, factory: Callable[..., Connection], schema: Mapping[str, Option]) -> None:
    """Register ``factory(dim, *, layer_idx, **options)`` under ``name``; ``schema`` maps each
    option the factory accepts to the :class:`~hyperfrac.connections.options.Option` that
    checks its value."""
    if name in _REGISTRY:
        raise ValueError(f"connection kind {name!r} is already registered")
    _REGISTRY[name] = _Entry(factory, dict(schema))


class Flavors:
    """Factory of a kind whose ``flavor`` option picks the class (the first is the default),
    e.g. ``mhc``: "paper" or "deepseek-v4". The kind's schema covers every flavour's options;
    one that the chosen flavour lacks is refused by :func:`validate_spec`."""

    def __init__(self, classes: Mapping[str, type[Connection]]) -> None:
        self.classes = dict(classes)
        self.default = next(iter(self.classes))

    def check(self, kind: str, spec: Mapping[str, Any]) -> None:
        flavor = spec.get("flavor", self.default)
        accepted = _class_keywords(self.classes[flavor])
        extra = sorted(set(spec) - accepted - {"kind", "flavor"})
        if extra:
            raise ConnectionSpecError(
                f"{kind}: option {extra[0]!r} does not apply to flavor {flavor!r} (its options: "
                f"{', '.join(sorted(accepted - {'layer_idx'}))})"
            )

    def __call__(self, dim: int, *, flavor: str | None = None, **options) -> Connection:
        return self.classes[flavor or self.default](dim, **options)


_LAYOUT = {"channel_first": Flag("state layout (B, n, C, *spatial) for maps instead of (..., D)")}
_RECOMPUTE = {"recompute": Flag("rebuild the branch input in backward (HC App. B)")}
_MIXING = {  # options of DynamicMixing, shared by HC and FC
    "tanh": Flag("tanh on the dynamic logits (HC Eq. 11-13; off: FC §5.1 ablation)"),
    "norm": Flag("normalise each slot before the dynamic projection (HC Eq. 8)"),
    "norm_type": Choice("that norm", choices=NORM_TYPES),
    "norm_affine": Flag("learnable norm weight, folded into the projection"),
    "rescale": Flag("learnable scales s_alpha, s_beta (off: FC §5.1 'w/o rescale')"),
    "scale_init": Positive("initial s_alpha = s_beta (HC: 0.01)"),
    "freeze": Subset("parts kept at init (HC Table 3)", choices=FREEZABLE),
    "eps": Positive("norm epsilon"),
    **_RECOMPUTE,
    **_LAYOUT,
}
_STREAM_EMBED = {
    "stream_embed": Flag("learned per-stream embeddings added to the n copies, zero at init"),
}
_STREAMS = {"n_streams": Count("n, copies of the hidden state (HC §2.1)"), **_STREAM_EMBED}
_FRACS = {"n_fracs": Count("m, fractions of the hidden state (FC Eq. 6); must divide dim")}
_MHC = {
    **_STREAMS,
    "dynamic": Flag("input-dependent coefficients (mHC Eq. 7); off: static b_* only"),
    "norm": Flag("RMSNorm of vec(x) before the projection (mHC Eq. 7)"),
    "tanh": Flag("tanh on the projected logits"),
    "sinkhorn_iters": Count("Sinkhorn-Knopp rounds (mHC Eq. 9)"),
    "scale_init": Positive("initial alpha_pre = alpha_post = alpha_res (mHC: 0.01)"),
    "pre_init": Fraction("H_pre weight on stream layer_idx mod n at init"),
    "res_init_diag": Fraction("diagonal of H_res at init"),
    "eps": Positive("RMSNorm epsilon (deepseek-v4: eps of pre, comb and Sinkhorn, V4 hc_eps)"),
    "flavor": Choice(
        "'paper' (arXiv 2512.24880) or 'deepseek-v4' (V4's numerics, transformers' weights)",
        choices=("paper", "deepseek-v4"),
    ),
    "norm_eps": Positive("deepseek-v4: RMSNorm epsilon of vec(x) (V4 rms_norm_eps)"),
    **_RECOMPUTE,
    **_LAYOUT,
}

register("residual", Residual, _LAYOUT)
register("postnorm", PostNorm, {**_LAYOUT, "eps": Positive("LayerNorm epsilon")})
register("hc", partial(HyperConnection, dynamic=False), {**_STREAMS, **_MIXING})
register("dhc", partial(HyperConnection, dynamic=True), {**_STREAMS, **_MIXING})
register("fc", partial(FracConnection, dynamic=False), {**_FRACS, **_MIXING})
register("dfc", partial(FracConnection, dynamic=True), {**_FRACS, **_MIXING})
register(
    "mhc",
    Flavors({"paper": ManifoldHyperConnection, "deepseek-v4": DeepseekV4HyperConnection}),
    _MHC,
)
_EXACT_DS = {  # mHC options without Sinkhorn: H_res is exactly doubly stochastic
    "dynamic": Flag("input-dependent coefficients (mHC Eq. 7); off: static b_* only"),
    "norm": Flag("RMSNorm of vec(x) before the projection (mHC Eq. 7)"),
    "tanh": Flag("tanh on the projected logits"),
    "scale_init": Positive("initial alpha_pre = alpha_post = alpha_res (mHC: 0.01)"),
    "pre_init": Fraction("H_pre weight on stream layer_idx mod n at init"),
    "res_init_diag": Fraction("diagonal of H_res at init; must exceed 1/n"),
    "eps": Positive("RMSNorm epsilon"),
    **_STREAM_EMBED,
    **_RECOMPUTE,
    **_LAYOUT,
}
_MHC_LITE_N = StreamCount(f"n <= {_MHC_LITE_MAX} (n! permutations)", limit=_MHC_LITE_MAX)
_KROMHC_N = StreamCount("n, a power of two (2x2 Kronecker factors)", power_of_two=True)
register("mhc-lite", MHCLite, {"n_streams": _MHC_LITE_N, **_EXACT_DS})
register("kromhc", KromHC, {"n_streams": _KROMHC_N, **_EXACT_DS})
_ATTNRES = {
    "block_size": BlockSize("k, sublayers per block (Block AttnRes); null or 0: full AttnRes"),
    "n_sublayers": Count("L, the model's sublayer count (2 per block); fixes connection_matrix's "
                         "slot layout for the analyses and checks reduce's input"),
    "eps": Positive("RMSNorm epsilon of the keys"),
    "norm_affine": Flag("learnable RMSNorm weight on the keys (Kimi's nn.RMSNorm)"),
    **_LAYOUT,
}
register("attnres", AttentionResidual, _ATTNRES)

KINDS: tuple[str, ...] = tuple(_REGISTRY)


def options_for(kind: str) -> set[str]:
    """The keyword options that ``build(kind, ...)`` accepts."""
    return set(_entry(kind).schema)


def connection_class(kind: str) -> type[Connection]:
    """The class ``build(kind, ...)`` instantiates, for per-kind facts without building one
    (e.g. ``connection_class("dfc").slot_option == "n_fracs"``)."""
    factory = _entry(kind).factory
    if isinstance(factory, Flavors):
        return factory.classes[factory.default]
    return factory.func if isinstance(factory, partial) else factory


def schema_for(kind: str) -> dict[str, Option]:
    """Option name -> :class:`~hyperfrac.connections.options.Option` (with its ``doc``)."""
    return dict(_entry(kind).schema)


def _factory_keywords(kind: str) -> set[str]:
    """Keyword options the registered factory's class chain accepts: what its schema must
    cover (a test holds the two equal, so a new constructor option cannot go unchecked)."""
    factory = _entry(kind).factory
    if isinstance(factory, Flavors):
        names = {"flavor"}.union(*(_class_keywords(k) for k in factory.classes.values()))
        return names - {"layer_idx"}
    fixed = set(factory.keywords) if isinstance(factory, partial) else set()
    return _class_keywords(connection_class(kind)) - fixed - {"layer_idx"}


def _class_keywords(klass: type[Connection]) -> set[str]:
    """Keyword-only options of the constructors along ``klass``'s Connection chain."""
    names: set[str] = set()
    for base in klass.__mro__:
        if issubclass(base, Connection) and "__init__" in base.__dict__:
            params = inspect.signature(base.__dict__["__init__"]).parameters.values()
            names.update(p.name for p in params if p.kind is p.KEYWORD_ONLY)
    return names - {"n_slots", "slot_dim", "n_inputs"}


def _entry(kind: str) -> _Entry:
    if not isinstance(kind, str) or kind not in _REGISTRY:
        near = difflib.get_close_matches(str(kind), list(_REGISTRY), n=1)
        hint = f" — did you mean {near[0]!r}?" if near else ""
        raise ConnectionSpecError(
            f"unknown connection kind {kind!r}{hint} (choose one of {', '.join(_REGISTRY)})"
        )
    return _REGISTRY[kind]


def _unknown_option(kind: str, name: Any, valid: set[str]) -> ConnectionSpecError:
    near = difflib.get_close_matches(str(name), sorted(valid), n=1)
    msg = f"unknown option {name!r} for kind {kind!r}"
    if near:
        msg += f" — did you mean {near[0]!r}?"
    elsewhere = sorted(k for k, e in _REGISTRY.items() if name in e.schema)
    if elsewhere:
        msg += f" ({name!r} is an option of {', '.join(elsewhere)})"
    return ConnectionSpecError(f"{msg} (valid options: {', '.join(sorted(valid)) or 'none'})")


def validate_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a ``{"kind": ..., **options}`` spec without building a module.

    The kind must be registered, every option name known for that kind (with a did-you-mean
    suggestion otherwise) and every value of the type and range its schema says (bools real
    bools, counts integers >= 1, eps and scales finite and > 0). Checks that need the model
    width (``n_fracs`` divides ``dim``) happen in :func:`build`. Returns a normalised copy,
    kind first; raises :class:`~hyperfrac.connections.options.ConnectionSpecError`.
    """
    if not isinstance(spec, Mapping):
        raise ConnectionSpecError(
            f"a connection spec is a mapping such as {{'kind': 'dhc', 'n_streams': 4}}, "
            f"got {spec!r} ({type(spec).__name__})"
        )
    if "kind" not in spec:
        raise ConnectionSpecError(
            f"connection spec {dict(spec)!r} has no 'kind'; add one of {', '.join(_REGISTRY)}"
        )
    kind = spec["kind"]
    schema = _entry(kind).schema
    out: dict[str, Any] = {"kind": kind}
    for name, value in spec.items():
        if name == "kind":
            continue
        if name not in schema:
            raise _unknown_option(kind, name, set(schema))
        out[name] = schema[name].check(kind, name, value)
    if isinstance(_REGISTRY[kind].factory, Flavors):
        _REGISTRY[kind].factory.check(kind, out)
    return out


def build(kind: str, dim: int, *, layer_idx: int = 0, **options) -> Connection:
    """Build a connection module.

    Args:
        kind: one of :data:`KINDS` ("residual", "postnorm", "hc", "dhc", "fc", "dfc", "mhc").
        dim: model width D, an integer >= 1.
        layer_idx: index of the layer (sub-layer: attention and FFN count separately); HC
            reads stream ``layer_idx mod n`` at init (HC Eq. 14).
        **options: kind-specific options, checked by :func:`validate_spec`, e.g.
            ``n_streams``, ``n_fracs``, ``tanh``, ``norm``, ``rescale``, ``freeze``,
            ``sinkhorn_iters``, ``channel_first`` (see :func:`schema_for`).
    """
    spec = validate_spec({"kind": kind, **options})
    del spec["kind"]
    return _REGISTRY[kind].factory(dim, layer_idx=layer_idx, **spec)
