"""Describe the machine a benchmark ran on (CPU model, cores, torch version, device) and probe its memory.

torch is imported only by :func:`machine_summary`: the memory probes serve processes that must
change the allocator (:func:`unmap_freed_blocks`) before torch is loaded.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["machine_summary", "print_machine", "status_kib", "reset_peak", "unmap_freed_blocks"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in KiB; None where there is none (not Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Reset the process's RSS high-water mark (``VmHWM``) to its current RSS (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def unmap_freed_blocks() -> bool:
    """Make glibc return every freed block of 64 KiB or more to the OS at once (``M_MMAP_THRESHOLD``),
    so that the resident set's high-water mark sees every temporary; False where glibc is not there."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16))  # M_MMAP_THRESHOLD = 64 KiB
    except (OSError, AttributeError):
        return False


def machine_summary(device: str = "cpu") -> dict[str, str]:
    """CPU model, logical cores, torch threads, torch version and the device benchmarked."""
    import torch

    dev = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": dev,
    }


def print_machine(device: str = "cpu") -> None:
    for key, value in machine_summary(device).items():
        print(f"{key:>14}: {value}")


if __name__ == "__main__":
    print_machine()
