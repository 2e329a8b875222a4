"""Training stability: non-finite detection before the optimizer step, loss-spike monitor.

* Non-finite guard (after torchtitan's check before ``optimizer.step``): if the loss or the
  global gradient norm is NaN/inf the update is dropped (``on_nonfinite: skip``, logged as an
  event) or the run stops with :class:`NonFiniteError` (``raise``). Too many consecutive
  skipped steps also raise.
* Spike monitor (after OLMo-core's ``StabilityMonitorCallback``): a loss above
  ``mean + sigma * std`` of the last ``window`` finite losses is reported as a spike. Its
  history is part of the checkpoint, so a resumed run flags the same steps.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any


class NonFiniteError(RuntimeError):
    """Raised when the loss or gradient norm is NaN/inf and the run is configured to stop."""


class SpikeMonitor:
    """Rolling mean/std of recent losses; :meth:`update` returns a spike record or None."""

    def __init__(self, window: int = 128, sigma: float = 6.0, min_history: int = 20) -> None:
        self.window, self.sigma, self.min_history = window, sigma, min_history
        self.history: deque[float] = deque(maxlen=window)

    def update(self, step: int, loss: float) -> dict[str, Any] | None:
        if not math.isfinite(loss):
            return None
        spike = None
        if len(self.history) >= self.min_history:
            n = len(self.history)
            mean = sum(self.history) / n
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / n)
            if loss > mean + self.sigma * max(std, 1e-8):
                spike = {
                    "event": "loss_spike",
                    "step": step,
                    "loss": loss,
                    "mean": mean,
                    "std": std,
                    "score": (loss - mean) / max(std, 1e-8),
                }
        self.history.append(loss)
        return spike

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = deque(state["history"], maxlen=self.window)
