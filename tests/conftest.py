"""Shared pytest set-up: ``--runslow`` un-skips tests marked ``slow``."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _fixture_documents(n_docs: int = 4, paragraphs: int = 24, seed: int = 0):
    """A few KB of deterministic pseudo-English with learnable structure (no network)."""
    import random

    from hyperfrac.data.corpus import Document

    rng = random.Random(seed)
    words = (
        "the king queen speaks of love and war in a castle where night falls upon "
        "fair lords ladies who sing sweet songs to the moon while stars shine bright"
    ).split()
    docs = []
    for d in range(n_docs):
        paras = []
        for p in range(paragraphs):
            sents = []
            for _ in range(rng.randint(2, 4)):
                n = rng.randint(5, 12)
                sents.append(" ".join(rng.choice(words) for _ in range(n)).capitalize() + ".")
            paras.append(f"Part {d}.{p}. " + " ".join(sents))
        docs.append(Document("src" + str(d % 2), f"doc{d}", "\n\n".join(paras) + "\n"))
    return docs


@pytest.fixture(scope="session")
def fixture_documents():
    """``fixture_documents(n_docs=4, paragraphs=24, seed=0) -> list[Document]``."""
    return _fixture_documents


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A prepared dataset (vocab 512) from :func:`fixture_documents`, shared by the session."""
    from hyperfrac.data.prepare import prepare_documents

    out = tmp_path_factory.mktemp("data") / "fixture-bpe512"
    return prepare_documents(
        _fixture_documents(n_docs=6, paragraphs=60),
        out,
        vocab_size=512,
        chunk_bytes=512,
        val_every=10,
        val_offset=5,
        progress=lambda msg: None,
    )
