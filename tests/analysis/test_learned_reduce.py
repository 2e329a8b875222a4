"""The final output's row of the unfolded matrix under a *learned* reduce: AttnRes' final read
and DeepSeek-V4's HyperHead weigh the sources / streams instead of summing them (issue 14)."""

from __future__ import annotations

import pytest
import torch

from hyperfrac.analysis.analyze import probe_model
from hyperfrac.analysis.metrics import final_output_weights
from hyperfrac.analysis.probes import ConnectionProbe
from hyperfrac.models import LMConfig, TransformerLM

BASE = dict(vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=16)


def _perturbed(cfg: LMConfig) -> TransformerLM:
    torch.manual_seed(0)
    model = TransformerLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "query" in name or "hc_" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return model.eval()


def _final_state(model: TransformerLM, ids: torch.Tensor) -> torch.Tensor:
    """The stream state the model collapses, captured at the last connection call."""
    seen = []
    last = model.blocks[-1].ffn_conn
    handle = last.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("block_size", [None, 2])
def test_attnres_final_row_is_the_final_reads_weights(block_size):
    """Slot b of the final state holds block b's output sum, so every output j in block b gets
    the final read's weight on slot b (full mode: each output its own slot)."""
    spec = {"kind": "attnres", **({"block_size": block_size} if block_size else {})}
    model = _perturbed(LMConfig(**BASE, connection=spec))
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    h = _final_state(model, ids)  # (B, T, S, D)
    alpha = model.blocks[0].attn_conn.attention_weights(h, final=True).reshape(-1, h.shape[-2])
    k = block_size or 1
    slot_of = [0] + [1 + (j - 1) // k for j in range(1, 2 * BASE["n_layers"] + 1)]
    want = alpha[:, slot_of].mean(0).double()  # (L+1,)
    got = torch.tensor(
        probe_model(model, ids, max_tokens=None)["unfolded_final"], dtype=torch.float64
    ).squeeze()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    if k == 1:  # one output per slot: the row is the read's weights, summing to 1
        assert abs(float(got.sum()) - 1.0) < 1e-6
    # the probe's patch of reduce() is gone after the context
    assert "reduce" not in vars(model.blocks[0].attn_conn)


def test_attnres_final_row_at_init_is_uniform():
    model = TransformerLM(LMConfig(**BASE, connection={"kind": "attnres"})).eval()
    ids = torch.randint(0, 64, (1, 8))
    got = torch.tensor(probe_model(model, ids)["unfolded_final"], dtype=torch.float64).squeeze()
    n_src = 2 * BASE["n_layers"] + 1
    torch.testing.assert_close(got, torch.full((n_src,), 1.0 / n_src, dtype=torch.float64))


def test_learned_stream_head_replaces_the_streams_sum():
    """DHC×4 at its Pre-Norm init: the sum reduce gives a row of n = 4; HyperHead starts as the
    streams' mean, a row of ones; perturbed, the probe records the head's own weights."""
    spec = {"kind": "dhc", "n_streams": 4}
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(2))
    summed = TransformerLM(LMConfig(**BASE, connection=spec)).eval()
    learned = TransformerLM(LMConfig(**BASE, connection=spec, stream_head="learned")).eval()

    def row(m):
        return torch.tensor(probe_model(m, ids)["unfolded_final"], dtype=torch.float64).squeeze()

    torch.testing.assert_close(row(summed), torch.full((5,), 4.0, dtype=torch.float64))
    torch.testing.assert_close(row(learned), torch.ones(5, dtype=torch.float64), atol=1e-5, rtol=0)
    model = _perturbed(LMConfig(**BASE, connection=spec, stream_head="learned"))
    h = _final_state(model, ids)
    with ConnectionProbe(model, max_tokens=None) as probe:
        with torch.no_grad():
            model(ids)
    want = model.stream_head.weights(h).reshape(-1, 1, 4).double()
    torch.testing.assert_close(probe.reduce, want)


def test_explicit_reduce_equal_to_the_fixed_one_changes_nothing():
    torch.manual_seed(0)
    mats = [torch.rand(5, 3, 1 + 2) for _ in range(3)]  # HC layout, S = 2, R = 1
    torch.testing.assert_close(
        final_output_weights(mats, torch.ones(1, 2))["matrix"], final_output_weights(mats)["matrix"]
    )
    fc = [torch.rand(5, 3, 2 + 2) for _ in range(3)]  # FC layout, S = R = 2
    torch.testing.assert_close(
        final_output_weights(fc, torch.eye(2))["matrix"], final_output_weights(fc)["matrix"]
    )
    with pytest.raises(ValueError, match="reduce has shape"):
        final_output_weights(mats, torch.ones(2, 2))
