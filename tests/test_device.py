"""The device layer's measurements: a peak-memory window counts only the work done inside it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak-RSS reset")
def test_a_peak_memory_window_counts_only_the_work_inside_it():
    from ebmctl.device import peak_memory_mib, peak_memory_start

    cpu = torch.device("cpu")
    held = torch.ones(32 * 2 ** 20)  # 128 MiB touched before the window: not its work
    base = peak_memory_start(cpu)
    assert peak_memory_mib(cpu, base) < 64
    del held
    base = peak_memory_start(cpu)
    work = torch.ones(16 * 2 ** 20)  # 64 MiB of fresh pages inside the window
    assert peak_memory_mib(cpu, base) >= 48
    del work
