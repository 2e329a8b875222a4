"""Small fixtures in the real file formats of every corpus source (built in the test, no network).

* ``r_serialize``: R's XDR serialization (format version 2) of character/integer/logical
  vectors and named lists, enough to write an R lazy-load database (``.rdx`` + ``.rdb``) that
  ``rdata`` parses like the real ``janeaustenr`` one;
* ``sword_module``: a SWORD zText (``.bz*``, 10-byte verse index) or zCom4 (``.cz*``, 12-byte
  index) module with zlib blocks, linked (repeated) entries and empty heading entries;
* ``sdist``, ``prose`` and the ``.deb`` container (:func:`hyperfrac.data.debian.write_deb`).
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zlib
from pathlib import Path

from hyperfrac.data.debian import write_deb

# ----------------------------------------------------------------------------- R serialization


def _i(v: int) -> bytes:
    return struct.pack(">i", v)


def _charsxp(s: str | None) -> bytes:
    if s is None:
        return _i(9) + _i(-1)  # NA_STRING
    data = s.encode()
    return _i(9 | (8 << 12)) + _i(len(data)) + data  # UTF8_MASK in the levels


def _names_attr(names: list[str]) -> bytes:
    tag = _i(1) + _charsxp("names")  # SYMSXP
    return _i(2 | (1 << 10)) + tag + _r_obj(names) + _i(254)  # LISTSXP with tag, NILVALUE


def _r_obj(obj) -> bytes:
    if isinstance(obj, dict):
        out = _i(19 | (1 << 9)) + _i(len(obj))
        for v in obj.values():
            out += _r_obj(v)
        return out + _names_attr(list(obj))
    if isinstance(obj, list) and all(isinstance(v, str) or v is None for v in obj):
        return _i(16) + _i(len(obj)) + b"".join(_charsxp(s) for s in obj)
    if isinstance(obj, tuple) and all(isinstance(v, bool) for v in obj):
        return _i(10) + _i(len(obj)) + b"".join(_i(int(v)) for v in obj)
    if isinstance(obj, tuple):
        return _i(13) + _i(len(obj)) + b"".join(_i(v) for v in obj)
    raise TypeError(f"cannot serialize {obj!r}")


def r_serialize(obj) -> bytes:
    """XDR serialization, version 2 (as ``serialize(obj, NULL, version = 2)``)."""
    return b"X\n" + _i(2) + _i(0x040201) + _i(0x020300) + _r_obj(obj)


def r_lazyload_db(variables: dict[str, list[str]]) -> tuple[bytes, bytes]:
    """(``.rdx``, ``.rdb``) bytes of an R lazy-load database holding ``variables``."""
    rdb = bytearray()
    index = {}
    for name, value in variables.items():
        blob = r_serialize(value)
        record = struct.pack(">I", len(blob)) + zlib.compress(blob)
        index[name] = (len(rdb), len(record))
        rdb += record
    rdx = gzip.compress(
        r_serialize({"variables": index, "references": {}, "compressed": (True,)}), mtime=0
    )
    return rdx, bytes(rdb)


# ----------------------------------------------------------------------------- SWORD


def sword_module(
    entries: dict[str, list[str | int | None]], *, zcom4: bool = False, per_block: int = 3
) -> dict[str, bytes]:
    """Files of a zText (or zCom4) module. ``entries[testament]`` lists verse texts; ``None``
    is an empty (heading) entry; an int ``k`` links to (repeats) entry ``k``."""
    ext, vfmt = ("cz", "<III") if zcom4 else ("bz", "<IIH")
    files = {}
    for part, verses in entries.items():
        blocks: list[bytearray] = []
        counts: list[int] = []
        index: list[tuple[int, int, int]] = []
        for v in verses:
            if v is None:
                index.append((0, 0, 0))
                continue
            if isinstance(v, int):
                index.append(index[v])
                continue
            if not blocks or counts[-1] >= per_block:
                blocks.append(bytearray())
                counts.append(0)
            counts[-1] += 1
            data = v.encode()
            index.append((len(blocks) - 1, len(blocks[-1]), len(data)))
            blocks[-1] += data
        bzs, bzz = bytearray(), bytearray()
        for b in blocks:
            comp = zlib.compress(bytes(b))
            bzs += struct.pack("<III", len(bzz), len(comp), len(b))
            bzz += comp
        files[f"{part}.{ext}s"] = bytes(bzs)
        files[f"{part}.{ext}z"] = bytes(bzz)
        files[f"{part}.{ext}v"] = b"".join(struct.pack(vfmt, *e) for e in index)
    return files


# ----------------------------------------------------------------------------- packages


def deb(path: Path, files: dict[str, bytes]) -> Path:
    return write_deb(path, files)


def sdist(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def prose(tag: str, n_paras: int, seed: int = 0) -> str:
    """Deterministic paragraphs of pseudo-English, unique per (tag, paragraph)."""
    import random

    rng = random.Random(f"{tag}-{seed}")
    words = (
        "the house was quiet and she is walking to a garden where he has found an old letter "
        "which they were reading by the window while rain does fall upon every stone"
    ).split()
    paras = []
    for p in range(n_paras):
        sents = []
        for _ in range(rng.randint(4, 6)):
            sents.append(
                " ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + "."
            )
        paras.append(f"{tag} {p}. " + " ".join(sents))
    return "\n\n".join(paras) + "\n"
