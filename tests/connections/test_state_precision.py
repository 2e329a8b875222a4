"""The stream state in the training precision: bf16 under bf16 autocast, fp32 on request.

Tolerances: a bf16 state rounds each stream to 8 bits of mantissa (relative 2^-9 = 0.2 % per
element), once per sublayer; the coefficients and the mixing are still computed in fp32. We
require the loss of a tiny LM within 1 % and its gradient within cosine 0.99 of the fp32-state
run, and a short paired training run to end within 2 % of the fp32-state loss.
"""

import pytest
import torch
import torch.nn.functional as F

from hyperfrac.connections import build, fp32_stream_state
from hyperfrac.models import build_preset

from .helpers import short_bf16_run

KINDS = [("dhc", {"n_streams": 4}), ("dfc", {"n_fracs": 4}), ("mhc", {"n_streams": 4}),
         ("mhc", {"n_streams": 2, "flavor": "deepseek-v4"}), ("mhc-lite", {"n_streams": 2})]


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("kind,opts", KINDS)
def test_expand_follows_the_autocast_dtype(kind, opts) -> None:
    conn = build(kind, 32, layer_idx=0, **opts)
    x = torch.randn(2, 3, 32)
    assert conn.expand(x).dtype == torch.float32
    with _bf16():
        assert conn.expand(x).dtype == torch.bfloat16
        with fp32_stream_state():
            assert conn.expand(x).dtype == torch.float32
            with fp32_stream_state(False):
                assert conn.expand(x).dtype == torch.bfloat16
        assert conn.expand(x).dtype == torch.bfloat16


@pytest.mark.parametrize("kind,opts", KINDS[:3])
def test_bf16_state_matches_fp32_state(kind, opts) -> None:
    torch.manual_seed(0)
    model = build_preset("tiny", connection={"kind": kind, **opts})
    with torch.no_grad():  # random connection parameters, not the Pre-Norm init
        for name, p in model.named_parameters():
            if "conn" in name:
                p.add_(0.05 * torch.randn_like(p))
    x = torch.randint(0, model.cfg.vocab_size, (2, 32))

    def run():
        model.zero_grad()
        with _bf16():
            loss = model(x, x).loss
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()
                                         if p.grad is not None])

    with fp32_stream_state():
        loss32, g32 = run()
    loss16, g16 = run()
    assert abs(loss16 - loss32) / loss32 < 0.01
    assert F.cosine_similarity(g16, g32, dim=0) > 0.99


@pytest.mark.parametrize("kind,opts", KINDS[:2])
def test_short_training_run_is_unchanged_by_a_bf16_state(kind, opts) -> None:
    def train(fp32: bool) -> float:
        return short_bf16_run({"kind": kind, **opts}, fp32_stream_state(fp32), steps=25)

    loss32, loss16 = train(True), train(False)
    assert abs(loss16 - loss32) / loss32 < 0.02, (loss16, loss32)


@pytest.mark.parametrize("kind,opts", KINDS)
def test_branch_input_is_fp32_under_autocast_and_the_state_dtype_without(kind, opts) -> None:
    conn = build(kind, 32, layer_idx=0, **opts)
    seen = []

    def branch(x):
        seen.append(x.dtype)
        return x

    x = torch.randn(2, 3, 32)
    with _bf16():
        out = conn(conn.expand(x), branch)
    assert seen[-1] == torch.float32 and out.dtype == torch.bfloat16
    with _bf16():
        assert conn.reduce(out).dtype == torch.float32  # the head reads fp32, as residual's
    conn.to(torch.bfloat16)  # a bf16 model without autocast: bf16 throughout
    out = conn(conn.expand(x.bfloat16()), branch)
    assert seen[-1] == torch.bfloat16 and out.dtype == torch.bfloat16


@pytest.mark.parametrize("kind,opts", [("dhc", {"n_streams": 4}), ("dfc", {"n_fracs": 4})])
def test_recompute_under_autocast_gives_the_same_gradients(kind, opts) -> None:
    torch.manual_seed(0)
    branch = torch.nn.Sequential(torch.nn.LayerNorm(32), torch.nn.Linear(32, 32))
    x = torch.randn(2, 5, 32)
    grads = []
    for recompute in (False, True):
        conn = build(kind, 32, layer_idx=0, recompute=recompute, **opts)
        with torch.no_grad():
            for p in conn.parameters():
                p.add_(0.1 * torch.randn_like(p, generator=torch.Generator().manual_seed(3)))
        branch.zero_grad()
        with _bf16():
            loss = conn.reduce(conn(conn.expand(x), branch)).float().square().sum()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in branch.parameters()]))
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("kind,opts", KINDS[:3])
def test_compiled_bf16_state_matches_eager(kind, opts) -> None:
    """torch.compile(fullgraph=True) traces the bf16-state path (casts included) and gives
    eager's output and gradients up to bf16 rounding: inductor rounds the bf16 branch and
    state at other points than eager, which flips single elements by a bf16 ulp, so the check
    is norm-wise: the output and the concatenated gradient within 5 % (a wrong graph gives
    O(1)). Not per tensor: some gradients are zero in exact arithmetic (layer 0's H_res acts
    on identical streams) and hold only rounding noise, which differs between the two."""
    torch.manual_seed(0)
    conns = torch.nn.ModuleList(build(kind, 32, layer_idx=i, **opts) for i in range(2))
    with torch.no_grad():
        for p in conns.parameters():
            p.add_(0.1 * torch.randn_like(p))
    branches = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.LayerNorm(32),
                                                       torch.nn.Linear(32, 32))
                                   for _ in range(2))
    x = torch.randn(2, 6, 32)

    def f(x):
        with _bf16():
            h = conns[0].expand(x)
            for c, b in zip(conns, branches, strict=True):
                h = c(h, b)
            return conns[0].reduce(h)

    params = list(conns.parameters()) + list(branches.parameters())
    results = []
    for fn in (f, torch.compile(f, fullgraph=True)):
        for p in params:
            p.grad = None
        y = fn(x)
        y.float().square().sum().backward()
        results.append((y.float(), [p.grad.clone() for p in params]))
    (y0, g0), (y1, g1) = results
    g0, g1 = torch.cat([g.flatten() for g in g0]), torch.cat([g.flatten() for g in g1])
    for a, b in ((y1, y0), (g1, g0)):
        assert (a - b).norm() <= 0.05 * b.norm()
