"""Readers for the file formats inside the corpus packages (pure functions of file bytes).

Each reader takes ``{path inside the package: bytes}`` (see :func:`hyperfrac.data.debian.read_deb`)
and returns :class:`~hyperfrac.data.corpus.Document` objects whose paragraphs are separated by
blank lines (the chunked split and the evaluation suites cut at paragraph boundaries).

* **R lazy-load database** (``r-cran-janeaustenr``: ``data/Rdata.rdx`` + ``Rdata.rdb``): the
  ``.rdx`` is a compressed R serialization of ``list(variables = list(name = c(offset, length)),
  references, compressed)``; each variable is the slice ``rdb[offset : offset + length]`` =
  4-byte big-endian uncompressed length + a zlib stream (R's ``compress = TRUE``; types 2/3,
  bzip2/xz, carry a one-byte tag after the length) of an R serialization (XDR) of a character
  vector, one string per line of the novel. The R serializations are parsed with the PyPI
  package ``rdata``; the decompression and record walk are ours (:func:`read_r_lazyload`).
* **SWORD zText / zCom** (``sword-text-*``, ``sword-comm-*``): ``{ot,nt}.{bz,cz}s`` lists
  zlib blocks (12 bytes each: offset, size, uncompressed size, little-endian), ``.bzz`` holds the
  blocks, ``.bzv`` indexes entries (10 bytes: block, offset, size u16; zText4/zCom4 ``.cz*``:
  12 bytes with a u32 size). Entries linked to the same text are kept once. Markup (OSIS/ThML)
  is stripped, ``<note>`` elements dropped. An empty index entry (book and chapter headings)
  starts a new paragraph, so a Bible chapter becomes one paragraph.
* **fortune files** (``fortunes``): quotes separated by lines holding ``%``.
* **reStructuredText sources** (``python3.X-doc``, ``linux-doc-*``): ``*.rst.txt`` as they are.
"""

from __future__ import annotations

import gzip
import html
import lzma
import re
import struct
import warnings
import zlib
from pathlib import PurePosixPath

from hyperfrac.data.corpus import Document

# ----------------------------------------------------------------------------- R lazy-load DB


def _r_decompress_rdx(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    if data[:2] in (b"X\n", b"A\n", b"B\n"):
        return data
    try:
        return zlib.decompress(data[4:])
    except zlib.error as e:
        raise ValueError("unrecognised .rdx compression (not gzip, xz, zlib or raw)") from e


def _r_value_blob(blob: bytes, where: str) -> bytes:
    """Decompress one ``.rdb`` record: 4-byte length, then zlib (or tag + bzip2/xz/raw)."""
    if len(blob) < 5:
        raise ValueError(f"{where}: record of {len(blob)} bytes is too short")
    (n,) = struct.unpack(">I", blob[:4])
    try:
        out = zlib.decompress(blob[4:])
    except zlib.error:
        tag, body = blob[4:5], blob[5:]
        if tag == b"2":
            import bz2

            out = bz2.decompress(body)
        elif tag == b"X":
            out = lzma.decompress(body)
        elif tag == b"0":
            out = body
        else:
            raise ValueError(
                f"{where}: record is neither zlib nor a tagged bzip2/xz stream"
            ) from None
    if len(out) != n:
        raise ValueError(f"{where}: decompressed {len(out)} bytes, header says {n}")
    return out


def _r_parse(data: bytes):
    try:
        import rdata
    except ImportError as e:
        raise ImportError(
            "reading the Austen novels (an R lazy-load database) needs the PyPI package "
            "`rdata`: pip install 'hyperfrac[train]' (or pip install rdata)"
        ) from e
    with warnings.catch_warnings():  # lazy-load records carry no file-type header
        warnings.filterwarnings("ignore", message="Unknown file type")
        return rdata.conversion.convert(rdata.parser.parse_data(data))


def read_r_lazyload(rdx: bytes, rdb: bytes) -> dict[str, object]:
    """All variables of an R lazy-load database, converted by ``rdata``, in index order."""
    index = _r_parse(_r_decompress_rdx(rdx))
    if not isinstance(index, dict) or "variables" not in index:
        raise ValueError("the .rdx index has no 'variables' entry; is it an R lazy-load index?")
    out = {}
    for name, pos in index["variables"].items():
        off, length = (int(v) for v in list(pos)[:2])
        if off < 0 or off + length > len(rdb):
            raise ValueError(
                f"variable {name!r} points at bytes [{off}, {off + length}) but the .rdb has "
                f"{len(rdb)} bytes (truncated or mismatched .rdb)"
            )
        out[str(name)] = _r_parse(_r_value_blob(rdb[off : off + length], f"variable {name!r}"))
    return out


def read_austen(files: dict[str, bytes]) -> list[Document]:
    """The six novels of ``r-cran-janeaustenr`` (character vectors, one string per line)."""
    rdx = next((v for k, v in files.items() if k.endswith("/Rdata.rdx")), None)
    rdb = next((v for k, v in files.items() if k.endswith("/Rdata.rdb")), None)
    if rdx is None or rdb is None:
        raise ValueError("janeaustenr: data/Rdata.rdx and data/Rdata.rdb not found")
    docs = []
    for name, value in read_r_lazyload(rdx, rdb).items():
        if isinstance(value, (str, dict)) or not hasattr(value, "__len__"):
            continue
        raw = list(value)
        if not raw or not all(s is None or isinstance(s, str) for s in raw):
            continue  # not a character vector
        lines = ["" if s is None else str(s) for s in raw]
        text = "\n".join(lines).strip() + "\n"
        docs.append(Document("austen", name, text))
    if not docs:
        raise ValueError("janeaustenr: the lazy-load database holds no character vectors")
    return sorted(docs, key=lambda d: d.name)


# ----------------------------------------------------------------------------- SWORD modules

_NOTE = re.compile(r"<note\b.*?</note>", re.S | re.I)
_BLOCK = re.compile(r"</?(?:p|br|lb|div|l|lg|title|milestone|item|list|row|cell)\b[^>]*>", re.I)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def _sword_clean(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", "replace")
    text = _TAG.sub("", _BLOCK.sub(" ", _NOTE.sub("", text)))  # inline tags: no space
    return _SPACE.sub(" ", html.unescape(text)).strip()


def read_sword(files: dict[str, bytes], name: str, *, max_run: int = 30) -> list[Document]:
    """One document per testament of a SWORD zText/zCom module (files of its module folder)."""
    by_name = {PurePosixPath(k).name: v for k, v in files.items()}
    docs = []
    for part in ("ot", "nt"):
        ext = "bz" if f"{part}.bzs" in by_name else "cz" if f"{part}.czs" in by_name else None
        if ext is None:
            continue
        try:
            bzs, bzz, bzv = (by_name[f"{part}.{ext}{c}"] for c in "szv")
        except KeyError as e:
            raise ValueError(f"SWORD module {name}: missing file {e.args[0]}") from None
        vsz, vfmt = (10, "<IIH") if ext == "bz" else (12, "<III")
        if len(bzs) % 12 or len(bzv) % vsz:
            raise ValueError(
                f"SWORD module {name}: index sizes {len(bzs)} / {len(bzv)} are not multiples of "
                f"12 / {vsz} (corrupt or not a zText/zCom module)"
            )
        blocks = []
        for i in range(0, len(bzs), 12):
            off, size, _ = struct.unpack("<III", bzs[i : i + 12])
            try:
                blocks.append(zlib.decompress(bzz[off : off + size]) if size else b"")
            except zlib.error as e:
                raise ValueError(f"SWORD module {name}: block {i // 12} is corrupt ({e})") from e
        paras, run, seen = [], [], set()
        for i in range(0, len(bzv), vsz):
            b, o, s = struct.unpack(vfmt, bzv[i : i + vsz])
            if s == 0 or b >= len(blocks):
                if run:
                    paras.append(" ".join(run))
                    run = []
                continue
            if (b, o) in seen:  # linked entries (one comment for a verse range) kept once
                continue
            seen.add((b, o))
            text = _sword_clean(blocks[b][o : o + s])
            if text:
                run.append(text)
            if len(run) >= max_run:
                paras.append(" ".join(run))
                run = []
        if run:
            paras.append(" ".join(run))
        if paras:
            docs.append(Document(name, f"{name}-{part}", "\n\n".join(paras) + "\n"))
    if not docs:
        raise ValueError(f"SWORD module {name}: no ot/nt .bzs/.czs index files found")
    return docs


# ----------------------------------------------------------------------------- fortunes, reST

_PERCENT = re.compile(r"^%[ \t]*$", re.M)


def read_fortunes(files: dict[str, bytes]) -> list[Document]:
    """Each fortune file (no ``.dat``/``.u8``) as a document; fortunes become paragraphs."""
    docs = []
    for path in sorted(files):
        p = PurePosixPath(path)
        if p.suffix in (".dat", ".u8") or "fortunes" not in p.parts:
            continue
        text = files[path].decode("utf-8", "replace").replace("\r\n", "\n")
        quotes = [q.strip("\n") for q in _PERCENT.split(text)]
        quotes = [re.sub(r"\n\s*\n", "\n", q) for q in quotes if q.strip()]
        if quotes:
            docs.append(Document("fortunes", p.name, "\n\n".join(quotes) + "\n"))
    if not docs:
        raise ValueError("fortunes: no fortune files found")
    return docs


def read_rst_sources(files: dict[str, bytes], source: str, marker: str) -> list[Document]:
    """``*.rst.txt`` (Sphinx ``_sources``) files; the name is the path after ``marker``."""
    docs = []
    for path in sorted(files):
        if not path.endswith(".rst.txt"):
            continue
        name = path.split(marker, 1)[-1]
        text = files[path].decode("utf-8", "replace").replace("\r\n", "\n")
        if text.strip():
            docs.append(Document(source, name, text))
    if not docs:
        raise ValueError(f"{source}: no *.rst.txt files under {marker}")
    return docs
