"""The steady allocator keeps freed memory: a step that reallocates what the previous step
freed faults no fresh pages (checked in a subprocess, so this process keeps glibc's defaults)."""

import subprocess
import sys

import pytest

PROBE = """
import sys, torch
from hyperfrac.bench.allocator import minor_faults, steady_allocator
if sys.argv[1] == "steady" and not steady_allocator():
    print("skip"); sys.exit()
def step():  # eight 24 MiB blocks alive together, then freed: one 'training step'
    blocks = [torch.empty(24 << 20, dtype=torch.uint8).fill_(1) for _ in range(8)]
    del blocks
step(); step()
f0 = minor_faults()
for _ in range(3):
    step()
print((minor_faults() - f0) / (3 * 8 * (24 << 20) // 4096))
"""


def _faults_per_page(mode: str) -> str:
    res = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True)
    return res.stdout.strip()


def test_a_repeated_step_reuses_its_pages() -> None:
    steady = _faults_per_page("steady")
    if steady == "skip":
        pytest.skip("not glibc: mallopt unavailable")
    assert float(steady) < 0.02  # fresh pages per page used by the step
