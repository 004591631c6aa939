"""The device layer's measurements: a peak-memory window counts only the work done inside it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# A fresh process: in the test process, memory freed by earlier tests stays resident and the
# allocator hands it back without the resident set growing, so "fresh pages" cannot be promised.
_WINDOW = """
import torch
from ebmctl.device import peak_memory_mib, peak_memory_start
cpu = torch.device("cpu")
held = torch.ones(32 * 2 ** 20)  # 128 MiB touched before the window: not its work
base = peak_memory_start(cpu)
before = peak_memory_mib(cpu, base)
del held
base = peak_memory_start(cpu)
work = torch.ones(16 * 2 ** 20) + 1  # 2 x 64 MiB: the freed 128 MiB may serve one of them
print(before, peak_memory_mib(cpu, base))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak-RSS reset")
def test_a_peak_memory_window_counts_only_the_work_inside_it():
    out = subprocess.run([sys.executable, "-c", _WINDOW], capture_output=True, text=True,
                         check=True).stdout.split()
    before, inside = float(out[0]), float(out[1])
    assert before < 64  # what was held before the window is not counted
    assert inside >= 48  # at least one fresh 64 MiB tensor is
