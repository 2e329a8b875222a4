"""Analyses of trained models: probes on the connections and the papers' diagnostics."""

from hyperfrac.analysis.probes import ConnectionProbe, ProbeRecord
from hyperfrac.analysis.metrics import adjacent_cosine, band, connection_summary

__all__ = ["ConnectionProbe", "ProbeRecord", "adjacent_cosine", "band", "connection_summary"]
