"""``model.stream_head: learned``: DeepSeek-V4's HyperHead as the LM's stream reducer
(issue 14 item 1). The head's own equations are tested against transformers in
tests/connections; here: the model around it."""

from __future__ import annotations

import pytest
import torch

from hyperfrac.connections import HyperHead
from hyperfrac.models import LMConfig, TransformerLM

BASE = dict(vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=32)
SPECS = [
    {"kind": "dhc", "n_streams": 4},
    {"kind": "mhc", "n_streams": 4},
    {"kind": "mhc", "n_streams": 2, "flavor": "deepseek-v4", "eps": 1e-4, "norm_eps": 1e-5},
    {"kind": "mhc-lite", "n_streams": 3},
    {"kind": "kromhc", "n_streams": 4},
]


def _ids(spec):
    return spec["kind"] + ("-v4" if "flavor" in spec else "")


def _model(spec, **kw) -> TransformerLM:
    return TransformerLM(LMConfig(**BASE, connection=dict(spec), stream_head="learned", **kw))


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_learned_head_builds_from_the_connection(spec):
    model = _model(spec)
    head = model.stream_head
    assert isinstance(head, HyperHead)
    assert (head.dim, head.n_streams) == (32, spec["n_streams"])
    if spec.get("flavor") == "deepseek-v4":  # V4's hc_eps / rms_norm_eps carried over
        assert (head.eps, head.norm_eps) == (1e-4, 1e-5)
    else:
        assert (head.eps, head.norm_eps) == (1e-6, 1e-6)
    assert TransformerLM(LMConfig(**BASE, connection=dict(spec))).stream_head is None


def test_forward_is_the_head_then_the_final_norm():
    torch.manual_seed(0)
    model = _model({"kind": "dhc", "n_streams": 4})
    with torch.no_grad():
        for p in model.stream_head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    idx = torch.randint(0, 64, (2, 8))
    states = []
    hook = model.blocks[-1].ffn_conn.register_forward_hook(lambda m, a, o: states.append(o))
    logits = model(idx).logits
    hook.remove()
    h = states[0]  # (B, T, n, D): the final stream state
    w = model.stream_head.weights(h)  # (B, T, n)
    want = model.lm_head(model.norm((w.unsqueeze(-1) * h).sum(-2)))
    torch.testing.assert_close(logits, want)


def test_learned_head_on_a_pre_norm_equivalent_stack_is_the_pre_norm_model():
    # mHC at init computes the Pre-Norm function with n identical streams; the head starts as
    # their mean, i.e. the Pre-Norm residual itself, so with the same branch weights the model
    # equals the residual model exactly: no n**2 eps rule is needed (sum needs one).
    torch.manual_seed(0)
    ref = TransformerLM(LMConfig(**BASE))
    model = _model({"kind": "mhc", "n_streams": 4})
    model.load_state_dict(ref.state_dict(), strict=False)
    idx = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(model(idx).logits, ref(idx).logits, rtol=1e-5, atol=1e-5)
    summed = TransformerLM(LMConfig(**BASE, connection={"kind": "mhc", "n_streams": 4},
                                    final_norm_eps=16 * 1e-5))
    summed.load_state_dict(ref.state_dict(), strict=False)
    torch.testing.assert_close(summed(idx).logits, ref(idx).logits, rtol=1e-5, atol=1e-5)


def test_trains_with_finite_decreasing_loss_and_head_gets_gradients():
    from hyperfrac.train.config import OptimConfig
    from hyperfrac.train.optim import build_optimizer, param_groups

    torch.manual_seed(0)
    model = _model({"kind": "dhc", "n_streams": 4})
    head = model.stream_head
    groups = {g["name"]: {id(p) for p in g["params"]} for g in param_groups(model, 0.1)}
    assert id(head.hc_fn) in groups["decay"]
    assert {id(head.hc_base), id(head.hc_scale)} <= groups["no_decay"]
    opt = build_optimizer(model, OptimConfig(lr=3e-3, weight_decay=0.1))
    idx = torch.randint(0, 64, (4, 16))
    losses = []
    for _ in range(8):
        loss = model(idx[:, :-1], idx[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        assert head.hc_fn.grad is not None and head.hc_fn.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert not torch.equal(head.hc_fn, torch.zeros_like(head.hc_fn))


def test_state_dict_round_trip():
    torch.manual_seed(0)
    model = _model({"kind": "mhc", "n_streams": 2, "flavor": "deepseek-v4"})
    with torch.no_grad():
        for p in model.stream_head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sd = model.state_dict()
    assert {"stream_head.hc_fn", "stream_head.hc_base", "stream_head.hc_scale"} <= set(sd)
    assert sd["stream_head.hc_fn"].shape == (2, 2 * 32)
    other = _model({"kind": "mhc", "n_streams": 2, "flavor": "deepseek-v4"})
    other.load_state_dict(sd)
    idx = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(other(idx).logits, model(idx).logits, rtol=0, atol=0)


def test_reset_parameters_keeps_the_head_init():
    # compare's shared init re-seeds and calls model.reset_parameters() after building
    from hyperfrac.compare.driver import shared_init

    class _Task:
        @staticmethod
        def build_model():
            return _model({"kind": "dhc", "n_streams": 4})

    model = shared_init(0)(_Task)
    fresh = HyperHead(32, n_streams=4)
    for name, p in fresh.state_dict().items():
        assert torch.equal(model.stream_head.state_dict()[name], p), name
    w = model.stream_head.weights(torch.randn(3, 4, 32))
    torch.testing.assert_close(w, torch.full_like(w, 0.25))
    # the head draws nothing from the RNG: every other weight equals the sum model's
    torch.manual_seed(5)
    summed = shared_init(0)(type("T", (), {"build_model": staticmethod(
        lambda: TransformerLM(LMConfig(**BASE, connection={"kind": "dhc", "n_streams": 4})))}))
    ref = summed.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith("stream_head."):
            assert torch.equal(v, ref[k]), k


def test_overhead_counts_the_head_once():
    from hyperfrac.analysis.analyze import connection_cost

    learned = _model({"kind": "dhc", "n_streams": 4})
    summed = TransformerLM(LMConfig(**BASE, connection={"kind": "dhc", "n_streams": 4}))
    a, b = connection_cost(learned), connection_cost(summed)
    head = learned.stream_head
    assert a["conn_params"] - b["conn_params"] == 4 * 4 * 32 + 4 + 1 == head.extra_params()
    assert a["conn_flops_per_token"] - b["conn_flops_per_token"] == head.flops_per_token()


@pytest.mark.parametrize("spec", [{"kind": "residual"}, {"kind": "dfc", "n_fracs": 2},
                                  {"kind": "postnorm"}])
def test_learned_needs_an_n_stream_kind(spec):
    with pytest.raises(ValueError, match="stream_head='learned'.*has none"):
        LMConfig(**BASE, connection=spec, stream_head="learned").validate()


def test_unknown_stream_head_and_channel_first_are_refused():
    with pytest.raises(ValueError, match="stream_head='mean'.*sum"):
        LMConfig(**BASE, stream_head="mean").validate()
    with pytest.raises(ValueError, match="channel_first"):
        LMConfig(**BASE, connection={"kind": "dhc", "channel_first": True},
                 stream_head="learned").validate()


def test_hf_export_and_from_pretrained_give_equal_logits(tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from hyperfrac.hf import HyperfracConfig, HyperfracForCausalLM, save_hf

    torch.manual_seed(0)
    lm = _model({"kind": "mhc", "n_streams": 2, "flavor": "deepseek-v4"})
    with torch.no_grad():
        for p in lm.stream_head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    cfg = HyperfracConfig.from_lm_config(lm.cfg)
    assert cfg.stream_head == "learned" and cfg.to_lm_config() == lm.cfg
    hf = HyperfracForCausalLM(cfg)
    hf.model.load_state_dict(lm.state_dict())
    save_hf(hf, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.model.stream_head is not None
    idx = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(loaded(idx).logits, lm(idx).logits, rtol=0, atol=0)
    # remote code in a fresh interpreter that cannot import hyperfrac: head.py is bundled
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "hf" / "helpers.py"
    spec = importlib.util.spec_from_file_location("_hf_helpers", path)
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    (tmp_path / "remote").mkdir()
    res = helpers.load_without_hyperfrac(tmp_path, idx, tmp_path / "remote")
    torch.testing.assert_close(torch.tensor(res["logits"]), lm(idx).logits, rtol=1e-5,
                               atol=1e-5)
