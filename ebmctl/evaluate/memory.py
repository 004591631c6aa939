"""Peak memory of one piece of work (an attack's row in a report, a benchmark configuration).

CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak counter, so the figure is the
work's own. CPU: the process's peak resident set size (``resource.getrusage``), which the
kernel never resets, so it is an upper bound that includes everything the process held before.
"""

from __future__ import annotations

import resource
import sys

import torch


def _rss_mib() -> float:
    """Peak RSS of this process so far, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)


class MemoryProbe:
    """Measure peak memory from :meth:`start` to :meth:`read`.

    Example::

        probe = MemoryProbe(device).start()
        run_attack()
        row["memory"] = probe.read()
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.rss_before = 0.0

    def start(self) -> "MemoryProbe":
        self.rss_before = _rss_mib()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def read(self) -> dict:
        """``peak_rss_mib`` (process peak so far), ``rss_growth_mib`` (how much this work
        raised that peak; 0 if an earlier peak was higher) and ``cuda_peak_mib`` (None off
        CUDA), all MiB rounded to 0.1."""
        rss = _rss_mib()
        out = {"peak_rss_mib": round(rss, 1),
               "rss_growth_mib": round(max(0.0, rss - self.rss_before), 1),
               "cuda_peak_mib": None}
        if self.cuda:
            torch.cuda.synchronize(self.device)
            out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20,
                                         1)
        return out
