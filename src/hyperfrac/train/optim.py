"""AdamW with the connection library's parameter groups, and the learning-rate schedules.

Weight decay follows HC §4 / FC §4.3: none on the static connection parameters (B, A_m, A_r,
their scales, norm weights), decay on the dynamic connection projections and on every other
matrix (embeddings included, as in OLMo); vectors (norms, biases) are not decayed: the
grouping is :func:`param_groups`, which asks each connection which of its parameters decay.

Schedules (all start with a linear warmup from 0 over ``warmup_steps``):

* ``cosine``: cosine decay from ``lr`` to ``min_lr_ratio * lr`` at ``steps``;
* ``wsd`` (warmup-stable-decay, Hu et al. 2024 "MiniCPM"): constant ``lr``, then a linear decay
  to ``min_lr_ratio * lr`` over the last ``decay_fraction`` of the steps;
* ``constant``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hyperfrac.connections import Connection, HyperHead
from hyperfrac.train.config import OptimConfig


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of ``cfg.lr`` for the update made at optimizer step ``step`` (0-based)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    lo = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        span = max(total_steps - cfg.warmup_steps, 1)
        t = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "wsd":
        decay_steps = max(int(round(cfg.decay_fraction * total_steps)), 1)
        start = total_steps - decay_steps
        if step < start:
            return 1.0
        t = min((step - start + 1) / decay_steps, 1.0)
        return 1.0 - (1.0 - lo) * t
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose cosine, wsd or constant")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: no weight decay on static connection parameters (HC §4,
    FC §4.3), their scales and norm weights; decay on dynamic connection projections. Other
    parameters follow the usual rule: matrices (dim >= 2) decay, vectors and scalars do not.
    Frozen parameters (requires_grad=False) are left out.
    """
    decay: dict[int, nn.Parameter] = {}
    no_decay: dict[int, nn.Parameter] = {}
    conn_params: set[int] = set()
    for module in model.modules():
        if isinstance(module, (Connection, HyperHead)):  # HyperHead: hc_fn decays
            for p in module.decay_parameters():
                decay[id(p)] = p
            for p in module.no_decay_parameters():
                no_decay[id(p)] = p
            conn_params.update(id(p) for p in module.parameters())
    for p in model.parameters():
        if id(p) in conn_params:
            continue
        (decay if p.dim() >= 2 else no_decay)[id(p)] = p
    groups = [
        {"name": "decay", "params": [p for p in decay.values() if p.requires_grad],
         "weight_decay": float(weight_decay)},
        {"name": "no_decay", "params": [p for p in no_decay.values() if p.requires_grad],
         "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg, total_steps)
    )
