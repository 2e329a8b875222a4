"""The wheel is the product: build it, install it into a fresh virtualenv (no checkout on the
path) and run what the README promises from a temporary folder — first without extras
(``--help``, the torch-only benchmark's help, the missing-extra message), then with the
``train`` extra (preset listing, a compare dry run, a shipped run config by name).

About 40 s (a venv, the local torch build and the extras are installed), so it runs by
default: the README's promise is checked on every CI run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], ok: bool = True):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert p.returncode == 0, f"{cmd}: {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def test_wheel_runs_outside_the_checkout(tmp_path: Path):
    import torch

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", str(tmp_path / "dist"), str(ROOT)], tmp_path, env)
    wheel = next((tmp_path / "dist").glob("hyperfrac-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    py, hf = str(venv / "bin" / "python"), str(venv / "bin" / "hyperfrac")
    pip = [py, "-m", "pip", "install", "-q"]
    # the local CPU build, as scripts/setup.sh installs it (an unpinned torch would be CUDA)
    _run([*pip, f"torch=={torch.__version__.split('+')[0]}"], tmp_path, env)
    _run([*pip, str(wheel)], tmp_path, env)
    work = tmp_path / "elsewhere"
    work.mkdir()

    # core only: torch + numpy
    assert "compare" in _run([hf, "--help"], work, env).stdout
    assert "--layers" in _run([hf, "bench", "connections", "--help"], work, env).stdout
    p = _run([hf, "compare", "--list"], work, env, ok=False)
    assert p.returncode == 2 and "pip install 'hyperfrac[train]'" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = _run([py, "-c", "import hyperfrac.connections as c; print(c.KINDS)"], work, env)
    assert "dhc" in p.stdout

    # with the train extra
    _run([*pip, f"{wheel}[train]"], tmp_path, env)
    listing = _run([hf, "compare", "--list"], work, env).stdout
    assert "default" in listing and "smoke" in listing
    dry = _run([hf, "compare", "smoke", "--dry-run"], work, env).stdout
    assert "n_layers" in dry and str(ROOT) not in dry
    assert "n_layers" in _run([hf, "train", "tiny", "--dry-run"], work, env).stdout
    assert "extends: small" in _run([hf, "config", "show", "compare/smoke"], work, env).stdout
