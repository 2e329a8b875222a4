"""Checkpoints are safe to open, verified on load and crash-proof in rotation (issue 11).

Checkpoints are built with a tiny module and hand-made state (no trainer): the full format
through ``save_checkpoint`` and the sharded one through ``save_sharded`` + ``commit_checkpoint``
as the trainer does.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shlex
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hyperfrac.train import checkpoint as ckpt
from hyperfrac.train.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    begin_checkpoint,
    commit_checkpoint,
    complete_checkpoints,
    convert_legacy_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_sharded,
    read_marker,
    save_checkpoint,
    save_sharded,
    save_state,
    verify_checkpoint,
    write_files,
)
from hyperfrac.train.checkpoint.manifest import hash_file, write_marker

# ---------------------------------------------------------------------------------- fixtures


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))


def _trained(seed: int = 0):
    """(model, AdamW after one step, LambdaLR) — the objects a trainer checkpoints."""
    model = _model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    model(torch.randn(3, 8)).square().mean().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def _train_state(step: int) -> dict:
    """Shaped like ``Trainer.train_state()`` (loader and monitor state as their classes give)."""
    torch.manual_seed(step)
    np.random.seed(step)
    random.seed(step)
    np.random.standard_normal()  # leaves a cached gaussian in the numpy state
    return {
        "step": step,
        "tokens": 1024 * step,
        "skipped_steps": 0,
        "consecutive_skips": 0,
        "loader": {"epoch": 0, "pos": 7 * step, "seed": 0, "seq_len": 16, "global_batch": 4},
        "monitor": {"history": [3.25, 3.0, 2.5]},
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": None,
        },
    }


def _save_full(ckpt_dir: Path, step: int, *, keep: int = 5, healthy: bool = True, seed=None):
    model, opt, sched = _trained(step if seed is None else seed)
    return save_checkpoint(
        ckpt_dir,
        step,
        model=model,
        optim_state={"optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
        train_state=_train_state(step),
        config_yaml=f"step: {step}\n",
        keep=keep,
        healthy=healthy,
    )


def _save_sharded(ckpt_dir: Path, step: int, *, keep: int = 5) -> Path:
    model, opt, sched = _trained(step)
    tmp = begin_checkpoint(ckpt_dir, step)
    save_sharded(tmp, model, opt)
    files = write_files(
        tmp,
        {
            "scheduler.pt": lambda p: save_state(sched.state_dict(), p),
            "train_state.pt": lambda p: save_state(_train_state(step), p),
            "config.yaml": lambda p: p.write_text(f"step: {step}\n"),
        },
    )
    return commit_checkpoint(ckpt_dir, step, tmp, [*files, "dcp"], keep)


class Payload:
    """Unpickling this runs ``touch MARKER`` (what a malicious run folder would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _rehash(folder: Path) -> None:
    """Rewrite COMPLETE for the files as they are now (an attacker controls it too)."""
    rec = read_marker(folder)
    write_marker(folder, rec["step"], list(rec["files"]), healthy=rec["healthy"])


def _write_old_marker(folder: Path) -> None:
    """The names-only COMPLETE that hyperfrac 0.1.0 wrote."""
    rec = read_marker(folder)
    (folder / "COMPLETE").write_text(
        json.dumps({"step": rec["step"], "files": sorted(rec["files"])})
    )


def _flip_bytes(path: Path, n: int = 400) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, min(mid + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------ safe loading


def test_every_file_loads_with_weights_only_and_train_state_round_trips_exactly(tmp_path):
    path = _save_full(tmp_path, 3)
    for f in path.glob("*.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(f) == [], f.name
        torch.load(f, weights_only=True)  # plain torch can read every file safely
    want = _train_state(3)
    got = load_checkpoint(path)["train_state"]
    np_want, np_got = want["rng"]["numpy"], got["rng"]["numpy"]
    assert type(np_got) is tuple and len(np_got) == len(np_want) == 5
    assert np_got[0] == np_want[0] and np_got[2:] == np_want[2:]
    assert np_got[1].dtype == np.uint32 and np.array_equal(np_got[1], np_want[1])
    assert got["rng"]["python"] == want["rng"]["python"]
    assert type(got["rng"]["python"]) is tuple and type(got["rng"]["python"][1]) is tuple
    assert torch.equal(got["rng"]["torch"], want["rng"]["torch"])
    assert got["loader"] == want["loader"] and got["monitor"] == want["monitor"]
    # restoring the states continues every generator exactly where it was
    np.random.set_state(np_got)
    random.setstate(got["rng"]["python"])
    a = (np.random.standard_normal(), np.random.randint(1 << 30), random.random())
    np.random.set_state(np_want)
    random.setstate(want["rng"]["python"])
    assert a == (np.random.standard_normal(), np.random.randint(1 << 30), random.random())


def test_model_and_optimizer_state_round_trip(tmp_path):
    model, opt, sched = _trained(3)
    loaded = load_checkpoint(_save_full(tmp_path, 3))
    for (k, a), b in zip(model.state_dict().items(), loaded["model"].values(), strict=True):
        assert torch.equal(a, b), k
    fresh, fresh_opt, fresh_sched = _trained(9)
    fresh.load_state_dict(loaded["model"])
    fresh_opt.load_state_dict(loaded["optim"]["optimizer"])
    fresh_sched.load_state_dict(loaded["optim"]["scheduler"])
    assert fresh_opt.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    assert fresh_sched.state_dict() == sched.state_dict()
    for s_a, s_b in zip(opt.state.values(), fresh_opt.state.values(), strict=True):
        assert all(torch.equal(s_a[k], s_b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))


@pytest.mark.parametrize("name", ["model.pt", "optim.pt", "train_state.pt", "scheduler.pt"])
def test_pickle_payload_in_a_run_folder_file_is_refused_and_never_run(tmp_path, name):
    marker = tmp_path / "MARKERFILE"
    save = _save_sharded if name == "scheduler.pt" else _save_full
    path = save(tmp_path / "ckpt", 2)
    torch.save({"state": Payload(marker), "step": 2}, path / name)
    _rehash(path)  # the hashes match: only safe loading stands between the file and os.system
    with pytest.raises(UnsafeCheckpointError, match=r"refuses to unpickle.*it may run code"):
        load_checkpoint(path)
    assert not marker.exists()
    # the same file really runs the payload under plain pickle (so the check above can fail)
    torch.load(path / name, weights_only=False)
    assert marker.exists()


def test_payload_in_a_numpy_object_array_is_refused(tmp_path):
    marker = tmp_path / "MARKERFILE"
    path = _save_full(tmp_path / "ckpt", 2)
    state = _train_state(2)
    state["rng"]["numpy"] = ("MT19937", np.array([Payload(marker)], dtype=object), 0, 0, 0.0)
    torch.save(state, path / "train_state.pt")
    _rehash(path)
    with pytest.raises(UnsafeCheckpointError, match="refuses to unpickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_payload_in_dcp_metadata_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "MARKERFILE"
    path = _save_sharded(tmp_path / "ckpt", 2)
    model, opt, _ = _trained(5)
    load_sharded(path, model, opt)  # the genuine metadata passes the allow-list
    ref, _, _ = _trained(2)
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), model.parameters(), strict=True))
    (path / "dcp" / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    _rehash(path)
    load_checkpoint(path)  # the small files are fine ...
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata.*refuses to unpickle"):
        load_sharded(path, model, opt)  # ... and DCP's pickle.load is never reached
    assert not marker.exists()


def test_payload_in_a_dcp_entry_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "MARKERFILE"
    model, opt, _ = _trained(2)
    opt.param_groups[0]["extra"] = Payload(marker)  # DCP stores non-tensors as pickled bytes
    tmp = begin_checkpoint(tmp_path / "ckpt", 2)
    save_sharded(tmp, model, opt)
    path = commit_checkpoint(tmp_path / "ckpt", 2, tmp, ["dcp"], keep=2)
    fresh, fresh_opt, _ = _trained(5)
    fresh_opt.param_groups[0]["extra"] = 0
    with pytest.raises(
        UnsafeCheckpointError, match=r"refuses to unpickle.*param_groups.*posix.system"
    ):
        load_sharded(path, fresh, fresh_opt)
    assert not marker.exists()


def test_malformed_tagged_value_is_refused_not_decoded(tmp_path):
    from hyperfrac.train.checkpoint.safe_io import STATE_KEY, TAG_KEY

    bad = {
        TAG_KEY: "ndarray",
        "dtype": "O",
        "shape": [1],
        "data": torch.zeros(8, dtype=torch.uint8),
    }
    torch.save({STATE_KEY: 1, "payload": {"x": bad}}, tmp_path / "train_state.pt")
    with pytest.raises(CheckpointError, match=r"train_state.pt is unreadable.*OBJECT"):
        ckpt.load_state(tmp_path / "train_state.pt")


def test_saving_state_that_needs_pickle_is_refused_up_front(tmp_path):
    from collections import deque

    with pytest.raises(CheckpointError, match=r"train_state.pt\['monitor'\]\['history'\].*deque"):
        save_state({"monitor": {"history": deque([1.0])}}, tmp_path / "train_state.pt")
    assert not (tmp_path / "train_state.pt").exists()


def test_old_run_folder_loads_with_a_warning(tmp_path):
    """hyperfrac 0.1.0 wrote raw numpy RNG state and a names-only COMPLETE."""
    path = _save_full(tmp_path, 4)
    state = _train_state(4)
    torch.save(state, path / "train_state.pt")
    _write_old_marker(path)
    with pytest.warns(UserWarning, match="cannot be verified"):
        got = load_checkpoint(path)["train_state"]
    assert np.array_equal(got["rng"]["numpy"][1], state["rng"]["numpy"][1])
    assert got["rng"]["python"] == state["rng"]["python"]


def test_convert_legacy_checkpoint_makes_a_pickle_only_folder_safe_and_verified(tmp_path):
    path = _save_full(tmp_path / "run" / "checkpoints", 4)
    state = _train_state(4)
    state["extra"] = np.zeros((0, 3), dtype=np.float32)  # needs pickle's `bytes` global
    torch.save(state, path / "train_state.pt")
    _write_old_marker(path)
    with pytest.raises(UnsafeCheckpointError, match="convert_legacy_checkpoint"):
        load_checkpoint(path, verify=False)
    assert convert_legacy_checkpoint(tmp_path / "run") == [path / "train_state.pt"]
    assert read_marker(path)["verifiable"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = load_checkpoint(path)["train_state"]
    assert got["extra"].shape == (0, 3) and got["extra"].dtype == np.float32


# ------------------------------------------------------------------------------- verification


def test_complete_records_size_and_sha256_of_every_file_including_dcp(tmp_path):
    path = _save_sharded(tmp_path, 2)
    rec = read_marker(path)
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {
        "COMPLETE"
    }
    assert set(rec["files"]) == on_disk and "dcp/.metadata" in on_disk
    for rel, want in rec["files"].items():
        assert want == hash_file(path / rel), rel
    assert rec["step"] == 2 and rec["healthy"] is True


def _damage(kind: str, newest: Path, older: Path) -> str:
    """Damage ``newest`` one way; returns the file name the error must name."""
    if kind == "bitflip":
        _flip_bytes(newest / "model.pt")
        return "model.pt"
    if kind == "truncate":
        f = newest / "optim.pt"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        return "optim.pt"
    if kind == "delete":
        (newest / "train_state.pt").unlink()
        return "train_state.pt"
    if kind == "stale":  # same size, older weights
        shutil.copy(older / "model.pt", newest / "model.pt")
        return "model.pt"
    if kind == "dcp-shard":
        shard = next((newest / "dcp").glob("*.distcp"))
        _flip_bytes(shard, 16)
        return shard.name
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["bitflip", "truncate", "delete", "stale", "dcp-shard"])
def test_damaged_newest_checkpoint_is_named_and_skipped_loudly(tmp_path, kind):
    save = _save_sharded if kind == "dcp-shard" else _save_full
    older, newest = save(tmp_path, 2), save(tmp_path, 4)
    assert latest_checkpoint(tmp_path) == newest
    name = _damage(kind, newest, older)
    with pytest.raises(CheckpointError, match=name):
        verify_checkpoint(newest)
    with pytest.raises(CheckpointError, match=name):
        load_checkpoint(newest)
    with pytest.warns(UserWarning, match=rf"step_00000004.*{name}.*Using .*step_00000002"):
        assert latest_checkpoint(tmp_path) == older
    assert load_checkpoint(older)["train_state"]["step"] == 2


@pytest.mark.parametrize("kind", ["bitflip", "truncate", "delete"])
def test_no_verifying_checkpoint_stops_instead_of_starting_afresh(tmp_path, kind):
    only = _save_full(tmp_path, 2)
    name = _damage(kind, only, only)
    with pytest.raises(CheckpointError, match=rf"none of the 1 checkpoint.*{name}.*resume=never"):
        latest_checkpoint(tmp_path)


def test_folder_copied_over_another_step_is_refused(tmp_path):
    older = _save_full(tmp_path, 2)
    newest = _save_full(tmp_path, 4)
    shutil.rmtree(newest)
    shutil.copytree(older, newest)  # every file and COMPLETE consistent, but for step 2
    with pytest.warns(UserWarning, match="for step 2, not 4"):
        assert latest_checkpoint(tmp_path) == older


def test_step_folders_without_marker_raise_and_an_empty_folder_is_a_fresh_start(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "step_00000002").mkdir()
    with pytest.raises(CheckpointError, match="no COMPLETE marker"):
        latest_checkpoint(tmp_path)


# ------------------------------------------------------------------------ health and rotation


def test_nonfinite_weights_are_not_saved_as_healthy(tmp_path):
    model, opt, sched = _trained(1)
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    kw = dict(
        model=model,
        optim_state={"optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
        train_state=_train_state(1),
        config_yaml="",
    )
    with pytest.raises(CheckpointError, match=r"'2.weight' holds NaN or inf.*healthy=False"):
        save_checkpoint(tmp_path, 1, **kw)
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary folder
    path = save_checkpoint(tmp_path, 1, **kw, healthy=False)
    assert read_marker(path)["healthy"] is False
    with pytest.raises(CheckpointError, match="marked unhealthy"):
        latest_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path, healthy=False) == path


def test_commit_records_health_for_the_sharded_format(tmp_path):
    model, opt, _ = _trained(1)
    tmp = begin_checkpoint(tmp_path, 1)
    save_sharded(tmp, model, opt)
    path = commit_checkpoint(tmp_path, 1, tmp, ["dcp"], keep=2, healthy=False)
    assert read_marker(path)["healthy"] is False
    assert latest_checkpoint(tmp_path, healthy=False) == path


def test_rotation_never_deletes_the_newest_healthy_checkpoint(tmp_path):
    good = _save_full(tmp_path, 1, keep=2)
    for step in (2, 3, 4):
        _save_full(tmp_path, step, keep=2, healthy=False)
    names = [p.name for p in complete_checkpoints(tmp_path)]
    assert names == ["step_00000001", "step_00000003", "step_00000004"]
    with pytest.warns(UserWarning, match="step_00000004.*unhealthy"):
        assert latest_checkpoint(tmp_path) == good
    assert latest_checkpoint(tmp_path, healthy=False).name == "step_00000004"
    _save_full(tmp_path, 5, keep=2)  # a healthy one again: the old good one may now go
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]


def test_kill_during_rotation_leaves_no_complete_folder_with_files_missing(tmp_path, monkeypatch):
    _save_full(tmp_path, 1, keep=2)
    _save_full(tmp_path, 2, keep=2)
    deleted: list[Path] = []

    def killed_midway(path, *a, **k):  # delete half the files, then the process dies
        deleted.append(Path(path))
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        for f in files[: len(files) // 2]:
            f.unlink()
        raise KeyboardInterrupt("killed during rotation (injected)")

    monkeypatch.setattr(ckpt.folders.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        _save_full(tmp_path, 3, keep=2)  # rotation deletes step 1
    monkeypatch.undo()
    assert deleted and deleted[0].name.startswith(".trash-step_00000001")
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    for folder in complete_checkpoints(tmp_path):
        verify_checkpoint(folder)  # every folder that looks complete is complete
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_checkpoint(tmp_path).name == "step_00000003"
    assert list(tmp_path.glob(".trash-*"))  # the half-deleted folder is trash ...
    _save_full(tmp_path, 4, keep=2)
    assert not list(tmp_path.glob(".trash-*")) and not list(tmp_path.glob(".tmp-*"))  # ... gone


def test_resaving_a_step_replaces_it_atomically(tmp_path):
    _save_full(tmp_path, 2, seed=0)
    path = _save_full(tmp_path, 2, seed=1)
    verify_checkpoint(path)
    want, _, _ = _trained(1)
    got = load_checkpoint(path)["model"]
    assert all(torch.equal(a, got[k]) for k, a in want.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000002"]
