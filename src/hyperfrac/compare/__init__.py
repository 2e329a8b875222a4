"""``hyperfrac compare``: does DHC / DFC / mHC beat the residual baseline, by how much, at what
cost, and what did the connections learn?

Trains several arms (connection kinds and options) with identical data order, initial branch
weights and seeds, analyses every run (:mod:`hyperfrac.analysis.analyze`) and writes a report
folder (``results.json``, ``summary.md``, self-contained ``report.html``, PNG figures).
Presets, including the papers' ablations with their published numbers, live in
``configs/compare/*.yaml``; see docs/compare.md.

    from hyperfrac.compare import load_spec, run_compare
    run_compare(load_spec("default"), "compare/default")
"""

from hyperfrac.compare.driver import arm_config, build_trainer, run_compare
from hyperfrac.compare.report import aggregate, mean_se, write_report
from hyperfrac.compare.spec import (
    Arm,
    CompareSpec,
    PaperRef,
    available_presets,
    load_spec,
    parse_arm,
    spec_from_dict,
)

__all__ = [
    "Arm",
    "CompareSpec",
    "PaperRef",
    "aggregate",
    "arm_config",
    "available_presets",
    "build_trainer",
    "load_spec",
    "mean_se",
    "parse_arm",
    "run_compare",
    "spec_from_dict",
    "write_report",
]
