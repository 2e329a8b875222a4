"""Small stacks and parameter perturbation shared by the connection tests."""

from __future__ import annotations

import torch
from torch import nn

from hyperfrac.connections import build


def mlp_branches(n_layers: int, dim: int, seed: int = 0, dtype=torch.float64) -> nn.ModuleList:
    """Pre-Norm branches: LayerNorm -> Linear -> GELU -> Linear (random weights)."""
    g = torch.Generator().manual_seed(seed)
    layers = nn.ModuleList()
    for _ in range(n_layers):
        b = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(),
                          nn.Linear(2 * dim, dim))
        for p in b.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        layers.append(b.to(dtype))
    return layers


def build_stack(kind: str, dim: int, n_layers: int, dtype=torch.float64, **options):
    return nn.ModuleList(
        build(kind, dim, layer_idx=i, **options).to(dtype) for i in range(n_layers)
    )


def run_stack(conns, branches, x):
    h = conns[0].expand(x)
    for c, b in zip(conns, branches, strict=True):
        h = c(h, b)
    return conns[0].reduce(h)


def perturb(module: nn.Module, scale: float = 0.5, seed: int = 1) -> None:
    """Move every parameter away from its init (so equations are tested off the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def assert_compiled_matches_eager(f, params, x: torch.Tensor) -> None:
    """``torch.compile(f, fullgraph=True)`` gives eager's output and parameter gradients
    (float64 inputs: to 1e-10 / 1e-9)."""
    params = list(params)
    eager = f(x)
    eager.square().sum().backward()
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    compiled = torch.compile(f, fullgraph=True)(x)
    compiled.square().sum().backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-10, atol=1e-10)
    for g, p in zip(grads, params, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-10)


def short_bf16_run(connection: dict, context, steps: int) -> float:
    """Final loss of ``steps`` AdamW steps (lr 3e-3) of the tiny LM under bf16 autocast, the
    whole run inside ``context`` (a state-precision or kernel switch); seeded, so two runs
    differ only by what the context changes."""
    from hyperfrac.models import build_preset

    torch.manual_seed(0)
    model = build_preset("tiny", connection=connection)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, model.cfg.vocab_size, (4, 32), generator=g)
    with context:
        for _ in range(steps):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x, x).loss
            loss.backward()
            opt.step()
    return loss.item()
