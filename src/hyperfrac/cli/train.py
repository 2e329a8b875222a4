"""``hyperfrac train CONFIG.yaml [key.sub=value ...] [--dry-run]``."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (language model or ViT) from a config",
        description="Train from CONFIG (a YAML file, or a shipped config name such as tiny or "
        "cpu-6x256: `hyperfrac config list`) with dotted overrides, e.g. "
        "`hyperfrac train cpu-6x256 model.connection.kind=dhc optim.lr=2e-3`. "
        "Values are parsed as YAML. resume=auto continues the run folder's latest checkpoint.",
    )
    p.add_argument("config", help="YAML config file or a shipped name (hyperfrac config list)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from hyperfrac.train.config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        from hyperfrac.train.task import check_buildable

        check_buildable(cfg)
        print(dump_config(cfg), end="")
        return 0
    from hyperfrac.train.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        summary = trainer.fit()
    finally:
        distributed = trainer.world_size > 1
        trainer.close()
    if trainer.is_main:
        print(json.dumps(summary))
    if distributed:  # everything is written: skip the teardown abort (see hard_exit)
        from hyperfrac.train.parallel import hard_exit

        hard_exit(0)
    return 0
