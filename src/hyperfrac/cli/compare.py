"""``hyperfrac compare [PRESET|FILE] [--arm SPEC ...] [--seeds ...] [--budget F]``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="train arms (residual, DHC, DFC, mHC, ...) side by side and write a report",
        description="Train every arm of a comparison with identical data order, initial branch "
        "weights and seeds, analyse each run, and write OUT/report.html, summary.md, "
        "results.json and figures/. Re-running the same command resumes: finished arms are "
        "not retrained. Presets ship with hyperfrac (`hyperfrac compare --list`, "
        "`hyperfrac config show compare/NAME`); the default one takes about 15 minutes on a "
        "2-core CPU. Runs are independent jobs: --launcher submitit sends each arm x seed to a "
        "SLURM cluster, --nproc-per-node N trains each run under torchrun (DDP/FSDP2, CUDA "
        "when present); a comparison resumes under any launcher.",
    )
    p.add_argument("preset", nargs="?", default="default",
                   help="preset name (default, hc-table1, ...) or a compare YAML file")
    p.add_argument("--arm", action="append", metavar="SPEC",
                   help="replace the preset's arms: [NAME=]KIND[,option=value...], e.g. "
                   "residual, dhc4=dhc,n_streams=4 (repeat the flag per arm)")
    p.add_argument("--seeds", help="comma-separated seeds (e.g. 0,1,2) or a count N (0..N-1)")
    p.add_argument("--budget", type=float, default=1.0,
                   help="scale every arm's training steps (0.5 = half, 4 = four times)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the shared base config, e.g. --set optim.lr=3e-3")
    p.add_argument("--out", type=Path, help="report folder (default runs/compare/<preset>)")
    p.add_argument("--lr-sweep", metavar="LR,LR,...",
                   help="per-arm learning rates: first train every arm at each rate on the "
                   "first seed for a fraction of the steps (--lr-sweep-budget, default the "
                   "preset's or 0.25), then every seed at the rate with the lowest validation "
                   "bpb; e.g. --lr-sweep 1e-3,3e-3,1e-2 (preset key lr_sweep; 'none' turns "
                   "a preset's sweep off)")
    p.add_argument("--lr-sweep-budget", type=float, metavar="F",
                   help="length of a sweep run as a fraction of the comparison's steps, in "
                   "(0, 1]")
    p.add_argument("--launcher", choices=["local", "submitit"], default="local",
                   help="where runs train: local (default; one after another in child "
                   "processes) or submitit (every arm x seed a job, submitted at once; SLURM, "
                   "or --submitit-cluster local for local processes; pip install "
                   "'hyperfrac[cluster]')")
    p.add_argument("--submitit-cluster", choices=["slurm", "local"],
                   help="submitit executor (default: SLURM when available)")
    p.add_argument("--submitit", action="append", default=[], metavar="KEY=VALUE",
                   help="submitit executor parameter, values parsed as YAML, e.g. "
                   "timeout_min=120, slurm_partition=gpu, gpus_per_node=1 (repeat)")
    p.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="train each run under torchrun with N processes (the trainer's DDP, "
                   "or FSDP2 with --set train.parallel=fsdp; train.batch_size is per rank; "
                   "CUDA when present). Part of a run's identity: resuming needs the same N")
    p.add_argument("--in-process", action="store_true",
                   help="train in this process (faster start; no per-arm peak RSS)")
    p.add_argument("--force", action="store_true",
                   help="retrain runs whose config differs from the folder's instead of stopping")
    p.add_argument("--no-estimate", action="store_true", help="skip the timed calibration steps")
    p.add_argument("--eval-batches", type=int, help="cap validation batches per evaluation")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing; write the report from the runs finished so far")
    p.add_argument("--list", action="store_true", help="list the presets and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="print the arms and the first arm's resolved config and exit")
    p.set_defaults(func=_compare)


def resolve_spec(args: argparse.Namespace):
    """Preset + --arm / --seeds / --set -> CompareSpec."""
    import dataclasses

    from hyperfrac.compare.spec import load_spec, parse_arm, parse_lr_sweep
    from hyperfrac.train.config import apply_overrides

    spec = load_spec(args.preset)
    changes: dict = {}
    if args.arm:
        arms = [parse_arm(a) for a in args.arm]
        changes["arms"] = arms
        if spec.baseline not in {a.name for a in arms}:
            changes["baseline"] = None
    if args.seeds:
        s = args.seeds.strip()
        seeds = list(range(int(s))) if s.isdigit() and "," not in s else [
            int(x) for x in s.split(",") if x.strip()]
        changes["seeds"] = seeds
    if args.set:
        changes["base"] = apply_overrides(spec.base, args.set)
    if args.lr_sweep:
        changes["lr_sweep"] = None if args.lr_sweep.strip().lower() == "none" else \
            parse_lr_sweep(args.lr_sweep)
    if args.lr_sweep_budget is not None:
        changes["lr_sweep_budget"] = args.lr_sweep_budget
    return dataclasses.replace(spec, **changes) if changes else spec


def submitit_parameters(items: list[str]) -> dict:
    """``["timeout_min=60", ...]`` -> ``{"timeout_min": 60, ...}`` (values parsed as YAML)."""
    import yaml

    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k.strip():
            raise ValueError(f"--submitit {it!r}: expected KEY=VALUE, e.g. timeout_min=60")
        out[k.strip()] = yaml.safe_load(v)
    return out


def _compare(args: argparse.Namespace) -> int:
    from hyperfrac.compare.spec import available_presets

    if args.list:
        from hyperfrac.compare.spec import load_spec

        for name in available_presets():
            s = load_spec(name)
            print(f"{name:16s} {len(s.arms)} arms x {len(s.seeds)} seeds  "
                  f"{s.description.strip().splitlines()[0] if s.description else ''}")
        return 0
    spec = resolve_spec(args)
    out = args.out or Path("runs") / "compare" / spec.name
    if args.dry_run:
        from hyperfrac.compare.driver import arm_config
        from hyperfrac.train.config import dump_config
        from hyperfrac.train.task import check_buildable

        s = spec.scaled(args.budget)
        print(f"# {s.name}: seeds {s.seeds}, baseline {s.baseline}, out {out}")
        if s.lr_sweep:
            print(f"# lr sweep: {', '.join(f'{x:g}' for x in s.lr_sweep)} on seed "
                  f"{s.seeds[0]} at {s.lr_sweep_budget:g} x the steps; the config below "
                  "shows the base lr, each arm trains at its sweep's choice")
        for a in s.arms:  # every arm's config resolves and its model builds
            check_buildable(arm_config(s, a, s.seeds[0], out / "runs"))
            print(f"#   {a.name}: {a.connection} {' '.join(a.overrides)}")
        print(dump_config(arm_config(s, s.arms[0], s.seeds[0], out / "runs")), end="")
        return 0
    from hyperfrac.compare.driver import run_compare

    run_compare(spec, out, budget=args.budget, isolate=not args.in_process, force=args.force,
                estimate=not args.no_estimate, eval_batches=args.eval_batches,
                train=not args.report_only, launcher=args.launcher,
                nproc_per_node=args.nproc_per_node, submitit_cluster=args.submitit_cluster,
                submitit_parameters=submitit_parameters(args.submitit))
    print((out / "summary.md").read_text())
    return 0
