"""Analyses of trained models: probes on the connections and the papers' diagnostics.

:func:`analyze_run` (``hyperfrac analyze RUN_DIR``) runs them all on a run folder;
:mod:`hyperfrac.analysis.plots` draws the figures (needs matplotlib: ``hyperfrac[plot]``).
"""

from hyperfrac.analysis.analyze import analyze_run, gradient_norms, probe_model
from hyperfrac.analysis.metrics import adjacent_cosine, band, connection_summary
from hyperfrac.analysis.probes import ConnectionProbe, ProbeRecord

__all__ = [
    "ConnectionProbe",
    "ProbeRecord",
    "adjacent_cosine",
    "analyze_run",
    "band",
    "connection_summary",
    "gradient_norms",
    "probe_model",
]
