"""HuggingFace integration: config/model classes, Auto registration, export, conversion.

Importing this package registers the ``hyperfrac`` model type with ``AutoConfig`` and
``AutoModelForCausalLM``::

    import hyperfrac.hf
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("out/my-model")   # a folder save_hf wrote

Folders written by :func:`save_hf` (``hyperfrac export``, ``hyperfrac convert``) also load
without hyperfrac, with ``trust_remote_code=True``. Needs ``pip install "hyperfrac[hf]"``.
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

__all__ = [
    "HyperfracConfig",
    "HyperfracForCausalLM",
    "export_run",
    "save_hf",
    "write_remote_code",
]
