"""Launchers: runs as submitit jobs (its local executor, no SLURM), runs under torchrun, resume
across launchers, the job plumbing and the progress line (issue 13)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

import hyperfrac.compare.driver as driver
from hyperfrac.compare import load_spec, run_compare, spec_from_dict
from hyperfrac.compare.launchers import (
    Job,
    LocalLauncher,
    SubmititLauncher,
    make_launcher,
    worker_command,
)
from hyperfrac.compare.progress import Progress, RunProgress, clock

pytest.importorskip("matplotlib")


def tiny(data: Path, seeds=(0,), steps=4):
    return spec_from_dict({
        "name": "tiny", "arms": ["residual", "dhc2=dhc,n_streams=2"], "seeds": list(seeds),
        "base": {
            "model": {"preset": "tiny", "dim": 32, "n_heads": 2},
            "data": {"path": str(data), "seq_len": 32},
            "optim": {"lr": 1e-2, "warmup_steps": 1},
            "train": {"steps": steps, "batch_size": 4, "threads": 1},
            "eval": {"interval": 2, "max_batches": 1, "batch_size": 8},
            "checkpoint": {"interval": 2, "keep": 1},
            "log": {"interval": 1, "progress": "never"},
        },
        "analysis": {"windows": 2, "max_tokens": 64},
    })


def _arm_infos(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text())
            for p in sorted((out / "runs").glob("*/compare_arm.json"))}


def test_worker_command_and_launcher_arguments(tmp_path):
    cmd = worker_command(Path("c.yaml"))
    assert cmd == [sys.executable, "-m", "hyperfrac.compare.worker", "c.yaml"]
    tr = worker_command(Path("c.yaml"), nproc=4)
    assert tr[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert tr[-3:] == ["-m", "hyperfrac.compare.worker", "c.yaml"]
    assert isinstance(make_launcher("local", out=tmp_path), LocalLauncher)
    sub = make_launcher("submitit", out=tmp_path, cluster="local",
                        parameters={"timeout_min": 5})
    assert isinstance(sub, SubmititLauncher) and sub.folder == tmp_path / "submitit"
    for kw, msg in (({"name": "k8s"}, "launcher"), ({"name": "local", "nproc": 0}, "nproc"),
                    ({"name": "local", "nproc": 2, "isolate": False}, "in-process"),
                    ({"name": "submitit", "isolate": False}, "in-process"),
                    ({"name": "local", "cluster": "local"}, "submitit"),
                    ({"name": "submitit", "cluster": "debug"}, "cluster")):
        name = kw.pop("name")
        with pytest.raises(ValueError, match=msg):
            make_launcher(name, out=tmp_path, **kw)


def test_submitit_job_plumbing(tmp_path, monkeypatch):
    """The submitit launcher's submit / wait / done / failure path on its local executor, with
    job bodies that exit at once (one succeeds, one fails)."""
    pytest.importorskip("submitit")
    import hyperfrac.compare.launchers as launchers

    class Cfg:
        def __init__(self, name):
            self.name, self.run_dir = name, tmp_path / name

    def fake_cmd(path, nproc=1):
        return [sys.executable, "-c", f"import sys; sys.exit({0 if path.stem == 'a' else 3})"]

    monkeypatch.setattr(launchers, "worker_command", fake_cmd)
    jobs = [Job(0, None, Cfg(n), "fp", tmp_path / f"{n}.yaml") for n in ("a", "b")]
    prog = Progress([RunProgress(n, tmp_path / n, 1) for n in ("a", "b")], tty=False,
                    log=lambda m: None)
    seen: list[str] = []
    launcher = SubmititLauncher(folder=tmp_path / "sub", cluster="local", poll_s=0.05)
    with pytest.raises(RuntimeError, match=r"1 of 2 jobs failed.*b \(job"):
        launcher.launch(jobs, lambda j: seen.append(j.name), prog)
    assert seen == ["a"] and prog.done_runs == 1


def test_compare_through_submitit_local_executor_then_resume_locally(tiny_dataset, tmp_path,
                                                                   monkeypatch):
    pytest.importorskip("submitit")
    spec = tiny(tiny_dataset)
    res = run_compare(spec, tmp_path, launcher="submitit", submitit_cluster="local",
                      submitit_parameters={"timeout_min": 10}, estimate=False, figures=False,
                      eval_batches=1, log=lambda m: None)
    infos = _arm_infos(tmp_path)
    assert set(infos) == {"residual-seed0", "dhc2-seed0"}
    assert all(i["finished"] and i["launcher"] == "submitit" for i in infos.values())
    assert all(r["step"] == 4 for r in res["runs"])
    assert all(i["peak_rss_mb"] and i["peak_rss_mb"] > 50 for i in infos.values())
    assert list((tmp_path / "submitit").glob("*_log.out"))  # submitit's own job logs
    # the same comparison under the local launcher: nothing is retrained
    monkeypatch.setattr(driver, "train_in_process", lambda cfg: pytest.fail("retrained"))
    again = run_compare(spec, tmp_path, isolate=False, estimate=False, figures=False,
                        eval_batches=1, log=lambda m: None)
    assert again["arms"][1]["stats"]["val_bpb"]["mean"] == res["arms"][1]["stats"]["val_bpb"][
        "mean"]
    assert _arm_infos(tmp_path) == infos


@pytest.mark.slow
def test_smoke_preset_end_to_end_through_submitit_and_resume(tmp_path, monkeypatch):
    """The smoke preset (2 arms, 60 steps on the default corpus) as submitit local jobs; then
    a run interrupted under the local launcher resumes under submitit."""
    pytest.importorskip("submitit")
    real = driver.train_in_process
    spec = load_spec("smoke")
    res = run_compare(spec, tmp_path, launcher="submitit", submitit_cluster="local",
                      estimate=False, log=lambda m: None)
    assert {r["arm"] for r in res["runs"]} == {"residual", "dhc2"}
    assert all(r["step"] == 60 for r in res["runs"])
    assert (tmp_path / "report.html").is_file()
    infos = _arm_infos(tmp_path)
    # resume: a re-run trains nothing and reports the same numbers
    monkeypatch.setattr(driver, "train_in_process", lambda cfg: pytest.fail("retrained"))
    again = run_compare(spec, tmp_path, launcher="submitit", submitit_cluster="local",
                        estimate=False, figures=False, log=lambda m: None)
    assert _arm_infos(tmp_path) == infos
    assert [a["stats"]["val_bpb"]["mean"] for a in again["arms"]] == [
        a["stats"]["val_bpb"]["mean"] for a in res["arms"]]
    # a second seed interrupted locally after its first checkpoint, finished through submitit
    two = spec.__class__(**{**spec.__dict__, "seeds": [0, 1]})

    def interrupted(cfg):
        cfg.train.stop_at = 30
        real(cfg)
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "train_in_process", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_compare(two, tmp_path, isolate=False, estimate=False, figures=False,
                    log=lambda m: None)
    final = run_compare(two, tmp_path, launcher="submitit", submitit_cluster="local",
                        estimate=False, figures=False, log=lambda m: None)
    assert all(r["step"] == 60 for r in final["runs"]) and len(final["runs"]) == 4
    log = (tmp_path / "runs" / "residual-seed1" / "metrics.jsonl").read_text()
    assert '"step": 30' in log and '"step": 60' in log


@pytest.mark.distributed
def test_nproc_per_node_trains_under_torchrun_and_is_part_of_the_fingerprint(tiny_dataset,
                                                                            tmp_path):
    spec = tiny(tiny_dataset, steps=2)
    spec = spec.__class__(**{**spec.__dict__, "arms": spec.arms[:1]})
    res = run_compare(spec, tmp_path, nproc_per_node=2, estimate=False, figures=False,
                      eval_batches=1, log=lambda m: None)
    info = _arm_infos(tmp_path)["residual-seed0"]
    assert info["finished"] and info["world_size"] == 2
    # two ranks x 4 sequences x 32 tokens per step
    assert res["runs"][0]["tokens"] == 2 * 2 * 4 * 32
    with pytest.raises(ValueError, match="nproc-per-node"):
        run_compare(spec, tmp_path, estimate=False, figures=False, log=lambda m: None)


def test_progress_counts_runs_reads_steps_and_estimates(tmp_path, monkeypatch):
    import hyperfrac.compare.progress as P

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
    (a / "metrics.jsonl").write_text('{"step": 1, "loss": 1}\n')  # resumed at step 1
    now = [100.0]
    monkeypatch.setattr(P.time, "perf_counter", lambda: now[0])
    lines: list[str] = []
    prog = Progress([RunProgress("a", a, 10, start=1), RunProgress("b", b, 10)],
                    finished=2, tty=False, log=lines.append, estimate_s=99.0)
    assert prog.total_runs == 4 and prog.done_runs == 2
    assert prog.eta_s() == 99.0  # nothing measured yet: the estimate
    with (a / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 1}\n{"step": 5, "val_bpb": 2}\n')
    now[0] = 140.0  # 4 steps of a in 40 s; 15 steps left -> 150 s
    assert prog.steps(prog.runs[0]) == 5 and prog.eta_s() == pytest.approx(150.0)
    prog.start("a")
    assert lines[-1] == "[3/4] training a"
    prog.finish("a")  # a's 10 steps done: 10 - 1 = 9 in 40 s, 10 left -> 44.4 s
    assert prog.done_runs == 3 and "3/4 runs done" in lines[-1]
    assert prog.eta_s() == pytest.approx(10 * 40 / 9)
    assert clock(3725) == "1:02:05" and clock(65) == "1:05" and clock(None) == "?"
    # on a terminal: one line redrawn in place with a bar, the current run and its step
    s = io.StringIO()
    tty = Progress([RunProgress("b", b, 10)], tty=True, stream=s)
    (b / "metrics.jsonl").write_text('{"step": 4}\n')
    tty.start("b")
    out = s.getvalue()
    assert out.startswith("\r[compare] ") and "0/1 runs" in out and "b step 4/10" in out
    tty.message("hello")
    tty.close()
    assert "[compare] hello\n" in s.getvalue() and s.getvalue().endswith("\n")


def test_cli_help_documents_the_sweep_and_the_launchers(capsys):
    from hyperfrac.cli import main

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for s in ("--lr-sweep", "--launcher {local,submitit}", "--nproc-per-node",
              "--submitit-cluster", "torchrun", "SLURM"):
        assert s in text, s
