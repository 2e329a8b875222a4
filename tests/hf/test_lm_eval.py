"""``hyperfrac eval FOLDER --lm-eval TASK`` offline, on a local JSONL multiple-choice task:
lm-eval's accuracy equals the accuracy computed by hand from the model's log-likelihoods."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

from hyperfrac.cli import main
from hyperfrac.hf import HyperfracConfig, HyperfracForCausalLM, save_hf
from hyperfrac.hf.export import load_bpe_tokenizer
from hyperfrac.models import LMConfig

ITEMS = [
    ("The king spoke of", [" love", " war", " night", " stars"], 0),
    ("Fair lords and ladies", [" sing", " fall", " shine", " speak"], 1),
    ("The moon shines upon", [" the castle", " a queen", " sweet songs", " bright stars"], 2),
    ("Night falls in a", [" castle", " song", " war", " moon"], 3),
    ("Sweet songs to the", [" moon", " king", " night", " lords"], 0),
    ("Where the queen", [" speaks", " sings", " falls", " shines"], 1),
]


def write_task(folder, data) -> None:
    folder.mkdir()
    rows = [{"context": c, "choices": ch, "label": y} for c, ch, y in ITEMS]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "toy_mc.yaml").write_text(
        "task: hyperfrac_toy_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: '{data}'}}}}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "metric_list: [{metric: acc}]\n"
    )


@torch.no_grad()
def hand_accuracy(model, tok) -> float:
    """argmax over choices of sum log p(choice tokens | context), lm-eval's tokenisation."""
    right = 0
    for context, choices, label in ITEMS:
        scores = []
        for choice in choices:
            ctx = tok(context)["input_ids"]
            whole = tok(context + choice)["input_ids"]
            cont = whole[len(ctx) :]
            logp = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            scores.append(
                sum(logp[len(whole) - len(cont) - 1 + i, t].item() for i, t in enumerate(cont))
            )
        right += int(max(range(len(choices)), key=scores.__getitem__) == label)
    return right / len(ITEMS)


@pytest.mark.slow
def test_lm_eval_on_a_local_jsonl_task(tmp_path, tiny_dataset, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    torch.manual_seed(0)
    cfg = LMConfig(
        vocab_size=512,
        dim=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=64,
        init_std=0.5,
        connection={"kind": "dfc", "n_fracs": 2},
    )
    model = HyperfracForCausalLM(HyperfracConfig.from_lm_config(cfg)).eval()
    folder = tmp_path / "model"
    save_hf(model, folder, tokenizer=tiny_dataset / "tokenizer.json")
    write_task(tmp_path / "tasks", tmp_path / "items.jsonl")
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(folder),
                "--lm-eval",
                "hyperfrac_toy_mc",
                "--lm-eval-include",
                str(tmp_path / "tasks"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    res = json.loads(text[text.index("\n{") :] if not text.startswith("{") else text)
    acc = res["hyperfrac_toy_mc"]["acc,none"]
    tok = load_bpe_tokenizer(tiny_dataset / "tokenizer.json")
    assert acc == pytest.approx(hand_accuracy(model, tok))
