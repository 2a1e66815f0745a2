"""Peak training memory: CUDA's allocator statistics, or the process's resident set size on CPU.

On CPU torch has no allocator statistics, so the meter reads Linux's peak resident set size (``VmHWM`` in
``/proc/self/status``), which writing ``5`` to ``/proc/self/clear_refs`` resets; ``malloc_trim`` first hands
memory freed by earlier (larger) batches back to the system so that it does not count against a smaller one.
Elsewhere it falls back to ``getrusage``'s lifetime peak, an upper bound that cannot be reset.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys
from pathlib import Path

import torch

_GB = 1024**3
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc() if sys.platform.startswith("linux") else None


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def release_memory(device: torch.device) -> None:
    """Free what Python, the CUDA caching allocator and (on glibc) malloc hold but no longer use."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    elif _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


class MemoryMeter:
    """Peak memory in GB since :meth:`reset_peak`, above the baseline taken by :meth:`set_baseline`.

    The baseline is taken before the model is built, so the figure counts weights, gradients, optimizer state
    and activations, like ``torch.cuda.max_memory_allocated`` does on a GPU.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.resettable = device.type == "cuda" or (_status_kb("VmHWM") is not None and self._clear_refs())
        self.baseline_gb = 0.0

    def _clear_refs(self) -> bool:
        try:
            _CLEAR_REFS.write_text("5")
            return True
        except OSError:
            return False

    def current_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / _GB
        kb = _status_kb("VmRSS")
        return (kb or 0) / 1024**2

    def set_baseline(self) -> None:
        release_memory(self.device)
        self.baseline_gb = self.current_gb()

    def reset_peak(self) -> None:
        release_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            self._clear_refs()

    def peak_gb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / _GB
        elif self.resettable:
            peak = (_status_kb("VmHWM") or 0) / 1024**2
        else:  # ru_maxrss is in kB on Linux, bytes on macOS
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = rss / (_GB if sys.platform == "darwin" else 1024**2)
        return max(0.0, peak - self.baseline_gb)
