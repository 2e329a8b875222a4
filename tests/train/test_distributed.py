"""Two-process gloo DDP: same losses as one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from hyperfrac.train import Trainer, load_config

ROOT = Path(__file__).resolve().parents[2]


def _overrides(data: Path, out: Path, batch: int) -> list[str]:
    return [
        f"data.path={data}",
        f"out_dir={out}",
        "name=run",
        "data.seq_len=32",
        f"train.batch_size={batch}",
        "train.steps=3",
        "log.interval=1",
        "log.progress=never",
        "eval.interval=3",
        "eval.max_batches=2",
        "eval.batch_size=4",
        "train.threads=1",
        "model.connection={kind: dhc, n_streams: 2}",
    ]


def _worker(rank: int, port: int, data: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    cfg = load_config(ROOT / "configs" / "tiny.yaml", _overrides(Path(data), Path(out), 4))
    Trainer(cfg).fit()
    import torch.distributed as dist

    dist.destroy_process_group()


@pytest.mark.distributed
def test_ddp_two_ranks_match_single_process(tmp_path: Path, tiny_dataset: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tiny_dataset), str(tmp_path / "ddp")), nprocs=2, join=True)
    single = Trainer(
        load_config(ROOT / "configs" / "tiny.yaml", _overrides(tiny_dataset, tmp_path / "one", 8))
    )
    single.fit()
    recs = [
        json.loads(x) for x in (tmp_path / "ddp" / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    ddp = [(r["loss"], r["grad_norm"]) for r in recs if "loss" in r]
    one = [(r["loss"], r["grad_norm"]) for r in single.history]
    assert len(ddp) == 3
    for (a, ga), (b, gb) in zip(ddp, one, strict=True):
        assert a == pytest.approx(b, rel=1e-5) and ga == pytest.approx(gb, rel=1e-4)
    assert (tmp_path / "ddp" / "run" / "checkpoints" / "step_00000003" / "COMPLETE").is_file()
