"""prunekit's DataNormSparsifier side by side with torch.ao's, on one large embedding table.

One ``step()`` on ``nn.Embedding(1_000_000, 64)`` (fp32, 256 MB) at sparsity_level 0.8 with
(1, 4) blocks; the peak memory a step adds on top of the table; and the cost of a row lookup
through the sparsified embedding next to a dense lookup. Each implementation runs in its own
process, so peak memory is measured cleanly (the kernel's high-water mark, reset before the step).

    python benchmarks/bench_data_sparsifier.py [--rows 1000000] [--dim 64] [--repeats 3] [--threads N]

On a machine shared with other jobs, ``--threads 1`` avoids torch's worker threads waiting on
cores taken by those jobs (both implementations run with the same setting).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import reset_peak, status_kib  # noqa: E402

LEVEL, BLOCK = 0.8, (1, 4)


# ---------------------------------------------------------------------------- memory probes
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    peak = status_kib("VmHWM")
    if peak is None:
        raise RuntimeError("no VmHWM in /proc/self/status")
    return peak * 1024


def measure_peak(fn: Callable[[], Any]) -> tuple[float, int]:
    """(seconds, peak bytes above the resident set before the call) of ``fn()``."""
    base = _rss_bytes()
    if reset_peak():
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        return seconds, max(0, _peak_bytes() - base)
    peak, done = [base], threading.Event()  # fallback: sample the resident set every millisecond

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    return seconds, max(0, max(peak[0], _rss_bytes()) - base)


def time_lookups(fns: list[Callable[[], torch.Tensor]], repeats: int = 7) -> list[float]:
    """Median seconds of each function, calls interleaved so that all see the same conditions."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


# ---------------------------------------------------------------------------- one implementation
def child(which: str, rows: int, dim: int, repeats: int, threads: int | None) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    emb = nn.Embedding(rows, dim)
    ids = torch.randint(rows, (65536,), generator=torch.Generator().manual_seed(1))
    if which == "torch.ao":
        warnings.filterwarnings("ignore")
        from torch.ao.pruning._experimental.data_sparsifier import DataNormSparsifier as Upstream

        sparsifier: Any = Upstream(sparsity_level=LEVEL, sparse_block_shape=BLOCK)
    else:
        from prunekit.data import DataNormSparsifier

        sparsifier = DataNormSparsifier(sparsity_level=LEVEL, sparse_block_shape=BLOCK)
    _, add_bytes = measure_peak(lambda: sparsifier.add_data("emb", emb))
    first, step_bytes = measure_peak(sparsifier.step)
    times = [first]
    for _ in range(repeats - 1):
        start = time.perf_counter()
        sparsifier.step()
        times.append(time.perf_counter() - start)
    mask = sparsifier.get_mask("emb").bool()
    digest = hashlib.sha1(mask.numpy().tobytes()).hexdigest()
    zeros = 1.0 - mask.float().mean().item()
    dense = nn.Embedding(rows, dim)  # an untouched table of the same size: the reference lookup
    if which == "torch.ao":  # its sparsified table is a parametrization: the mask is applied on every access
        sparse_lookup: Callable[[], torch.Tensor] = lambda: nn.functional.embedding(ids, sparsifier.get_data("emb", return_original=False))
    else:  # masks are squashed into the table in place: the module stays a plain embedding
        sparsifier.squash_mask()
        sparse_lookup = lambda: emb(ids)
    with torch.no_grad():
        lookup, dense_lookup = time_lookups([sparse_lookup, lambda: dense(ids)])
    return {
        "first_step_s": first,
        "median_step_s": statistics.median(times),
        "add_data_bytes": add_bytes,
        "step_peak_bytes": step_bytes,
        "zeros": zeros,
        "mask_sha1": digest,
        "lookup_s": lookup,
        "dense_lookup_s": dense_lookup,
    }


# ---------------------------------------------------------------------------- the table
def machine(threads: int | None) -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{model}, {os.cpu_count()} cores (torch threads: {threads or torch.get_num_threads()}), "
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}"
    )


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="steps timed per implementation (the first is also reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in both runs (default: torch's)")
    parser.add_argument("--child", choices=["prunekit", "torch.ao"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rows, args.dim, args.repeats, args.threads)))
        return
    results = {}
    for which in ("torch.ao", "prunekit"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", which, "--rows", str(args.rows), "--dim", str(args.dim),
             "--repeats", str(args.repeats), *(["--threads", str(args.threads)] if args.threads else [])],
            check=True, capture_output=True, text=True,
        ).stdout
        results[which] = json.loads(out.strip().splitlines()[-1])
    table = args.rows * args.dim * 4
    print(f"Machine: {machine(args.threads)}; load average before the run: {os.getloadavg()[0]:.2f}")
    print(
        f"Task: DataNormSparsifier.step() on nn.Embedding({args.rows:_}, {args.dim}) fp32 ({mb(table)}), "
        f"sparsity_level {LEVEL}, sparse_block_shape {BLOCK}; lookups of 65,536 rows"
    )
    print()
    print("| implementation | first step | median step | add_data extra | step peak extra | zeros | lookup after sparsifying | dense lookup |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for which, r in results.items():
        print(
            f"| {which} | {r['first_step_s']:.3f} s | {r['median_step_s']:.3f} s | {mb(r['add_data_bytes'])} | "
            f"{mb(r['step_peak_bytes'])} ({r['step_peak_bytes'] / table:.2f}x table) | {r['zeros']:.4f} | "
            f"{1e3 * r['lookup_s']:.2f} ms | {1e3 * r['dense_lookup_s']:.2f} ms |"
        )
    up, ours = results["torch.ao"], results["prunekit"]
    print()
    print(
        f"prunekit vs torch.ao: {up['first_step_s'] / ours['first_step_s']:.1f}x faster first step, "
        f"{up['median_step_s'] / ours['median_step_s']:.1f}x faster median step; "
        f"identical masks: {'yes' if up['mask_sha1'] == ours['mask_sha1'] else 'no'}; peak extra memory of a step: "
        f"{up['step_peak_bytes'] / table:.2f}x vs {ours['step_peak_bytes'] / table:.2f}x the table"
    )
    print(
        "Lookups: torch.ao's sparsified table is a parametrization (the whole table is multiplied by the mask on "
        "every access); prunekit squashes the mask into the table in place, so a lookup is a plain dense lookup."
    )


if __name__ == "__main__":
    main()
