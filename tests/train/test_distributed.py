"""Two-process gloo runs (torchrun-style env): FSDP2 and DDP against one process, sharded
checkpoints, resume on the same and on another number of processes.

Global batch is 8 sequences everywhere: 2 ranks x batch 2 x grad_accum 2 under FSDP/DDP, and
batch 8 in one process, so the loss of every step must agree within float tolerance (the
reduction order differs). DHC x2 gives the model static (``static_alpha``, ``static_beta``) and
dynamic (``dynamic_alpha``, ``dynamic_beta``, ``alpha_scale``, ``beta_scale``) connection
parameters.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from hyperfrac.train import Trainer, load_config
from hyperfrac.train.parallel import hard_exit

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6


def _overrides(data: Path, out: Path, name: str, batch: int, accum: int, *extra: str) -> list[str]:
    return [
        f"data.path={data}",
        f"out_dir={out}",
        f"name={name}",
        "data.seq_len=32",
        f"train.batch_size={batch}",
        f"train.grad_accum={accum}",
        f"train.steps={STEPS}",
        "log.interval=1",
        "log.progress=never",
        "eval.interval=3",
        "eval.max_batches=3",
        "eval.batch_size=4",
        "checkpoint.interval=3",
        "checkpoint.keep=2",
        "train.threads=1",
        "model.connection={kind: dhc, n_streams: 2}",
        *extra,
    ]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, overrides: list[str], report: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Shard

    trainer = Trainer(load_config(ROOT / "configs" / "tiny.yaml", overrides))
    reduced = []
    if trainer.cfg.train.parallel == "ddp":  # count gradient all-reduces (bucket 0 = one sync)

        def hook(state, bucket):
            if bucket.index() == 0:
                reduced.append(trainer.step)
            fut = torch.futures.Future()
            t = bucket.buffer()
            dist.all_reduce(t)
            fut.set_result(t / dist.get_world_size())
            return fut

        trainer.train_model.register_comm_hook(None, hook)
    summary = trainer.fit()
    info: dict = {"summary": summary, "reduced_at_steps": reduced, "sharding": {}}
    full = {}
    for name, p in trainer.model.named_parameters():
        if isinstance(p, DTensor):
            info["sharding"][name] = {
                "placements": [str(pl) for pl in p.placements],
                "shard0": p.placements == (Shard(0),),
                "local": list(p.to_local().shape),
                "global": list(p.shape),
            }
            full[name] = p.full_tensor().detach()  # collective
        else:
            full[name] = p.detach()
    if rank == 0:
        Path(report).write_text(json.dumps(info))
        torch.save(full, report + ".pt")
    dist.barrier()
    dist.destroy_process_group()
    hard_exit(0)  # see hard_exit: torch 2.13 sometimes aborts in interpreter teardown after DCP


def _spawn(overrides: list[str], report: Path) -> dict:
    mp.spawn(_worker, args=(_port(), overrides, str(report)), nprocs=2, join=True)
    return json.loads(report.read_text())


def _losses(run_dir: Path) -> dict[int, float]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r and "step" in r}


def _val(run_dir: Path) -> dict[int, float]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in recs if "val_loss" in r}


def _assert_close(a: dict[int, float], b: dict[int, float], steps, rel: float) -> None:
    for s in steps:
        assert a[s] == pytest.approx(b[s], rel=rel), (s, a[s], b[s])


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_dataset: Path) -> tuple[Path, dict]:
    """One process, batch 8, the reference for every distributed run; also the initial
    parameters (``train.steps=0`` equivalent: a fresh model with the same seed)."""
    out = tmp_path_factory.mktemp("single")
    cfg = load_config(ROOT / "configs" / "tiny.yaml", _overrides(tiny_dataset, out, "run", 8, 1))
    trainer = Trainer(cfg)
    init = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    final = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return out / "run", {"init": init, "final": final}


@pytest.mark.distributed
def test_fsdp_matches_single_process_and_shards_connection_params(
    tmp_path: Path, tiny_dataset: Path, single
) -> None:
    single_dir, params = single
    report = tmp_path / "fsdp.json"
    info = _spawn(_overrides(tiny_dataset, tmp_path, "fsdp", 2, 2, "train.parallel=fsdp"), report)
    run = tmp_path / "fsdp"
    _assert_close(_losses(run), _losses(single_dir), range(1, STEPS + 1), rel=1e-5)
    # validation padded so that both ranks run the same number of forwards, summed exactly
    _assert_close(_val(run), _val(single_dir), (3, 6), rel=1e-5)

    conn = {n: s for n, s in info["sharding"].items() if "_conn." in n}
    kinds = {n.rsplit(".", 1)[-1] for n in conn}
    assert kinds == {
        "static_alpha",
        "static_beta",
        "dynamic_alpha",
        "dynamic_beta",
        "alpha_scale",
        "beta_scale",
    }
    for name, s in info["sharding"].items():  # every parameter is sharded on dim 0 over 2 ranks
        assert s["shard0"], (name, s)
        if s["global"] and s["global"][0] >= 2:
            assert s["local"][0] == -(-s["global"][0] // 2), (name, s)
    assert len(info["sharding"]) == len(params["final"])

    full = torch.load(str(report) + ".pt")
    for name in conn:  # updated, and updated exactly as in one process
        assert not torch.equal(params["init"][name], params["final"][name]), name
        torch.testing.assert_close(full[name], params["final"][name], rtol=1e-4, atol=1e-6)
    ckpt = run / "checkpoints" / "step_00000006"
    assert (ckpt / "dcp" / ".metadata").is_file() and (ckpt / "COMPLETE").is_file()
    assert len(list((ckpt / "dcp").glob("*.distcp"))) == 2  # one shard file per rank


@pytest.mark.distributed
def test_fsdp_resume_equals_uninterrupted_on_two_one_and_two_processes(
    tmp_path: Path, tiny_dataset: Path, single
) -> None:
    single_dir, _ = single
    fsdp = ("train.parallel=fsdp",)
    full_run = _overrides(tiny_dataset, tmp_path, "through", 2, 2, *fsdp)
    _spawn(full_run, tmp_path / "through.json")
    through = _losses(tmp_path / "through")

    # 2 ranks: stop after step 3 (sharded checkpoint), a fresh launch continues to the end
    stopped = _overrides(tiny_dataset, tmp_path, "resumed", 2, 2, *fsdp, "train.stop_at=3")
    _spawn(stopped, tmp_path / "a.json")
    assert not (tmp_path / "resumed" / "checkpoints" / "step_00000006").exists()
    resumed = _overrides(tiny_dataset, tmp_path, "resumed", 2, 2, *fsdp)
    info = _spawn(resumed, tmp_path / "b.json")
    assert info["summary"]["step"] == STEPS
    _assert_close(_losses(tmp_path / "resumed"), through, range(4, STEPS + 1), rel=1e-6)
    full_through = torch.load(str(tmp_path / "through.json") + ".pt")
    full_resumed = torch.load(str(tmp_path / "b.json") + ".pt")
    for name, p in full_through.items():
        torch.testing.assert_close(full_resumed[name], p, rtol=1e-6, atol=1e-7)

    # 1 process (no FSDP, batch 4 x accum 2 = same global batch) from the 2-rank step-3 shards
    one = tmp_path / "one" / "run" / "checkpoints"
    one.mkdir(parents=True)
    shutil.copytree(tmp_path / "resumed" / "checkpoints" / "step_00000003", one / "step_00000003")
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        _overrides(tiny_dataset, tmp_path / "one", "run", 4, 2, *fsdp),
    )
    trainer = Trainer(cfg)
    assert trainer.step == 3
    trainer.fit()
    _assert_close(_losses(tmp_path / "one" / "run"), through, range(4, STEPS + 1), rel=1e-5)
    _assert_close(_losses(tmp_path / "one" / "run"), _losses(single_dir), range(4, 7), rel=1e-5)
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p.detach(), full_through[name], rtol=1e-4, atol=1e-6)

    # and the other way: 1 process writes sharded step-3 checkpoint, 2 FSDP ranks continue
    up = ("checkpoint.format=sharded",)
    first = load_config(
        ROOT / "configs" / "tiny.yaml",
        _overrides(tiny_dataset, tmp_path, "up", 4, 2, *up, "train.stop_at=3"),
    )
    Trainer(first).fit()
    _spawn(_overrides(tiny_dataset, tmp_path, "up", 2, 2, *fsdp), tmp_path / "up.json")
    _assert_close(_losses(tmp_path / "up"), through, range(1, STEPS + 1), rel=1e-5)


@pytest.mark.distributed
def test_ddp_grad_accum_matches_single_and_reduces_once_per_step(
    tmp_path: Path, tiny_dataset: Path, single
) -> None:
    single_dir, _ = single
    info = _spawn(_overrides(tiny_dataset, tmp_path, "ddp", 2, 2), tmp_path / "ddp.json")
    _assert_close(_losses(tmp_path / "ddp"), _losses(single_dir), range(1, STEPS + 1), rel=1e-5)
    _assert_close(_val(tmp_path / "ddp"), _val(single_dir), (3, 6), rel=1e-5)
    # one all-reduce per optimizer step (on its last micro-batch), not one per micro-batch
    assert info["reduced_at_steps"] == list(range(STEPS))
    ckpt = tmp_path / "ddp" / "checkpoints" / "step_00000006"  # full format, written by rank 0
    assert (ckpt / "model.pt").is_file() and not (ckpt / "dcp").exists()


@pytest.mark.distributed
@pytest.mark.parametrize(
    "spec",
    [
        "{kind: mhc, n_streams: 4, flavor: deepseek-v4}",
        "{kind: mhc-lite, n_streams: 3}",
        "{kind: kromhc, n_streams: 4}",
        "{kind: attnres, block_size: 2}",
    ],
    ids=["mhc-v4", "mhc-lite", "kromhc", "attnres"],
)
def test_fsdp_trains_the_2026_kinds_as_one_process(
    tmp_path: Path, tiny_dataset: Path, spec: str
) -> None:
    """FSDP2 on 2 ranks shards every parameter of the 2026 connections on dim 0 (no 0-d
    parameter) and trains them exactly as one process does (same global batch)."""
    conn = f"model.connection={spec}"
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml", [*_overrides(tiny_dataset, tmp_path, "one", 8, 1), conn]
    )
    one = Trainer(cfg)
    init = {n: p.detach().clone() for n, p in one.model.named_parameters()}
    one.fit()
    report = tmp_path / "fsdp.json"
    over = _overrides(tiny_dataset, tmp_path, "fsdp", 2, 2, "train.parallel=fsdp", conn)
    info = _spawn(over, report)
    _assert_close(_losses(tmp_path / "fsdp"), _losses(tmp_path / "one"), range(1, STEPS + 1),
                  rel=1e-5)
    sharded = {n: s for n, s in info["sharding"].items() if "_conn." in n}
    assert sharded and all(s["shard0"] for s in sharded.values())
    full = torch.load(str(report) + ".pt", weights_only=True)
    conn = {n: p.detach() for n, p in one.model.named_parameters() if "_conn." in n}
    moved = {n for n, p in conn.items() if not torch.equal(init[n], p)}
    assert moved and ("attnres" not in spec or "blocks.0.attn_conn.final_query" in moved)
    for name, p in conn.items():  # every connection parameter exactly as in one process
        torch.testing.assert_close(full[name], p, rtol=1e-4, atol=1e-5, msg=name)
