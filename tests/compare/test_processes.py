"""A comparison under signals and concurrency: one compare per folder, the worker dies with its
parent, and Ctrl-C then re-run gives the results of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hyperfrac.cli import main
from hyperfrac.compare.processes import CompareLocked, FolderLock


def _wait_for(cond, timeout: float = 60.0, what: str = "condition") -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by a dead parent's reaper) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_second_compare_on_a_folder_is_refused_with_the_holders_pid(tmp_path: Path, capsys):
    with FolderLock(tmp_path):
        with pytest.raises(CompareLocked, match=f"pid {os.getpid()}"):
            FolderLock(tmp_path).__enter__()
        assert main(["compare", "smoke", "--out", str(tmp_path), "--no-estimate"]) == 2
        err = capsys.readouterr().err
        assert f"in use by another hyperfrac compare (pid {os.getpid()})" in err
    with FolderLock(tmp_path):  # released on exit: the folder can be taken again
        pass


def test_worker_dies_with_its_parent(tmp_path: Path):
    pidfile = tmp_path / "child.pid"
    child = (f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); "
             "time.sleep(120)")
    parent = ("import sys; from hyperfrac.compare.processes import run_child; "
              f"run_child([sys.executable, '-c', {child!r}])")
    proc = subprocess.Popen([sys.executable, "-c", parent])
    _wait_for(lambda: pidfile.is_file() and pidfile.read_text(), what="the worker")
    pid = int(pidfile.read_text())
    proc.kill()  # kill -9 of the parent: no cleanup code of its own runs
    proc.wait()
    _wait_for(lambda: not _alive(pid), timeout=10, what="the worker to die")


def _preset(tmp_path: Path, data: Path) -> Path:
    spec = {
        "name": "sig",
        "arms": ["residual", "dhc2=dhc,n_streams=2"],
        "seeds": [0],
        "base": {
            "model": {"preset": "tiny", "dim": 32, "n_heads": 2},
            "data": {"path": str(data), "seq_len": 32},
            "optim": {"lr": 1e-2, "warmup_steps": 2},
            "train": {"steps": 120, "batch_size": 4, "threads": 1},
            "eval": {"interval": 10, "max_batches": 2, "batch_size": 8},
            "checkpoint": {"interval": 4, "keep": 2},
            "log": {"interval": 10, "progress": "never"},
        },
        "analysis": {"windows": 2, "max_tokens": 64, "mc_items": 8},
    }
    path = tmp_path / "sig.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _compare(preset: Path, out: Path, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hyperfrac", "compare", str(preset), "--out", str(out),
           "--no-estimate", "--eval-batches", "2"]
    # output to a file: a pipe nobody reads could fill and block the run
    log = open(out.parent / f"{out.name}.log", "a")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
                            text=True, **kw)


def _log(out: Path) -> str:
    return (out.parent / f"{out.name}.log").read_text()


def _final(out: Path) -> dict:
    """Every run's summary without its timings (which differ by nature)."""
    assert (out / "results.json").is_file()
    return {p.parent.name: {k: v for k, v in json.loads(p.read_text()).items()
                            if k != "train_time_s"}
            for p in sorted((out / "runs").glob("*/summary.json"))}


def test_ctrl_c_then_rerun_equals_an_uninterrupted_run(tmp_path: Path, tiny_dataset: Path):
    preset = _preset(tmp_path, tiny_dataset)
    through = _compare(preset, tmp_path / "through")
    assert through.wait(timeout=600) == 0, _log(tmp_path / "through")

    out = tmp_path / "interrupted"
    proc = _compare(preset, out)
    first = out / "runs" / "residual-seed0" / "checkpoints"
    _wait_for(lambda: first.is_dir() and any(first.glob("step_*")), timeout=300,
              what="a checkpoint of the first arm")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
    assert proc.wait(timeout=60) == 130
    err = _log(out)
    assert "re-run the same command to resume" in err, err
    assert not (out / "results.json").exists()
    assert not (out / "runs" / "dhc2-seed0" / "summary.json").exists()  # stopped mid-way
    again = _compare(preset, out)
    assert again.wait(timeout=600) == 0, _log(out)
    assert _final(out) == _final(tmp_path / "through")
