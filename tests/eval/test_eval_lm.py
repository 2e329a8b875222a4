"""Bits-per-byte and candidate scoring against direct calculations; ``hyperfrac eval`` on a run
whose dataset has held-out and out-of-distribution splits; ``--text`` and its input errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hyperfrac.cli import main
from hyperfrac.data.prepare import load_meta, prepare_documents
from hyperfrac.data.tokenizer import load_tokenizer
from hyperfrac.eval.scoring import LMScorer, text_bpb
from hyperfrac.models import build_preset
from hyperfrac.train import Trainer, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok_and_model(tiny_dataset: Path):
    torch.manual_seed(0)
    model = build_preset("tiny").eval()
    return load_tokenizer(tiny_dataset / "tokenizer.json"), model, load_meta(tiny_dataset)["eos_id"]


def test_text_bpb_matches_direct_calculation(tok_and_model) -> None:
    tok, model, eos = tok_and_model
    text = "Fair lords sing of love — and war, ünïcode too.\n\nThe queen speaks. " * 7
    res = text_bpb(model, tok, text, seq_len=16, eos_id=eos, batch_size=3)
    ids = [eos] + tok.encode(text).ids
    nll = 0.0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, 16):
            x = torch.tensor(ids[s : s + 16])[None]
            y = torch.tensor(ids[s + 1 : s + 17])
            logp = F.log_softmax(model(x).logits[0, : len(y)].double(), -1)
            nll -= float(logp[torch.arange(len(y)), y].sum())
    assert res["tokens"] == len(ids) - 1 and res["bytes"] == len(text.encode())
    assert math.isclose(res["bpb"], nll / math.log(2) / len(text.encode()), rel_tol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        text_bpb(model, tok, "", seq_len=16, eos_id=eos)


def test_lm_scorer_matches_direct_log_probabilities(tok_and_model) -> None:
    tok, model, eos = tok_and_model
    requests = [
        ("The king speaks of", " love"),
        ("", "A queen sings."),
        ("Night falls", " upon the castle"),
    ]
    got = LMScorer(model, tok, max_seq_len=64, eos_id=eos, batch_size=2).score(requests)
    for (ctx, cont), (lp, nbytes, greedy) in zip(requests, got, strict=True):
        c_ids = [eos] + (tok.encode(ctx).ids if ctx else [])
        x_ids = tok.encode(cont).ids
        ids = torch.tensor(c_ids + x_ids)
        with torch.no_grad():
            logp = F.log_softmax(model(ids[None, :-1]).logits[0].double(), -1)
        pos = torch.arange(len(c_ids) - 1, len(ids) - 1)
        tgt = ids[len(c_ids) :]
        assert math.isclose(lp, float(logp[pos, tgt].sum()), rel_tol=1e-5)
        assert nbytes == len(cont.encode())
        assert greedy == bool((logp[pos].argmax(-1) == tgt).all())


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, fixture_documents):
    """A 4-step tiny LM on a dataset with val, held-out and out-of-distribution splits."""
    tmp = tmp_path_factory.mktemp("evalrun")
    docs = fixture_documents(n_docs=6, paragraphs=60)
    long_para = " ".join(["the king speaks of love and war in a castle"] * 7) + " and war."
    heldout = fixture_documents(n_docs=1, paragraphs=80, seed=5)[0]
    heldout = type(heldout)("book", "heldout", heldout.text + "\n" + long_para + "\n")
    ood = type(heldout)("docs", "ood", "def f(x):\n    return x + 1\n\nCall ``f`` twice.\n" * 20)
    data = prepare_documents(
        docs,
        tmp / "ds",
        vocab_size=512,
        chunk_bytes=512,
        val_every=10,
        val_offset=5,
        heldout=[heldout],
        ood=[ood],
        progress=lambda m: None,
    )
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"data.path={data}",
            f"out_dir={tmp}",
            "data.seq_len=32",
            "train.steps=4",
            "train.batch_size=8",
            "log.progress=never",
            "eval.batch_size=8",
            "eval.interval=0",
        ],
    )
    Trainer(cfg).fit()
    return cfg.run_dir, data


def test_eval_cli_reports_splits_and_suites(trained_run, capsys) -> None:
    run_dir, data = trained_run
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--max-items", "30"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["splits"]) == {"val", "heldout", "ood"}
    meta = load_meta(data)
    for split, r in res["splits"].items():
        assert r["bytes"] <= meta["splits"][split]["bytes"] and 0 < r["bpb"] < 20
    assert res["bpb"] == res["splits"]["val"]["bpb"]
    for name in ("lastword", "cloze", "pairs"):
        s = res["suites"][name]
        assert s["source"] == "heldout.txt" and 0 < s["items"] <= 30
        assert 0 <= s["accuracy"] <= 1 and s["ci95"][0] <= s["accuracy"] <= s["ci95"][1]
        assert s["chance"] == {"lastword": 0.0, "cloze": 0.25, "pairs": 0.5}[name]
    assert json.loads((run_dir / "eval.json").read_text()) == res
    assert main(["eval", str(run_dir), "--max-items", "30"]) == 0  # same items, same numbers
    again = json.loads(capsys.readouterr().out)
    assert again["suites"] == res["suites"]


def test_eval_text_file_and_its_errors(trained_run, tmp_path: Path, capsys) -> None:
    run_dir, data = trained_run
    good = tmp_path / "mine.txt"
    good.write_text("Any text a user supplies, ünïcode included.\n" * 5, encoding="utf-8")
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--text", str(good)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["bytes"] == len(good.read_bytes()) and res["bpb"] > 0
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8.*offset 3"):
        main(["--debug", "eval", str(run_dir), "--text", str(bad)])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(ValueError, match="the file is empty"):
        main(["--debug", "eval", str(run_dir), "--text", str(empty)])
    with pytest.raises(FileNotFoundError, match="no such file"):
        main(["--debug", "eval", str(run_dir), "--text", str(tmp_path / "nope.txt")])
