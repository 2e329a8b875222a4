"""Fine-tuning the HF wrapper the way HF users do: Trainer's gradient accumulation, weight-decay
groups, activation checkpointing, padded batches, batched generation, EOS, hidden states."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import Trainer, TrainingArguments

from hyperfrac.hf import HyperfracConfig, HyperfracForCausalLM, HyperfracTrainer
from hyperfrac.hf.training import decay_parameter_names
from hyperfrac.models import LMConfig, MoEConfig
from hyperfrac.train.optim import param_groups

V = 101


def tiny(seed: int = 0, **kw) -> HyperfracForCausalLM:
    base = dict(vocab_size=V, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                init_std=0.2, connection={"kind": "dhc", "n_streams": 2})
    torch.manual_seed(seed)
    return HyperfracForCausalLM(HyperfracConfig.from_lm_config(LMConfig(**{**base, **kw})))


# Lengths chosen so the two micro-batches of GA=2 hold different numbers of labelled tokens:
# a mean of per-micro-batch means would then differ from the mean over the whole batch.
LENGTHS = (14, 5, 9, 3)


def dataset() -> list[dict]:
    g = torch.Generator().manual_seed(3)
    return [{"input_ids": torch.randint(1, V, (n,), generator=g).tolist()} for n in LENGTHS]


def collate(rows: list[dict], *, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad to the longest row (pads: id 0, mask 0, label -100). Left padding also drops the
    label of each row's first token: a pad position would predict it (as in any HF LM)."""
    T = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        sl = slice(T - n, T) if left else slice(0, n)
        ids[i, sl] = torch.tensor(r["input_ids"])
        mask[i, sl] = 1
    labels = ids.masked_fill(mask == 0, -100)
    if left:
        labels[torch.arange(len(rows)), (mask == 0).sum(dim=1)] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def one_sgd_step(tmp_path, model, *, batch: int, accum: int, **args) -> tuple[dict, dict]:
    """One Trainer step of plain SGD with lr 1 (no clipping): returns (log record, -update)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    targs = TrainingArguments(
        output_dir=str(tmp_path / f"out-{batch}-{accum}"), per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum, max_steps=1, learning_rate=1.0, optim="sgd",
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1e9, logging_steps=1,
        report_to="none", save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
        **args,
    )
    trainer = HyperfracTrainer(model=model, args=targs, train_dataset=dataset(),
                               data_collator=collate)
    trainer.train()
    log = next(r for r in trainer.state.log_history if "loss" in r)
    grads = {n: before[n] - p.detach() for n, p in model.named_parameters()}
    return log, grads


@pytest.mark.filterwarnings("ignore::FutureWarning")  # gradient_checkpointing: HF's old name
@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_trainer_gradient_accumulation_equals_one_large_batch(tmp_path, moe: bool) -> None:
    # MoE: routing and experts under accumulation; the balance losses are batch statistics
    # (not sums over tokens), so they are switched off for an exact comparison.
    moe_cfg = MoEConfig(n_experts=4, top_k=2, expert_hidden=32, capacity_factor=None,
                        lb_loss_weight=0.0, z_loss_weight=0.0)
    kw = {"moe": moe_cfg} if moe else {}
    ref = tiny(**kw)
    ref.train()
    out = ref(**collate(dataset()))
    out.loss.backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    ref_norm = torch.sqrt(sum(g.square().sum() for g in ref_grads.values()))

    runs = {
        "ga1": dict(batch=4, accum=1),
        "ga2": dict(batch=2, accum=2),
        "ga4": dict(batch=1, accum=4),
        "ga2+checkpointing": dict(batch=2, accum=2, gradient_checkpointing=True),
    }
    for name, run in runs.items():
        log, grads = one_sgd_step(tmp_path, tiny(**kw), **run)
        assert log["loss"] == pytest.approx(out.loss.item(), rel=1e-5), name
        assert log["grad_norm"] == pytest.approx(float(ref_norm), rel=1e-4), name
        for n, g in grads.items():
            torch.testing.assert_close(g, ref_grads[n], atol=2e-6, rtol=1e-4, msg=f"{name} {n}")


def test_loss_honours_num_items_in_batch() -> None:
    model = tiny().eval()
    batch = collate(dataset())
    with torch.no_grad():
        mean = model(**batch).loss
        n = int((batch["labels"][:, 1:] != -100).sum())
        summed = model(**batch, num_items_in_batch=torch.tensor(3 * n)).loss
    assert HyperfracForCausalLM.accepts_loss_kwargs
    torch.testing.assert_close(summed, mean / 3)


def test_trainer_does_not_decay_static_connection_parameters(tmp_path) -> None:
    model = tiny(connection={"kind": "dhc", "n_streams": 2})
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.1, report_to="none",
                             use_cpu=True)
    opt = HyperfracTrainer(model=model, args=args, train_dataset=dataset(),
                           data_collator=collate).create_optimizer()
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    undecayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    ours = {g["name"]: {id(p) for p in g["params"]} for g in param_groups(model, 0.1)}
    assert decayed == ours["decay"] and undecayed == ours["no_decay"]
    names = dict(model.named_parameters())
    static = [n for n in names if "static_" in n]
    assert static and all(id(names[n]) in undecayed for n in static)
    dynamic = [n for n in names if "dynamic_" in n]
    assert dynamic and all(id(names[n]) in decayed for n in dynamic)  # dynamic projections decay
    # the plain Trainer's name rule would decay the static parameters: the reason for the class
    plain = Trainer(model=model, args=args).get_decay_parameter_names(model)
    assert set(static) <= set(plain)
    assert set(static).isdisjoint(decay_parameter_names(model))


@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
def test_padded_logits_equal_each_sequence_alone(left: bool) -> None:
    model = tiny().eval()
    rows = dataset()
    batch = collate(rows, left=left)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        for i, r in enumerate(rows):
            alone = model(torch.tensor([r["input_ids"]])).logits[0]  # (n, V)
            real = batch["attention_mask"][i].bool()
            torch.testing.assert_close(out.logits[i, real], alone, atol=1e-5, rtol=1e-5)
        # a padded loss equals the token-weighted mean of the sequences' own losses
        loss = model(**batch).loss
        sums = [model(torch.tensor([r["input_ids"]]), labels=torch.tensor([r["input_ids"]])).loss
                * (len(r["input_ids"]) - 1) for r in rows]
    torch.testing.assert_close(loss, sum(sums) / sum(n - 1 for n in LENGTHS))


def test_hf_gradient_checkpointing_gives_equal_gradients() -> None:
    grads = []
    for enable in (False, True):
        model = tiny(connection={"kind": "mhc", "n_streams": 2}).train()
        if enable:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model.gradient_checkpointing_enable()
            assert model.model.gradient_checkpointing
        calls = []
        model.model.blocks[0].register_forward_pre_hook(lambda *_, c=calls: c.append(1))
        model(**collate(dataset())).loss.backward()
        assert len(calls) == (2 if enable else 1)  # checkpointing reran the block in backward
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5, msg=n)


def test_batched_padded_generation_equals_one_by_one() -> None:
    model = tiny().eval()
    rows = dataset()
    batch = collate(rows, left=True)
    out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                         max_new_tokens=6, do_sample=False, pad_token_id=0)
    for i, r in enumerate(rows):
        alone = model.generate(torch.tensor([r["input_ids"]]), max_new_tokens=6,
                               do_sample=False, pad_token_id=0)
        assert out[i, batch["input_ids"].shape[1]:].tolist() == alone[0, len(r["input_ids"]):] \
            .tolist()


def test_generate_stops_at_eos() -> None:
    model = tiny().eval()
    idx = torch.tensor([dataset()[0]["input_ids"]])
    free = model.generate(idx, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, idx.shape[1]:]
    eos = int(free[3])
    first = free.tolist().index(eos)
    model.generation_config.eos_token_id = eos
    stopped = model.generate(idx, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert stopped[0, idx.shape[1]:].tolist() == free[: first + 1].tolist()


def test_output_hidden_states_are_the_reduced_stream_states() -> None:
    model = tiny(connection={"kind": "dhc", "n_streams": 2}).eval()
    idx = torch.tensor([dataset()[0]["input_ids"]])
    lm = model.model
    with torch.no_grad():
        out = model(idx, output_hidden_states=True)
        assert len(out.hidden_states) == lm.cfg.n_layers + 1
        h = lm.streams.expand(lm.embed(idx))
        torch.testing.assert_close(out.hidden_states[0], lm.streams.reduce(h))
        rope = lm.rotary(idx.shape[1])
        for i, block in enumerate(lm.blocks):
            h = block(h, rope, [])
            torch.testing.assert_close(out.hidden_states[i + 1], lm.streams.reduce(h))
        torch.testing.assert_close(out.logits, lm.lm_head(lm.norm(out.hidden_states[-1])))
        assert model(idx).hidden_states is None
    with pytest.raises(ValueError, match="output_attentions"):
        model(idx, output_attentions=True)


def test_moe_padded_batch_routes_only_real_tokens() -> None:
    """With a capacity factor the capacity depends on the routed token count: pads must not
    take slots, so a padded pair equals the same two sequences batched without padding."""
    moe = MoEConfig(n_experts=4, top_k=2, expert_hidden=32, capacity_factor=1.0)
    model = tiny(moe=moe).eval()
    g = torch.Generator().manual_seed(5)
    a, b = torch.randint(1, V, (2, 8), generator=g)
    with torch.no_grad():
        ref = model.model(torch.stack([a, b])).logits  # (2, 8, V): 16 tokens routed
        ids = torch.zeros(2, 11, dtype=torch.long)
        mask = torch.zeros(2, 11, dtype=torch.long)
        ids[0, 3:], ids[1, :8] = a, b  # left-pad one, right-pad the other
        mask[0, 3:], mask[1, :8] = 1, 1
        out = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(out[0, 3:], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, :8], ref[1], atol=1e-5, rtol=1e-5)
