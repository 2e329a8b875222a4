"""``hyperfrac compare``: train every arm x seed, analyse each run, write the report folder.

Fairness (what makes the arms comparable, as in the papers' ablations):

* **Same data order.** Every arm of a seed uses that seed for the loader's shuffle, so arm A
  and arm B see identical batches in identical order.
* **Same initial branch weights.** After building the model, the driver re-seeds and calls
  ``model.reset_parameters()``, which draws every non-connection weight (embedding, QKV, output
  projections, FFN) in a fixed order; connection modules draw nothing from the RNG they share.
  HC-family output projections get the same draws times √n (HC §4). Tested.
* **Same everything else**: the arms differ only in ``model.connection`` (plus explicit per-arm
  overrides a preset names, e.g. a stability arm's learning rate).

Layout of ``OUT``::

    OUT/plan.json                 the resolved spec (arms, seeds, budget) of this folder
    OUT/runs/<arm>-seed<s>/       an ordinary run folder (checkpoints, metrics.jsonl, ...)
        compare_arm.json          config fingerprint, wall time, peak RSS of the training
        analysis/analysis.json    every number of :func:`hyperfrac.analysis.analyze_run`
    OUT/results.json OUT/summary.md OUT/report.html OUT/figures/*.png

Resume: re-running the same command skips arms whose run finished (``summary.json`` with
``finished: true`` and a matching config fingerprint), continues interrupted arms from their
latest checkpoint (exact resume of the trainer) and reuses cached analyses. A folder created
with a different config is refused (use another ``--out`` or ``--force``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hyperfrac.compare.processes import FolderLock, sigterm_as_interrupt
from hyperfrac.compare.spec import Arm, CompareSpec, arm_hash
from hyperfrac.models import build_model
from hyperfrac.precision import autocast as precision_autocast

Log = Callable[[str], None]


def _say(msg: str) -> None:
    print(f"[compare] {msg}", flush=True)


# ----------------------------------------------------------------------------- arm configs


def arm_config(spec: CompareSpec, arm: Arm, seed: int, runs_dir: Path):
    """The :class:`~hyperfrac.train.RunConfig` of one arm and seed."""
    from hyperfrac.train.config import RunConfig, apply_overrides, from_dict

    data = json.loads(json.dumps(spec.base))  # deep copy of plain data
    data.setdefault("model", {})["connection"] = dict(arm.connection)
    data["seed"] = int(seed)
    data["name"] = f"{arm.name}-seed{seed}"
    data["out_dir"] = str(runs_dir)
    data = apply_overrides(data, list(arm.overrides))
    cfg: RunConfig = from_dict(RunConfig, data)
    cfg.checkpoint.resume = "auto"
    cfg.validate()
    return cfg


def arm_fingerprint(spec: CompareSpec, arm: Arm, seed: int, world_size: int = 1) -> str:
    """What decides whether a finished run is reusable: the shared base config as written,
    the arm (with its chosen learning rate), the seed and, above 1, the number of ranks it
    trains on (not the resolved config, whose defaults grow with the code; not the
    launcher)."""
    key: dict[str, Any] = {"base": spec.base, "arm": dataclasses.asdict(arm), "seed": int(seed)}
    if world_size != 1:
        key["world_size"] = int(world_size)
    return arm_hash(json.dumps(key, sort_keys=True))


def shared_init(seed: int):
    """Model factory giving every arm of ``seed`` the same initial branch weights (see the
    module docstring); it runs before the trainer compiles or wraps the model."""

    def factory(task):
        model = task.build_model()
        torch.manual_seed(seed)
        model.reset_parameters()
        torch.manual_seed(seed)
        return model

    return factory


def build_trainer(cfg):
    """The :class:`~hyperfrac.train.Trainer` of one arm (resumes its latest checkpoint)."""
    from hyperfrac.train.trainer import Trainer

    return Trainer(cfg, model_factory=shared_init(cfg.seed))


def _summary(run_dir: Path) -> dict[str, Any] | None:
    p = run_dir / "summary.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def arm_finished(run_dir: Path, fingerprint: str) -> bool:
    """True when the run folder holds a finished training of this exact config."""
    meta = run_dir / "compare_arm.json"
    s = _summary(run_dir)
    if not meta.is_file() or s is None:
        return False
    info = json.loads(meta.read_text())
    return info.get("fingerprint") == fingerprint and bool(s.get("finished")) and bool(
        info.get("finished"))


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def train_in_process(cfg) -> dict[str, Any]:
    """Train one arm in this process; returns the trainer summary (peak RSS: None)."""
    summary = build_trainer(cfg).fit()
    return {**summary, "peak_rss_mb": None}


# ------------------------------------------------------------------------------ estimate


def calibrate_seconds_per_step(cfg, steps: int = 2) -> float:
    """Time ``steps`` training steps of this arm's model on random inputs (after one warm-up),
    with the task's own objective."""
    from hyperfrac.train.optim import build_optimizer
    from hyperfrac.train.task import task_class

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    task = task_class(cfg.data.kind)
    model = build_model(cfg.model)
    opt = build_optimizer(model, cfg.optim)
    x, y = task.random_batch_for(cfg, cfg.train.batch_size, torch.Generator().manual_seed(0))
    ctx = precision_autocast("cpu", cfg.train.precision)

    def step() -> None:
        for _ in range(cfg.train.grad_accum):
            with ctx:
                obj = task.objective(model, x, y)
            (obj.loss + obj.aux_loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


# -------------------------------------------------------------------------------- driver


def run_compare(
    spec: CompareSpec,
    out: str | Path,
    *,
    budget: float = 1.0,
    isolate: bool = True,
    force: bool = False,
    estimate: bool = True,
    eval_batches: int | None = None,
    figures: bool = True,
    train: bool = True,
    launcher: str = "local",
    nproc_per_node: int = 1,
    submitit_cluster: str | None = None,
    submitit_parameters: dict[str, Any] | None = None,
    progress_stream=None,
    log: Log = _say,
) -> dict[str, Any]:
    """Train, analyse and report every arm x seed of ``spec`` into ``out``; returns results.

    ``isolate`` trains each arm in a child process (measures its peak RSS); ``force`` deletes
    runs trained with a different config instead of refusing; ``estimate`` times two steps per
    arm first and prints the expected wall time; ``eval_batches`` caps validation batches
    (default: the preset's ``analysis.eval_batches``, else the whole splits);
    ``train=False`` trains nothing and reports the runs that have finished so far.
    ``launcher`` (``local`` | ``submitit``), ``nproc_per_node`` (torchrun per run),
    ``submitit_cluster`` and ``submitit_parameters``: see :mod:`hyperfrac.compare.launchers`.
    With ``spec.lr_sweep`` the learning-rate sweep trains first
    (:mod:`hyperfrac.compare.sweep`). The folder is locked for the whole call; Ctrl-C (or
    SIGTERM) stops the current arm, keeps its last checkpoint, and re-running the same command
    resumes.
    """
    from hyperfrac.compare.launchers import make_launcher

    out = Path(out)
    runner = make_launcher(launcher, out=out, nproc=nproc_per_node, isolate=isolate,
                           in_process=lambda cfg: train_in_process(cfg),
                           cluster=submitit_cluster, parameters=submitit_parameters)
    with FolderLock(out), sigterm_as_interrupt():
        try:
            return _run_locked(spec, out, budget=budget, runner=runner, force=force,
                               estimate=estimate, eval_batches=eval_batches, figures=figures,
                               train=train, progress_stream=progress_stream, log=log)
        except KeyboardInterrupt:
            log("interrupted: finished arms and the current arm's last checkpoint are kept; "
                "re-run the same command to resume")
            raise


def _run_locked(spec: CompareSpec, out: Path, *, budget: float, runner, force: bool,
                estimate: bool, eval_batches: int | None, figures: bool, train: bool,
                progress_stream, log: Log) -> dict[str, Any]:
    from hyperfrac.compare import sweep as lr_sweep
    from hyperfrac.compare.progress import Progress, RunProgress
    from hyperfrac.train.task import task_class

    spec = spec.scaled(budget)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    world = runner.nproc

    plan = {"spec": spec.to_dict(), "budget": budget}
    _check_plan(out / "plan.json", plan, force)
    _write_json(out / "plan.json", plan)

    jobs = [(seed, arm, arm_config(spec, arm, seed, runs_dir)) for seed in spec.seeds
            for arm in spec.arms]
    c0 = jobs[0][2]
    task = task_class(c0.data.kind)
    _ensure_data(task, c0, log)
    sweep_todo: list = []
    sspec = None
    if spec.lr_sweep:
        sspec = lr_sweep.sweep_spec(spec)
        sjobs = [(seed, arm, arm_config(sspec, arm, seed, out / "sweep" / "runs"))
                 for seed in sspec.seeds for arm in sspec.arms]
        sweep_todo = _pending(sspec, sjobs, force, world)
        log(f"learning-rate sweep: {len(spec.arms)} arms x {len(spec.lr_sweep)} rates "
            f"({', '.join(f'{x:g}' for x in spec.lr_sweep)}) on seed {sspec.seeds[0]}, "
            f"{sjobs[0][2].train.steps} steps each; {len(sjobs) - len(sweep_todo)} of "
            f"{len(sjobs)} finished")
    # main runs: pending unless finished at the LR the sweep picks (known after the sweep)
    main_total = len(jobs)
    main_done = sum(1 for seed, arm, cfg in jobs if _finished_any_lr(cfg.run_dir))
    log(
        f"{spec.name}: {len(spec.arms)} arms ({', '.join(a.display for a in spec.arms)}) x "
        f"{len(spec.seeds)} seeds, {c0.train.steps} steps x "
        f"{task.units_per_step_for(c0, world)} {task.unit_name} each; {main_done} of "
        f"{main_total} runs already finished" + (f"; budget x{budget:g}" if budget != 1 else "")
        + (f"; {world} ranks per run (torchrun)" if world > 1 else "")
        + f"; launcher {runner.name}"
    )
    if spec.target_minutes:
        log(f"this preset is sized for about {spec.target_minutes * budget:.0f} min on an idle "
            f"2-core CPU{' at this budget' if budget != 1 else ''} (other load slows it down)")
    if not train:
        return _report_only(spec, sspec, jobs, out, budget, eval_batches, figures, t_start,
                            world, force, log)
    pending_main = [(s_, a, c) for s_, a, c in jobs if not _finished_any_lr(c.run_dir)]
    est = _log_estimate(sweep_todo, pending_main, log) if estimate and (
        sweep_todo or pending_main) else None
    progress = Progress(
        [RunProgress(cfg.name, cfg.run_dir, cfg.train.steps, _done_steps(cfg.run_dir))
         for _, _, cfg, _ in sweep_todo]
        + [RunProgress(cfg.name, cfg.run_dir, cfg.train.steps, _done_steps(cfg.run_dir))
           for _, _, cfg in pending_main],
        estimate_s=est, stream=progress_stream, log=log,
        finished=(len(sspec.arms) - len(sweep_todo) if sspec else 0) + main_total
        - len(pending_main))
    sweep = None
    try:
        if sspec is not None:
            _train_pending(sweep_todo, out / "sweep" / "configs", runner, progress)
            sweep = lr_sweep.choose(spec, out / "sweep" / "runs")
            spec = lr_sweep.with_lrs(spec, sweep["chosen"])
            progress.message("learning rates from the sweep: " + ", ".join(
                f"{a.display} {sweep['chosen'][a.name]:g}" for a in spec.arms))
            jobs = [(seed, arm, arm_config(spec, arm, seed, runs_dir)) for seed in spec.seeds
                    for arm in spec.arms]
        todo = _pending(spec, jobs, force, world)
        _train_pending(todo, out / "configs", runner, progress)
    finally:
        progress.close()
    return _finish(spec, jobs, out, budget, eval_batches, figures, t_start, sweep, log)


def _finish(spec: CompareSpec, jobs: list, out: Path, budget: float, eval_batches: int | None,
            figures: bool, t_start: float, sweep: dict[str, Any] | None,
            log: Log) -> dict[str, Any]:
    from hyperfrac.compare.report import write_report

    runs = _analyze(spec, jobs, eval_batches)
    lrs = {arm.name: cfg.optim.lr for _, arm, cfg in jobs}
    results = write_report(spec, runs, out, budget=budget, machine=_machine(),
                           wall_s=time.perf_counter() - t_start, figures=figures,
                           command=sys.argv, lr_sweep=sweep, lrs=lrs)
    log(f"report: {out / 'report.html'} | {out / 'summary.md'} | {out / 'results.json'}")
    return results


def _report_only(spec: CompareSpec, sspec: CompareSpec | None, jobs: list, out: Path,
                 budget: float, eval_batches: int | None, figures: bool, t_start: float,
                 world: int, force: bool, log: Log) -> dict[str, Any]:
    """``--report-only``: report the finished runs (after the sweep, if there is one)."""
    from hyperfrac.compare import sweep as lr_sweep

    sweep = None
    if sspec is not None:
        sjobs = [(seed, arm, arm_config(sspec, arm, seed, out / "sweep" / "runs"))
                 for seed in sspec.seeds for arm in sspec.arms]
        left = _pending(sspec, sjobs, False, world)
        if left:
            raise FileNotFoundError(f"the learning-rate sweep under {out / 'sweep'} has "
                                    f"{len(left)} unfinished runs; nothing to report yet")
        sweep = lr_sweep.choose(spec, out / "sweep" / "runs")
        spec = lr_sweep.with_lrs(spec, sweep["chosen"])
        jobs = [(seed, arm, arm_config(spec, arm, seed, out / "runs")) for seed in spec.seeds
                for arm in spec.arms]
    todo = _pending(spec, jobs, force, world)
    unfinished = {(s, a.name) for s, a, _, _ in todo}
    done = [j for j in jobs if (j[0], j[1].name) not in unfinished]
    if not done:
        raise FileNotFoundError(f"no finished runs under {out / 'runs'} to report yet")
    log(f"report only: {len(done)} finished runs, {len(todo)} not finished (left out)")
    return _finish(spec, done, out, budget, eval_batches, figures, t_start, sweep, log)


def _ensure_data(task, cfg, log: Log) -> None:
    """Prepare the dataset on first use: the task's own (the default corpus), and the
    package-built ``lit`` corpora, which the comparison presets use for held-out text."""
    from hyperfrac.data.prepare import dataset_dir, is_ready, prepare

    d = getattr(cfg, "data", None)
    corpus = getattr(d, "corpus", None)
    if getattr(d, "kind", None) == "text" and not d.path and corpus in ("lit", "lit+docs") \
            and not is_ready(dataset_dir(corpus, d.vocab_size)):
        log(f"preparing the {corpus!r} corpus (BPE {d.vocab_size}) from its packages: first "
            "use only")
        prepare(corpus, d.vocab_size)
    task.ensure_data(cfg, log)


def _finished_any_lr(run_dir: Path) -> bool:
    """A finished run in ``run_dir`` (its config is checked later, by fingerprint)."""
    info = _arm_info(run_dir)
    s = _summary(run_dir)
    return bool(info and info.get("finished") and s and s.get("finished"))


def _check_plan(plan_path: Path, plan: dict[str, Any], force: bool) -> None:
    """Refuse a folder that holds a comparison of another base config (unless ``force``)."""
    if not plan_path.is_file() or force:
        return
    old = json.loads(plan_path.read_text())
    if old.get("spec", {}).get("base") != plan["spec"]["base"]:
        raise ValueError(
            f"{plan_path.parent} holds a comparison with a different base config (or budget); "
            "use another --out, the same settings, or --force to retrain"
        )


def _pending(spec: CompareSpec, jobs: list, force: bool, world_size: int = 1) -> list:
    """The (seed, arm, cfg, fingerprint) jobs not finished yet; a run folder trained with a
    different config is refused, or deleted with ``force``."""
    todo = []
    for seed, arm, cfg in jobs:
        fp = arm_fingerprint(spec, arm, seed, world_size)
        info = _arm_info(cfg.run_dir)
        if info is not None and info.get("fingerprint") != fp:
            if not force:
                raise ValueError(
                    f"{cfg.run_dir} was trained with a different config (or learning rate, "
                    "or --nproc-per-node); use another --out, the original settings, or "
                    "--force to retrain it"
                )
            shutil.rmtree(cfg.run_dir)
        if not arm_finished(cfg.run_dir, fp):
            todo.append((seed, arm, cfg, fp))
    return todo


def _arm_info(run_dir: Path) -> dict[str, Any] | None:
    p = run_dir / "compare_arm.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _log_estimate(sweep_todo: list, main_todo: list, log: Log) -> float:
    """Log (and return) the expected training seconds of the pending runs: two timed steps
    per connection (the learning rate does not change a step's cost)."""
    per_conn: dict[str, float] = {}
    cfgs = [(arm, cfg) for _, arm, cfg, _ in sweep_todo] + [(arm, cfg) for _, arm, cfg in
                                                              main_todo]
    est = 0.0
    for arm, cfg in cfgs:
        key = json.dumps(arm.connection, sort_keys=True)
        if key not in per_conn:
            per_conn[key] = calibrate_seconds_per_step(cfg)
        est += per_conn[key] * (cfg.train.steps - _done_steps(cfg.run_dir))
    log(f"estimated training time on this machine: {est / 60:.1f} min (2 timed steps per "
        "arm; evaluation and analysis add a little)")
    return est


def _train_pending(todo: list, config_dir: Path, runner, progress) -> None:
    """Train the pending (seed, arm, cfg, fingerprint) jobs through ``runner`` (a launcher);
    ``compare_arm.json`` records each run's summed training time (over every attempt, from
    the trainer's own clock) and peak RSS once it has finished."""
    from hyperfrac.compare.launchers import Job
    from hyperfrac.train.config import dump_config

    if not todo:
        return
    config_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for seed, arm, cfg, fp in todo:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(cfg.run_dir / "compare_arm.json",
                    {"arm": arm.name, "seed": seed, "fingerprint": fp, "finished": False})
        (cfg.run_dir / "compare_worker.json").unlink(missing_ok=True)
        cpath = config_dir / f"{cfg.name}.yaml"
        cpath.write_text(dump_config(cfg))
        jobs.append(Job(seed=seed, arm=arm, cfg=cfg, fingerprint=fp, config_path=cpath))

    def done(job: Job) -> None:
        summary = _summary(job.cfg.run_dir) or {}
        wj = job.cfg.run_dir / "compare_worker.json"
        peak = json.loads(wj.read_text()).get("peak_rss_mb") if wj.is_file() else None
        info = {"arm": job.arm.name, "seed": job.seed, "fingerprint": job.fingerprint,
                "finished": bool(summary.get("finished")),
                "train_wall_s": summary.get("train_time_s"), "peak_rss_mb": peak,
                "launcher": runner.name, "world_size": runner.nproc}
        _write_json(job.cfg.run_dir / "compare_arm.json", info)

    progress.message(f"training {len(jobs)} runs ({runner.name} launcher): "
                     + ", ".join(j.name for j in jobs))
    runner.launch(jobs, done, progress)


def _analyze(spec: CompareSpec, jobs: list, eval_batches: int | None) -> list[dict[str, Any]]:
    from hyperfrac.analysis.analyze import analyze_run

    runs: list[dict[str, Any]] = []
    an = spec.analysis
    for seed, arm, cfg in jobs:
        res = analyze_run(cfg.run_dir, windows=int(an.get("windows", 4)),
                          max_tokens=an.get("max_tokens", 512),
                          eval_batches=eval_batches if eval_batches is not None
                          else an.get("eval_batches"),
                          mc_items=an.get("mc_items", 200))
        info = _arm_info(cfg.run_dir) or {}
        runs.append({"arm": arm.name, "seed": seed, "analysis": res,
                     "train_wall_s": info.get("train_wall_s"),
                     "peak_rss_mb": info.get("peak_rss_mb")})
    return runs


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


def _done_steps(run_dir: Path) -> int:
    from hyperfrac.train.checkpoint import latest_checkpoint

    # only for the time estimate: the trainer verifies the checkpoint it resumes from
    p = latest_checkpoint(run_dir / "checkpoints", verify=False)
    if p is None:
        return 0
    try:
        return int(p.name.split("_")[-1])
    except ValueError:
        return 0
