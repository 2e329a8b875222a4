"""docs/huggingface.md's fine-tuning recipe on a tiny random Llama: convert -> HF Trainer
(padded batches from DataCollatorForLanguageModeling, gradient accumulation, gradient
checkpointing, weight decay, PEFT LoRA + the connections) -> merge -> export -> reload (and
lm-eval where it is installed)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    TrainingArguments,
)

import hyperfrac.hf  # noqa: F401  (registers the hyperfrac model type)
from hyperfrac.cli import main
from hyperfrac.data.tokenizer import train_tokenizer
from hyperfrac.hf import HyperfracTrainer, save_hf
from hyperfrac.hf.export import load_bpe_tokenizer

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife. ")


def source_folder(tmp_path):
    """A random Llama with a tokenizer (ours, wrapped as a fast tokenizer) in an HF folder."""
    bpe = train_tokenizer([TEXT * 30], 300)
    bpe.save(str(tmp_path / "tokenizer.json"))
    tok = load_bpe_tokenizer(tmp_path / "tokenizer.json", vocab_size=320)  # adds <|pad|>
    torch.manual_seed(0)
    src = LlamaForCausalLM(LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        eos_token_id=tok.eos_token_id, bos_token_id=None, pad_token_id=tok.pad_token_id,
    ))
    src.save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


def test_fine_tuning_recipe(tmp_path) -> None:
    peft = pytest.importorskip("peft")
    src = source_folder(tmp_path)
    # 1. convert
    assert main(["convert", str(src), str(tmp_path / "dhc"),
                 "--connection", "{kind: dhc, n_streams: 2}"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dhc")
    tok = AutoTokenizer.from_pretrained(tmp_path / "dhc")
    assert tok.pad_token_id != tok.eos_token_id

    # 2. LoRA on the branch projections; the connections train in full
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=8, lora_alpha=16, target_modules=["qkv", "out", "w_in", "w_out"],
        task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "_conn." in name:
            p.requires_grad_(True)

    words = TEXT.split()
    texts = [" ".join(words[i: i + 4 + i % 9]) + tok.eos_token for i in range(0, 48)]
    data = [tok(t) for t in texts]  # different lengths: padded batches
    args = TrainingArguments(
        output_dir=str(tmp_path / "ft"), per_device_train_batch_size=4,
        gradient_accumulation_steps=2, max_steps=12, learning_rate=3e-3, weight_decay=0.1,
        gradient_checkpointing=True, logging_steps=1, report_to="none", save_strategy="no",
        use_cpu=True, seed=0, disable_tqdm=True,
    )
    trainer = HyperfracTrainer(model=model, args=args, train_dataset=data,
                               data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    static = [p for n, p in model.named_parameters() if "static_" in n]
    static_before = [p.detach().clone() for p in static]
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 12 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # it learns
    assert any(not torch.equal(a, b) for a, b in zip(static, static_before, strict=True))
    undecayed = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] == 0
                 for p in g["params"]}
    assert all(id(p) in undecayed for p in static)

    # 3. merge LoRA into the weights and export (weights, config, tokenizer, remote code)
    merged = model.merge_and_unload().eval()
    out = save_hf(merged, tmp_path / "export", tokenizer=tok)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["eos_token_id"] == tok.eos_token_id and "auto_map" in cfg
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    batch = tok(["a single man", "It is a truth universally"], padding=True,
                return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).logits, merged(**batch).logits)
        prompt = tok(["It is a truth"], return_tensors="pt")
        gen = back.generate(**prompt, max_new_tokens=30, do_sample=False)
    new = gen[0, prompt["input_ids"].shape[1]:].tolist()
    assert len(new) == 30 or new[-1] == tok.eos_token_id  # stops at EOS or at the limit
    assert tok.eos_token_id not in new[:-1]

    # 4. lm-eval on the exported folder (where lm-evaluation-harness is installed)
    if importlib.util.find_spec("lm_eval") is None:
        return
    task = tmp_path / "tasks"
    task.mkdir()
    items = task / "items.jsonl"
    items.write_text("".join(json.dumps({"context": "It is a truth", "choices": [
        " universally acknowledged", " wife"], "label": 0}) + "\n" for _ in range(4)))
    (task / "mc.yaml").write_text(
        f"task: recipe_mc\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {items}}}}}"
        "\ntest_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{context}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{label}}\"\n"
        "metric_list: [{metric: acc}]\n")
    assert main(["eval", str(out), "--lm-eval", "recipe_mc", "--lm-eval-include",
                 str(task)]) == 0
