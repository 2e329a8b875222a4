"""Data parallelism applied from outside the model: DDP or FSDP2.

The model zoo knows nothing about distribution. Under ``torchrun`` the trainer hands the built
model to :func:`parallelize`, which either

* wraps it in :class:`~torch.nn.parallel.DistributedDataParallel` (``train.parallel=ddp``), or
* applies FSDP2 (``train.parallel=fsdp``): :func:`torch.distributed.fsdp.fully_shard` on every
  transformer block (the unit of all-gather and reduce-scatter, as in torchtitan) and then on
  the root, which takes the remaining parameters (embedding, tied LM head, final norm; the ViT's
  patch embedding and head). Every parameter becomes a ``DTensor`` sharded on dim 0 over the
  ranks, including the connection's static ``alpha``/``beta`` and dynamic ``W_alpha``/``W_beta``
  and scales, so the optimizer state is sharded too.

Connections keep their parameters inside the block that uses them, so a block's forward sees
them unsharded. The stream ``expand``/``reduce`` the model calls at the root usually hold no
parameters; a connection whose ends do (``ends_use_parameters``: AttnRes' final read lives in
the layer-0 connection) becomes its own FSDP unit with ``expand``/``reduce`` registered as
forward methods, so they too run on gathered parameters and their gradients are reduced.

Gradient accumulation: :func:`grad_sync` turns off the all-reduce (DDP ``no_sync``) or the
reduce-scatter (FSDP2 ``set_requires_gradient_sync(False)``) on every micro-batch but the last.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

STRATEGIES = ("ddp", "fsdp")


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise TypeError(
            f"FSDP needs a model with a non-empty `blocks` ModuleList (the sharding units); "
            f"{type(model).__name__} has none"
        )
    return blocks


def apply_fsdp(model: nn.Module) -> nn.Module:
    """``fully_shard`` each block, then the root (in place; returns ``model``)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    from hyperfrac.connections import Connection

    # A block returns its stream state as a view (reshape of the connection output). FSDP2 warns
    # because an in-place op on such a view would skip its pre-backward hook; nothing in the
    # model zoo modifies a block output in place (gradients equal one process's, tested).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for block in _blocks(model):
        for module in block.modules():
            if isinstance(module, Connection) and module.ends_use_parameters:
                fully_shard(module)
                for method in ("expand", "reduce"):
                    register_fsdp_forward_method(module, method)
        fully_shard(block)
    fully_shard(model)
    return model


def parallelize(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    """The module to run forward/backward on: ``model`` itself after FSDP2 (it is sharded in
    place) or a DDP wrapper around it. Needs an initialised process group."""
    if strategy == "fsdp":
        return apply_fsdp(model)
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    raise ValueError(f"train.parallel={strategy!r}; choose one of {STRATEGIES}")


@contextlib.contextmanager
def grad_sync(module: nn.Module, sync: bool) -> Iterator[None]:
    """Within this context, backward reduces gradients across ranks only if ``sync``."""
    if sync:
        yield
        return
    if isinstance(module, nn.parallel.DistributedDataParallel):
        with module.no_sync():
            yield
        return
    set_sync = getattr(module, "set_requires_gradient_sync", None)  # FSDPModule
    if set_sync is None:  # a single process: nothing to synchronise
        yield
        return
    set_sync(False)
    try:
        yield
    finally:
        set_sync(True)


def is_fsdp(module: nn.Module) -> bool:
    """True for a module that FSDP2 has sharded."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def to_float(x: torch.Tensor) -> float:
    """A scalar that may be a ``DTensor`` (FSDP's gradient norm) as a Python float."""
    full = getattr(x, "full_tensor", None)
    return float(full() if full is not None else x)


def hard_exit(code: int) -> None:
    """Flush and leave the process without interpreter teardown (``os._exit``).

    With torch 2.13 on gloo, a process that has used ``torch.distributed.checkpoint`` sometimes
    dies with ``terminate called without an active exception`` (SIGABRT) in C++ static
    destructors *after* all work is done and the process group is destroyed (about 1 in 10
    two-process runs here; no Python frame on the stack). torchrun would then report a finished
    run as failed. Only call this once every file is written and closed."""
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
