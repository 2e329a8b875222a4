"""Benchmarks behind `hyperfrac bench ...`: speed and memory as ratios to the residual."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(result: dict[str, Any], out: str | Path) -> Path:
    """Write a benchmark's result as indented JSON (creating the folder) and say where."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out
