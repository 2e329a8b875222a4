"""Debian packages as data sources: fetch a ``.deb`` by name, read files out of it in Python.

``fetch_deb(name, dest)`` looks for ``NAME_*.deb`` in ``dest`` (or in a user-supplied folder)
and otherwise runs ``apt-get download NAME`` there (no root needed once the package lists
exist; nothing is installed). Debian versions move with security updates, so versions are not
pinned; the corpus records a hash of every extracted text instead.

``read_deb(path, want)`` reads a ``.deb`` without ``dpkg``: a ``.deb`` is an ``ar`` archive
holding ``debian-binary``, ``control.tar.*`` and ``data.tar.*``; the data tarball (xz, gzip,
bzip2 or uncompressed; zstd via the optional ``zstandard`` module or ``dpkg-deb``) is streamed
and only the members for which ``want(path)`` is true are kept in memory. It therefore also
works on a non-Debian machine given the ``.deb`` files.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

AR_MAGIC = b"!<arch>\n"


class DebianUnavailable(RuntimeError):
    """A Debian package could not be fetched (no apt, no package lists, no network...)."""


def fetch_deb(name: str, dest: Path, *, deb_dir: Path | None = None) -> Path:
    """Path of ``NAME_*.deb``: from ``deb_dir``, from ``dest`` (cache), or ``apt-get download``."""
    for folder in (deb_dir, dest):
        if folder is not None:
            found = sorted(Path(folder).glob(f"{name}_*.deb"))
            if found:
                return found[-1]
    if shutil.which("apt-get") is None:
        raise DebianUnavailable(
            f"cannot fetch the Debian package {name!r}: apt-get is not available on this machine"
            " (pass --deb-dir with the downloaded .deb files to use it anyway)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["apt-get", "download", name], cwd=dest, capture_output=True, text=True, timeout=900
    )
    found = sorted(dest.glob(f"{name}_*.deb"))
    if res.returncode != 0 or not found:
        hint = (
            "run `apt-get update` (as root) first"
            if "Unable to locate" in res.stderr or "No packages found" in res.stderr
            else "check network access to the Debian mirror"
        )
        raise DebianUnavailable(
            f"`apt-get download {name}` failed ({hint}, or pass --deb-dir with the .deb):\n"
            + res.stderr.strip()[-600:]
        )
    return found[-1]


def _ar_members(data: bytes, path: Path) -> dict[str, bytes]:
    if not data.startswith(AR_MAGIC):
        raise ValueError(f"{path} is not a Debian package (no ar archive header)")
    out, pos = {}, len(AR_MAGIC)
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        if header[58:60] != b"`\n":
            raise ValueError(f"{path}: corrupt ar member header at byte {pos}")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        start = pos + 60
        if start + size > len(data):
            raise ValueError(f"{path}: truncated (member {name!r} needs {size} bytes)")
        out[name] = data[start : start + size]
        pos = start + size + (size & 1)  # members are 2-byte aligned
    return out


def _data_tar(members: dict[str, bytes], path: Path) -> tarfile.TarFile:
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise ValueError(f"{path}: no data.tar.* member (found {sorted(members)})")
    blob = members[name]
    if name.endswith(".zst"):
        try:
            import zstandard

            blob = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
        except ImportError:
            if shutil.which("dpkg-deb") is None:
                raise ValueError(
                    f"{path} uses zstd compression; `pip install zstandard` to read it"
                ) from None
            blob = subprocess.run(
                ["dpkg-deb", "--fsys-tarfile", str(path)], capture_output=True, check=True
            ).stdout
    return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")


def read_deb(path: Path, want: Callable[[str], bool]) -> dict[str, bytes]:
    """``{path inside the package (no leading ./): bytes}`` of regular files where ``want``."""
    path = Path(path)
    members = _ar_members(path.read_bytes(), path)
    out: dict[str, bytes] = {}
    with _data_tar(members, path) as tf:
        for m in tf:
            name = m.name[2:] if m.name.startswith("./") else m.name.lstrip("/")
            if m.isfile() and want(name):
                out[name] = tf.extractfile(m).read()  # type: ignore[union-attr]
    return out


def write_deb(path: Path, files: dict[str, bytes]) -> Path:
    """Write a minimal ``.deb`` (ar + ``data.tar.xz``) holding ``files``; used by tests and by
    anyone wanting a fixture in the real container format."""

    def tar_xz(entries: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tf:
            for name, data in sorted(entries.items()):
                info = tarfile.TarInfo("./" + name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    members = {
        "debian-binary": b"2.0\n",
        "control.tar.xz": tar_xz({"control": b"Package: fixture\n"}),
        "data.tar.xz": tar_xz(files),
    }
    out = bytearray(AR_MAGIC)
    for name, data in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) & 1 else b"")
    path.write_bytes(bytes(out))
    return path
