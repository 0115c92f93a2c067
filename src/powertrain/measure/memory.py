"""Peak memory of a run: CUDA's max allocated bytes on a GPU, else the process's peak RSS.

On CPU the peak is the process's high-water mark (VmHWM in /proc/self/status, else
getrusage's ru_maxrss: KiB on Linux, bytes on macOS). It covers the whole process (imports,
datasets), not just training; `reset_peak_memory()` restarts it where the kernel allows
(Linux: writing 5 to /proc/self/clear_refs).

>>> m = peak_memory()
>>> m.peak_bytes > 0, m.method in ("VmHWM", "ru_maxrss")
(True, True)
"""
from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass

import torch

__all__ = ["PeakMemory", "peak_memory", "reset_peak_memory"]


@dataclass(frozen=True)
class PeakMemory:
    peak_bytes: int
    method: str  # "cuda.max_memory_allocated", "VmHWM" or "ru_maxrss"

    def to_dict(self) -> dict:
        return asdict(self)


def _vmhwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_memory(device: torch.device | str | None = None) -> PeakMemory:
    """Peak bytes on `device` (cuda: torch's allocator peak) or of this process (cpu)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return PeakMemory(int(torch.cuda.max_memory_allocated(device)), "cuda.max_memory_allocated")
    hwm = _vmhwm_bytes()
    if hwm is not None:
        return PeakMemory(hwm, "VmHWM")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return PeakMemory(rss if sys.platform == "darwin" else rss * 1024, "ru_maxrss")


def reset_peak_memory(device: torch.device | str | None = None) -> bool:
    """Restart the peak from the current usage. Returns False where that is not possible."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
