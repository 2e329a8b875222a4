"""HuggingFace integration: config/model classes, Auto registration, export, conversion.

Importing this package registers the ``hyperfrac`` model type with ``AutoConfig`` and
``AutoModelForCausalLM``::

    import hyperfrac.hf
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("out/my-model")   # a folder save_hf wrote

Folders written by :func:`save_hf` (``hyperfrac export``, ``hyperfrac convert``) also load
without hyperfrac, with ``trust_remote_code=True``. Needs ``pip install "hyperfrac[hf]"``.

Fine-tuning with ``transformers.Trainer``: :class:`HyperfracTrainer` (hyperfrac's weight-decay
groups; :mod:`hyperfrac.hf.training`), loaded on first use.
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError('hyperfrac.hf needs transformers: pip install "hyperfrac[hf]"') from e

from transformers import AutoConfig, AutoModelForCausalLM

from hyperfrac.hf.configuration_hyperfrac import HyperfracConfig
from hyperfrac.hf.export import export_run, save_hf, write_remote_code
from hyperfrac.hf.modeling_hyperfrac import HyperfracForCausalLM

AutoConfig.register(HyperfracConfig.model_type, HyperfracConfig, exist_ok=True)
AutoModelForCausalLM.register(HyperfracConfig, HyperfracForCausalLM, exist_ok=True)

_LAZY = {
    name: "hyperfrac.hf.training"
    for name in ("ConnectionDecayMixin", "HyperfracTrainer", "decay_parameter_names")
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'hyperfrac.hf' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = [
    "ConnectionDecayMixin",
    "HyperfracConfig",
    "HyperfracForCausalLM",
    "HyperfracTrainer",
    "decay_parameter_names",
    "export_run",
    "save_hf",
    "write_remote_code",
]
