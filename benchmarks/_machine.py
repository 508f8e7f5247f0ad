"""Describe the machine a benchmark ran on (CPU model, cores, torch version, device) and probe its memory.

torch is imported only by :func:`machine_summary`: the memory probes serve processes that must
change the allocator (:func:`unmap_freed_blocks`) before torch is loaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import subprocess
import sys
import time
from typing import Callable, Iterator

__all__ = [
    "machine_summary", "print_machine", "status_kib", "reset_peak", "unmap_freed_blocks", "busy_core", "BUSY_KINDS",
    "thread_counts", "settings", "wall_seconds", "add_setting_arguments", "freeze_library_objects",
]

#: what the competing process of :func:`busy_core` runs: ``spin`` a pure-Python loop (a data-loader
#: worker parsing, another job's interpreter), ``train`` one-thread matrix products and their
#: backward (another training process: it also competes for memory bandwidth)
BUSY_KINDS = {
    "spin": "while True:\n    pass\n",
    "train": (
        "import torch\ntorch.set_num_threads(1)\nm = torch.nn.Linear(1024, 1024)\nx = torch.randn(256, 1024)\n"
        "while True:\n    m(x).square().mean().backward()\n"
    ),
}


@contextlib.contextmanager
def busy_core(kind: str | None, core: int | None = None) -> Iterator[str]:
    """Run a competing process (:data:`BUSY_KINDS`) pinned to one core (the last one this process may
    use, unless ``core``) for the duration of the block; yields a description. ``None``: idle."""
    if kind is None:
        yield "idle"
        return
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    core = allowed[-1] if core is None else core
    proc = subprocess.Popen([sys.executable, "-c", BUSY_KINDS[kind]])
    try:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(proc.pid, {core})
        time.sleep(3.0 if kind == "train" else 0.5)  # let it start (the train loop imports torch first)
        yield f"busy: a '{kind}' process pinned to core {core}"
    finally:
        proc.kill()
        proc.wait()


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


def thread_counts(spec: str) -> list[int]:
    """A ``--threads`` value: a comma list of torch thread counts, ``default`` = torch's default here
    (the machine's cores, or ``OMP_NUM_THREADS``), read before any benchmark changes it."""
    import torch

    default = _DEFAULT_THREADS[0] if _DEFAULT_THREADS else torch.get_num_threads()
    _DEFAULT_THREADS[:] = [default]
    counts: list[int] = []
    for part in filter(None, spec.split(",")):
        n = default if part == "default" else int(part)
        if n not in counts:
            counts.append(n)
    return counts


_DEFAULT_THREADS: list[int] = []


def settings(threads: str, loads: str) -> Iterator[tuple[int, str]]:
    """Every ``(threads, load)`` of ``--threads`` x ``--load`` (``idle``, ``busy``), with torch set to that
    many threads; the caller starts :func:`busy_core` for ``busy``."""
    import torch

    chosen = [load for load in loads.split(",") if load]
    bad = [load for load in chosen if load not in ("idle", "busy")]
    if bad:
        raise SystemExit(f"--load takes idle and/or busy, got {', '.join(bad)}")
    for n in thread_counts(threads):
        for load in chosen:
            torch.set_num_threads(n)
            yield n, load


def freeze_library_objects() -> None:
    """Import what the measurements import lazily (building a torch optimizer loads ``torch._dynamo``:
    ~300K objects), collect, then ``gc.freeze()`` everything alive: later ``gc.collect()`` calls (made
    before every timed run) scan only the benchmark's own objects, ~0.1 ms instead of ~0.14 s each.
    Frozen objects are never collected; they are the libraries' module-level objects."""
    import gc

    import torch

    torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    gc.collect()
    gc.freeze()


def wall_seconds(fn: Callable[[], object], device: str = "cpu") -> float:
    """Wall time of ``fn()``, synchronised before and after on CUDA."""
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def add_setting_arguments(parser) -> None:
    """``--threads``, ``--load`` and ``--busy``: the settings every CPU table is measured in (:func:`settings`)."""
    parser.add_argument("--threads", default="1,default",
                        help="comma list of torch thread counts ('default': torch's default here, the machine's cores)")
    parser.add_argument("--load", default="idle,busy",
                        help="comma list: idle, busy (a competing process pinned to one core, started and stopped here)")
    parser.add_argument("--busy", default="spin", choices=sorted(BUSY_KINDS), help="what the competing process runs")
