"""``hyperfrac config list|show|copy``: the run configs and compare presets shipped in the
wheel, as a starting point for one's own (``hyperfrac train my.yaml``)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config", help="list, show or copy a shipped run config or compare preset",
        description="Run configs are named as in `hyperfrac train NAME`; compare presets as "
        "compare/NAME (e.g. compare/default).",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    sub.add_parser("list", help="list the shipped names").set_defaults(func=_list)
    s = sub.add_parser("show", help="print a shipped config")
    s.add_argument("name", help="e.g. tiny, cpu-6x256, compare/default")
    s.set_defaults(func=_show)
    c = sub.add_parser("copy", help="copy a shipped config to a file to edit")
    c.add_argument("name")
    c.add_argument("dest", nargs="?", type=Path, help="target file (default NAME.yaml here)")
    c.add_argument("--force", action="store_true", help="overwrite an existing file")
    c.set_defaults(func=_copy)


def _path(name: str) -> Path:
    from hyperfrac.resources import compare_preset_path, run_config_path

    if name.startswith("compare/"):
        return compare_preset_path(name.removeprefix("compare/"))
    return run_config_path(name)


def _list(args: argparse.Namespace) -> int:
    from hyperfrac.resources import compare_preset_names, run_config_names

    print("run configs (hyperfrac train NAME):")
    for n in run_config_names():
        print(f"  {n}")
    print("compare presets (hyperfrac compare NAME; hyperfrac config show compare/NAME):")
    for n in compare_preset_names():
        print(f"  compare/{n}")
    return 0


def _show(args: argparse.Namespace) -> int:
    sys.stdout.write(_path(args.name).read_text())
    return 0


def _copy(args: argparse.Namespace) -> int:
    src = _path(args.name)
    dest = args.dest or Path(src.name)
    if dest.exists() and not args.force:
        raise FileExistsError(f"{dest} exists; pass --force to overwrite it or name another file")
    shutil.copyfile(src, dest)
    print(f"wrote {dest} (from {args.name}); edit it and run `hyperfrac train {dest}`"
          if not args.name.startswith("compare/") else
          f"wrote {dest} (from {args.name}); edit it and run `hyperfrac compare {dest}`")
    return 0
