"""ViT: every connection kind, both poolings; it learns a toy task."""

from __future__ import annotations

import pytest
import torch

from hyperfrac.connections import KINDS, connection_class
from hyperfrac.models import build_preset


@pytest.mark.parametrize("kind", KINDS)
def test_vit_every_connection_kind_learns(kind: str) -> None:
    torch.manual_seed(0)
    n = connection_class(kind).slot_option
    conn = {"kind": kind, **({n: 2} if n else {})}
    vit = build_preset("vit-tiny", connection=conn, pool="cls" if kind == "hc" else "mean")
    # toy task: the class is the image's brightness level
    labels = torch.arange(32) % 4
    images = torch.randn(32, 1, 28, 28) * 0.3 + labels.view(-1, 1, 1, 1).float()
    opt = torch.optim.AdamW(vit.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(vit(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
