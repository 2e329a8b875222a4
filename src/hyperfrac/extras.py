"""Optional extras: which subcommand needs which, and the one-line message when one is missing.

The connection library needs torch only; everything else is an extra of the wheel
(``pyproject.toml``). :func:`require` checks an extra's modules up front; :func:`missing_extra`
maps a ``ModuleNotFoundError`` raised anywhere to the extra that provides that module.
"""

from __future__ import annotations

import importlib.util

# extra -> the top-level modules it provides (as imported, not as distributed)
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("yaml", "tokenizers", "safetensors", "tqdm", "rdata"),
    "hf": ("transformers", "safetensors", "yaml", "tokenizers"),
    "lmeval": ("lm_eval",),
    "bench": ("hyper_connections",),
    "plot": ("matplotlib",),
}


class MissingExtra(ImportError):
    """A feature needs an optional extra that is not installed."""


def _hint(extra: str, module: str) -> str:
    return (f"this needs the '{extra}' extra (module {module!r} is not installed): "
            f"pip install 'hyperfrac[{extra}]'")


def require(*extras: str) -> None:
    """Raise :class:`MissingExtra` naming the first missing module of ``extras``."""
    for extra in extras:
        for module in EXTRAS[extra]:
            if importlib.util.find_spec(module) is None:
                raise MissingExtra(_hint(extra, module))


def missing_extra(err: ModuleNotFoundError) -> MissingExtra | None:
    """The :class:`MissingExtra` behind ``err``, or None if the module is no extra's."""
    top = (err.name or "").split(".")[0]
    for extra, modules in EXTRAS.items():
        if top in modules:
            return MissingExtra(_hint(extra, top))
    return None
