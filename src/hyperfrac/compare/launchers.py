"""Where the runs of a comparison train: here, one after another, or as jobs of a cluster.

Every arm × seed (and every learning-rate sweep run) is an independent job: a resolved run
config in ``OUT/configs/<run>.yaml`` trained by ``python -m hyperfrac.compare.worker`` into
its own run folder. A launcher only decides where that command runs:

=========  ===================================================================================
local      (default) one after another in a child process of ``hyperfrac compare`` (tied to
           it: it dies with the parent); ``--in-process`` trains in the parent itself
submitit   every job submitted at once through `submitit <https://github.com/facebookincubator/
           submitit>`_ (SLURM; ``--submitit-cluster local`` runs the jobs as local processes,
           all at once); ``--submitit KEY=VALUE`` sets executor parameters
           (``timeout_min=60``, ``slurm_partition=gpu``, ``gpus_per_node=1`` ...)
=========  ===================================================================================

``--nproc-per-node N`` (either launcher) wraps the worker in ``torchrun --standalone
--nproc-per-node N``: each run then trains data-parallel through the trainer's DDP / FSDP2
path (``train.parallel``), ``train.batch_size`` per rank, on CUDA when the machine has it
(``train.device=auto``). N changes the training (N × the tokens per step), so it is part of a
run's fingerprint; the launcher is not: a comparison started with one launcher resumes with
another (finished runs are kept, interrupted ones continue from their last checkpoint).

The driver does the bookkeeping (fingerprints, ``compare_arm.json``, the report); a launcher
calls ``done(job)`` once a job's training has finished and raises if any failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperfrac.compare.processes import run_child
from hyperfrac.compare.progress import Progress


@dataclass
class Job:
    """One run to train: its arm, seed, resolved config and the config file of the worker."""

    seed: int
    arm: Any
    cfg: Any
    fingerprint: str
    config_path: Path

    @property
    def name(self) -> str:
        return self.cfg.name


def worker_command(config_path: Path, nproc: int = 1) -> list[str]:
    """The command that trains one run (under torchrun when ``nproc > 1``)."""
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={nproc}", "-m", "hyperfrac.compare.worker",
                str(config_path)]
    return [sys.executable, "-m", "hyperfrac.compare.worker", str(config_path)]


def run_command(cmd: list[str]) -> int:
    """A cluster job's body: run ``cmd``, raise if it fails (its output is the job's log)."""
    rc = subprocess.run(cmd, check=False).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with code {rc}")
    return rc


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


Done = Callable[[Job], None]


@dataclass
class LocalLauncher:
    """One job after another on this machine (see the module doc)."""

    nproc: int = 1
    isolate: bool = True
    in_process: Callable[[Any], Any] | None = None
    """Trains a config in this process (``isolate=False``)."""

    name = "local"

    def __post_init__(self) -> None:
        if not self.isolate and self.nproc > 1:
            raise ValueError("--nproc-per-node runs each job under torchrun, in child "
                             "processes; drop --in-process")

    def launch(self, jobs: list[Job], done: Done, progress: Progress) -> None:
        for job in jobs:
            progress.start(job.name)
            if not self.isolate:
                assert self.in_process is not None
                self.in_process(job.cfg)
            else:
                log_path = job.cfg.run_dir / "train.log" if progress.tty else None
                rc = run_child(worker_command(job.config_path, self.nproc), log_path=log_path,
                               tick=progress.tick)
                if rc != 0:
                    tail = f"; the end of {log_path}:\n{_tail(log_path)}" if log_path else \
                        "; its log is above"
                    raise RuntimeError(
                        f"training {job.name} failed (exit code {rc}). Re-run to resume from "
                        f"{job.cfg.run_dir / 'checkpoints'}{tail}")
            done(job)
            progress.finish(job.name)


@dataclass
class SubmititLauncher:
    """Every job submitted at once through submitit; waits for all of them."""

    folder: Path
    nproc: int = 1
    cluster: str | None = None
    """slurm | local; None = submitit's choice (SLURM when ``sbatch`` is there)."""
    parameters: dict[str, Any] = field(default_factory=dict)
    poll_s: float = 1.0

    name = "submitit"

    def executor(self):
        try:
            import submitit
        except ImportError:
            raise ImportError("--launcher submitit needs the submitit package: pip install "
                              "'hyperfrac[cluster]'") from None
        ex = submitit.AutoExecutor(folder=str(self.folder), cluster=self.cluster)
        params = {"name": "hyperfrac-compare", **self.parameters}
        if self.nproc > 1:  # one task per job; torchrun starts the ranks inside it
            params.setdefault("tasks_per_node", 1)
        ex.update_parameters(**params)
        return ex

    def launch(self, jobs: list[Job], done: Done, progress: Progress) -> None:
        if not jobs:
            return
        ex = self.executor()
        submitted = [(ex.submit(run_command, worker_command(j.config_path, self.nproc)), j)
                     for j in jobs]
        progress.message(f"submitted {len(jobs)} jobs through submitit "
                         f"({ex.cluster}); job logs in {self.folder}")
        pending = list(submitted)
        failed: list[str] = []
        try:
            while pending:
                for sj, job in list(pending):
                    try:
                        if not sj.done():
                            continue
                    except Exception:  # noqa: BLE001 - a failed job; result() says why
                        pass
                    pending.remove((sj, job))
                    try:
                        sj.result()
                    except Exception as e:  # noqa: BLE001 - the job's own error, reported below
                        failed.append(f"{job.name} (job {sj.job_id}): "
                                      f"{str(e).strip().splitlines()[-1] if str(e) else e!r}")
                        continue
                    done(job)
                    progress.finish(job.name)
                progress.current = pending[0][1].name if pending else None
                progress.tick()
                if pending:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            for sj, _ in pending:
                sj.cancel(check=False)
            raise
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(jobs)} jobs failed (logs in "
                               f"{self.folder}); re-run to resume: " + "; ".join(failed))


LAUNCHERS: dict[str, type] = {"local": LocalLauncher, "submitit": SubmititLauncher}
"""``--launcher`` name -> launcher class."""


def make_launcher(name: str, *, out: Path, nproc: int = 1, isolate: bool = True,
                  in_process: Callable[[Any], Any] | None = None,
                  cluster: str | None = None,
                  parameters: dict[str, Any] | None = None):
    """The launcher ``name`` for a comparison folder ``out`` (checked arguments)."""
    if name not in LAUNCHERS:
        raise ValueError(f"launcher {name!r}: choose one of {sorted(LAUNCHERS)}")
    if not (isinstance(nproc, int) and nproc >= 1):
        raise ValueError(f"--nproc-per-node={nproc!r} must be an integer >= 1")
    if name == "local":
        if cluster is not None or parameters:
            raise ValueError("--submitit-cluster / --submitit apply to --launcher submitit "
                             "only")
        return LocalLauncher(nproc=nproc, isolate=isolate, in_process=in_process)
    if not isolate:
        raise ValueError("--in-process trains in this process; it cannot be combined with "
                         "--launcher submitit")
    if cluster not in (None, "slurm", "local"):
        raise ValueError(f"--submitit-cluster {cluster!r}: choose slurm or local")
    return SubmititLauncher(folder=out / "submitit", nproc=nproc, cluster=cluster,
                            parameters=dict(parameters or {}))
