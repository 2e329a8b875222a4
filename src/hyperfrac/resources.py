"""Shipped configs, found as package data (``importlib.resources``), so that a non-editable
install runs ``hyperfrac train tiny`` and ``hyperfrac compare smoke`` from any folder.

    hyperfrac/configs/*.yaml           example run configs   (``hyperfrac train NAME``)
    hyperfrac/configs/compare/*.yaml   compare presets       (``hyperfrac compare NAME``)

A name that is an existing file path wins over a shipped name of the same spelling.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

_SUFFIX = ".yaml"


def _config_root() -> Path:
    # The wheel installs the package unpacked, so the resource folder is a real directory.
    return Path(os.fspath(files("hyperfrac") / "configs"))


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob(f"*{_SUFFIX}")) if folder.is_dir() else []


def run_config_names() -> list[str]:
    """Names of the shipped run configs (``tiny``, ``cpu-6x256``, ...)."""
    return _names(_config_root())


def compare_preset_names() -> list[str]:
    """Names of the shipped compare presets (``default``, ``smoke``, ...)."""
    return _names(_config_root() / "compare")


def _resolve(name_or_path: str | Path, folder: Path, what: str, names: list[str]) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = folder / f"{name_or_path}{_SUFFIX}"
    if not str(name_or_path).endswith(_SUFFIX) and shipped.is_file():
        return shipped
    raise FileNotFoundError(f"no {what} or file {str(name_or_path)!r}; {what}s: {names}")


def run_config_path(name_or_path: str | Path) -> Path:
    """An existing YAML path, or the shipped run config of that name."""
    return _resolve(name_or_path, _config_root(), "run config", run_config_names())


def compare_preset_path(name_or_path: str | Path) -> Path:
    """An existing YAML path, or the shipped compare preset of that name."""
    return _resolve(name_or_path, _config_root() / "compare", "preset",
                    compare_preset_names())
