"""Paper presets build on the meta device with the published parameter counts."""

from __future__ import annotations

import pytest
import torch

from hyperfrac.models import LM_PRESETS, VIT_PRESETS, build_preset, count_params
from hyperfrac.models.lm import TransformerLM


def _active_params(model: TransformerLM) -> int:
    """Parameters used per token: experts count k/E of their size."""
    total = count_params(model)
    moe = model.cfg.moe
    if moe is None:
        return total
    expert = sum(b.ffn.w_in.numel() + b.ffn.w_out.numel() for b in model.blocks)
    return total - expert + expert * moe.top_k // moe.n_experts


def test_olmo_1b_matches_hc_table_7() -> None:
    model = build_preset("olmo-1b", device="meta")
    assert count_params(model) == 1_176_764_416  # HC Table 7: 1.17676442B
    assert all(p.is_meta for p in model.parameters())


def test_olmo_7b_and_olmoe_counts() -> None:
    olmo7 = build_preset("olmo-7b", device="meta")
    assert count_params(olmo7) == 6_888_095_744  # published "6.9B"
    olmoe = build_preset("olmoe-1b-7b", device="meta")
    assert count_params(olmoe) == 6_919_161_856  # published 6.9B total
    assert _active_params(olmoe) == 1_282_017_280  # published 1.3B active
    assert round(count_params(olmoe) / 1e9, 1) == 6.9
    assert round(_active_params(olmoe) / 1e9, 1) == 1.3


@pytest.mark.parametrize("name", sorted(set(LM_PRESETS) | set(VIT_PRESETS)))
def test_every_preset_builds_on_meta(name: str) -> None:
    model = build_preset(name, device="meta")
    assert count_params(model) > 0


def test_cpu_preset_shapes() -> None:
    m = build_preset("cpu-6x256", device="meta")
    # 6.92 M total / 4.82 M non-embedding, as in the project's CPU throughput table
    assert round(count_params(m) / 1e6, 2) == 6.92
    assert round(count_params(m, exclude_embeddings=True) / 1e6, 2) == 4.82


def test_vit_forward_cls_and_mean() -> None:
    for pool in ("cls", "mean"):
        vit = build_preset("vit-tiny", pool=pool)
        assert vit(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="does not divide"):
        build_preset("vit-tiny", patch_size=5)


@pytest.mark.parametrize(
    "connection, extra",
    [
        ({"kind": "hc", "n_streams": 4}, 768),  # HC Table 7: OLMo-1B-SHC×4
        ({"kind": "dhc", "n_streams": 4}, 394_048),  # HC Table 7: OLMo-1B-DHC×4
        ({"kind": "fc", "n_fracs": 4}, 1_152),  # FC §4.4: SFC×4
        ({"kind": "dfc", "n_fracs": 4}, 165_056),  # FC §4.4: DFC×4
    ],
)
def test_olmo_1b_connection_increments(connection: dict, extra: int) -> None:
    base = count_params(build_preset("olmo-1b", device="meta"))
    model = build_preset("olmo-1b", device="meta", connection=connection)
    assert count_params(model) - base == extra
