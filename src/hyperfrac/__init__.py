"""hyperfrac: Hyper-Connections, Frac-Connections and mHC for PyTorch.

The connection library lives in :mod:`hyperfrac.connections` and depends on torch only.
"""

__version__ = "0.1.0"
