"""hyperfrac.connections: Hyper-Connections, Frac-Connections and mHC (torch only).

    from hyperfrac.connections import build
    conn = build("dhc", dim=256, layer_idx=0, n_streams=4)
    h = conn.expand(x)                 # (B, T, D) -> (B, T, 4, D)
    h = conn(h, branch)                # branch: (..., D) -> (..., D)
    y = conn.reduce(h)                 # (B, T, D)

    validate_spec({"kind": "dhc", "n_stream": 4})   # ConnectionSpecError, without building:
    # unknown option 'n_stream' for kind 'dhc' — did you mean 'n_streams'? ...
"""

from hyperfrac.connections.analysis import (
    amax_gain,
    overhead,
    unfolded_connection_matrix,
)
from hyperfrac.connections.attnres import AttentionResidual
from hyperfrac.connections.base import Connection, StreamConnection
from hyperfrac.connections.deepseek_v4 import DeepseekV4HyperConnection
from hyperfrac.connections.frac import FracConnection
from hyperfrac.connections.functional import KERNEL_BACKENDS, compiled_kernels
from hyperfrac.connections.head import HyperHead
from hyperfrac.connections.hyper import HyperConnection
from hyperfrac.connections.kromhc import KromHC
from hyperfrac.connections.mhc import ManifoldHyperConnection
from hyperfrac.connections.mhc_lite import MHCLite
from hyperfrac.connections.options import ConnectionSpecError
from hyperfrac.connections.registry import (
    KINDS,
    build,
    connection_class,
    options_for,
    register,
    schema_for,
    validate_spec,
)
from hyperfrac.connections.residual import PostNorm, Residual
from hyperfrac.connections.streams import fp32_stream_state

__all__ = [
    "KERNEL_BACKENDS",
    "KINDS",
    "AttentionResidual",
    "Connection",
    "ConnectionSpecError",
    "DeepseekV4HyperConnection",
    "FracConnection",
    "HyperConnection",
    "HyperHead",
    "KromHC",
    "MHCLite",
    "ManifoldHyperConnection",
    "PostNorm",
    "Residual",
    "StreamConnection",
    "amax_gain",
    "build",
    "compiled_kernels",
    "connection_class",
    "fp32_stream_state",
    "options_for",
    "overhead",
    "register",
    "schema_for",
    "unfolded_connection_matrix",
    "validate_spec",
]
