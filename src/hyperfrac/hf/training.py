"""Fine-tuning hyperfrac models with HF ``Trainer`` (or TRL's ``SFTTrainer``): weight decay.

HF ``Trainer`` decays every parameter whose name lacks ``bias``/``norm``, which includes the
static connection parameters (``static_alpha``, ``static_beta``, their scales). HC §4 and FC
§4.3 say not to decay them. ``Trainer`` asks no model which parameters to decay; it asks
itself (``Trainer.get_decay_parameter_names``), so the fix is on the trainer side:

* :class:`HyperfracTrainer` is ``Trainer`` with hyperfrac's rule;
* :class:`ConnectionDecayMixin` gives any ``Trainer`` subclass the rule
  (``class SFT(ConnectionDecayMixin, trl.SFTTrainer): ...``);
* :func:`decay_parameter_names` is the rule itself, for an optimizer built by hand.

The rule is :func:`hyperfrac.train.optim.param_groups` (the one hyperfrac's own trainer uses:
each connection names the parameters that decay, other matrices decay, vectors do not); it
works through wrappers (PEFT, DDP), since it finds the connections among the modules.

Gradient accumulation needs nothing here: the model honours ``num_items_in_batch``
(:mod:`hyperfrac.hf.modeling_hyperfrac`).
"""

from __future__ import annotations

from torch import nn
from transformers import Trainer

from hyperfrac.train.optim import param_groups


def decay_parameter_names(model: nn.Module) -> list[str]:
    """Names (as ``model.named_parameters()`` gives them) of the parameters to decay."""
    decay = {
        id(p) for g in param_groups(model, 1.0) if g["name"] == "decay" for p in g["params"]
    }
    return [name for name, p in model.named_parameters() if id(p) in decay]


class ConnectionDecayMixin:
    """Mixin for ``transformers.Trainer`` subclasses: hyperfrac's weight-decay groups."""

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        return decay_parameter_names(model)


class HyperfracTrainer(ConnectionDecayMixin, Trainer):
    """``transformers.Trainer`` that leaves the static connection parameters undecayed."""
