#!/usr/bin/env bash
# One-shot set-up: a virtual environment in .venv with torch and hyperfrac installed.
# Installs torch==2.13.0 (a CPU build available locally) only when no torch is present, so an
# existing CUDA torch in the environment is left alone. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${HYPERFRAC_EXTRAS:-train,hf,bench,plot,dev}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch==2.13.0"
  "$VPY" -m pip install -q torch==2.13.0
fi
echo "[setup] installing hyperfrac[$EXTRAS]"
"$VPY" -m pip install -q -e ".[$EXTRAS]"
echo "[setup] ready: $("$VPY" -c 'import torch, hyperfrac; print("torch", torch.__version__, "hyperfrac", hyperfrac.__version__)')"
