"""A steady CPU allocator for benchmarks, and the page faults a timed step causes.

PyTorch's CPU tensors come from glibc ``malloc``. By default glibc serves large blocks with
``mmap`` (from 128 KiB; the threshold then adapts to the sizes freed) and gives the top of
the heap back to the OS once it exceeds a trim threshold, so a step can pay for fresh,
zero-filled pages — a *minor page fault* per 4 KiB — on memory it used a moment before. How
many depends on the allocation history of the whole process (which models ran before, the
saved-memory probe), not on the variant being timed: a variant holding 841 MiB of saved
tensors measured 142k faults per step in one history and 373k in another, and its time ratio
moved from 1.7x to 4.5x (docs/results.md). :func:`steady_allocator` turns both behaviours off
(``M_MMAP_MAX = 0``: no mmap blocks; ``M_TRIM_THRESHOLD`` = 2 GiB - 1: no trimming), so after
warm-up every variant runs on pages it already owns; the benchmarks call it first and report
:func:`minor_faults` per step so the effect stays visible.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc malloc.h


def steady_allocator() -> bool:
    """Keep freed memory in the process (glibc ``mallopt``); True when applied, False where
    the C library is not glibc (then the page-fault column tells what the allocator did)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def minor_faults() -> int:
    """Minor page faults of this process so far (``getrusage``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
