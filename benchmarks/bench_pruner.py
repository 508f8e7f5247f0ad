"""Pruner speed and memory, side by side with torch.ao.pruning and torch.nn.utils.prune.

On a 50M-parameter MLP (3 x Linear(4096, 4096), batch 32, CPU by default):

1. one training step (SGD with momentum): dense; prunekit attached between events (magnitude,
   and snip_momentum accumulating its scores); ``WeightNormSparsifier`` (a parametrization in the
   forward pass); ``torch.nn.utils.prune`` (a forward pre-hook);
2. one mask update at sparsity 0.9 (2:4 at 0.5, its maximum): prunekit's event (1x1 local, 1x1
   global, 4x1, 2:4) against ``WeightNormSparsifier.step()`` and ``prune.global_unstructured``:
   time and peak extra memory (process RSS high-water mark above the RSS before the update;
   glibc is told to mmap every block >= 64 KiB so freed memory leaves the RSS).

Run: ``python benchmarks/bench_pruner.py [--steps 8] [--device cpu]``. Prints a table.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import print_machine  # noqa: E402
from prunekit.pruner import Pruning  # noqa: E402

WIDTH, DEPTH, BATCH = 4096, 3, 32


def _fix_malloc() -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD: big blocks go back to the OS on free
    except (OSError, AttributeError):
        pass


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_extra_mib(fn: Callable[[], object], device: str) -> tuple[float, float | None]:
    """(seconds, peak extra MiB) of ``fn()``."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - base) / 2**20
    before = _rss_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the RSS high-water mark
    except OSError:
        before = None
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    return elapsed, (peak - before) / 1024 if before is not None and peak is not None else None


def build(device: str) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(DEPTH):
        layers.append(nn.Linear(WIDTH, WIDTH))
        if i < DEPTH - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(device)


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def time_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int, device: str, warmup: int = 2) -> float:
    x = torch.randn(BATCH, WIDTH, device=device)
    y = torch.randn(BATCH, WIDTH, device=device)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9)


def oneshot_cfg(pattern: str, target: float, scope: str = "local", criterion: str = "magnitude", scheduler=None) -> dict:
    return {"pruners": [{"pattern": pattern, "target_sparsity": target, "scope": scope, "criterion": criterion,
                         "scheduler": scheduler or {"type": "oneshot", "start_step": 0}}]}


def bench_steps(steps: int, device: str) -> list[tuple[str, float]]:
    rows = []
    model = build(device)
    rows.append(("dense", time_steps(model, sgd(model.parameters()), steps, device)))

    model = build(device)
    opt = sgd(model.parameters())
    Pruning(model, oneshot_cfg("1x1", 0.9)).attach(opt)  # warm-up step 0 is the event
    rows.append(("prunekit magnitude 1x1 (between events)", time_steps(model, opt, steps, device)))

    model = build(device)
    opt = sgd(model.parameters())
    window = {"type": "iterative", "start_step": 0, "end_step": 100000, "frequency": 50000}
    Pruning(model, oneshot_cfg("4x1", 0.9, criterion="snip_momentum", scheduler=window)).attach(opt)
    rows.append(("prunekit snip_momentum 4x1 (between events)", time_steps(model, opt, steps, device)))

    from torch.ao.pruning import WeightNormSparsifier

    model = build(device)
    sparsifier = WeightNormSparsifier(sparsity_level=0.9, sparse_block_shape=(1, 1), zeros_per_block=1)
    sparsifier.prepare(model, [{"tensor_fqn": f"{n}.weight"} for n in linear_names(model)])
    sparsifier.step()
    rows.append(("torch.ao WeightNormSparsifier (parametrized)", time_steps(model, sgd(model.parameters()), steps, device)))

    from torch.nn.utils import prune

    model = build(device)
    for n in linear_names(model):
        prune.l1_unstructured(model.get_submodule(n), "weight", amount=0.9)
    rows.append(("torch.nn.utils.prune (forward pre-hook)", time_steps(model, sgd(model.parameters()), steps, device)))
    return rows


def bench_updates(device: str, repeats: int) -> list[tuple[str, float, float | None]]:
    rows = []
    cases = [("1x1 local", "1x1", 0.9, "local"), ("1x1 global", "1x1", 0.9, "global"),
             ("4x1 local", "4x1", 0.9, "local"), ("2:4 local (0.5)", "2:4", 0.5, "local")]
    model = build(device)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    for label, pattern, target, scope in cases:
        best: tuple[float, float | None] = (float("inf"), None)
        for _ in range(repeats):
            model.load_state_dict(saved)
            session = Pruning(model, oneshot_cfg(pattern, target, scope))
            result = peak_extra_mib(session.on_before_optimizer_step, device)
            session.on_after_optimizer_step()
            best = min(best, result, key=lambda r: r[0])
            del session
        rows.append((f"prunekit {label}", *best))

    from torch.ao.pruning import WeightNormSparsifier

    best = (float("inf"), None)
    for _ in range(repeats):
        model.load_state_dict(saved)
        sparsifier = WeightNormSparsifier(sparsity_level=0.9, sparse_block_shape=(1, 1), zeros_per_block=1)
        sparsifier.prepare(model, [{"tensor_fqn": f"{n}.weight"} for n in linear_names(model)])
        best = min(best, peak_extra_mib(sparsifier.step, device), key=lambda r: r[0])
        sparsifier.squash_mask()
    rows.append(("torch.ao WeightNormSparsifier.step()", *best))

    from torch.nn.utils import prune

    best = (float("inf"), None)
    for _ in range(repeats):
        fresh = build(device)
        params = [(fresh.get_submodule(n), "weight") for n in linear_names(fresh)]
        best = min(best, peak_extra_mib(lambda: prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.9), device), key=lambda r: r[0])
        del fresh, params
    rows.append(("torch.nn.utils.prune.global_unstructured", *best))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per variant")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each mask update (best is shown)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    _fix_malloc()
    print_machine(args.device)
    pruned_mib = DEPTH * WIDTH * WIDTH * 4 / 2**20
    print(f"\nmodel: {DEPTH} x Linear({WIDTH}, {WIDTH}), batch {BATCH}; pruned weights {pruned_mib:.0f} MiB\n")

    steps = bench_steps(args.steps, args.device)
    dense = steps[0][1]
    print(f"{'training step (median)':<48} {'ms':>9} {'vs dense':>9}")
    for name, t in steps:
        print(f"{name:<48} {t * 1e3:>9.1f} {(t / dense - 1) * 100:>+8.1f}%")

    updates = bench_updates(args.device, args.repeats)
    print(f"\n{'mask update at 0.9 (best of %d)' % args.repeats:<48} {'ms':>9} {'peak MiB':>9} {'/ pruned':>9}")
    for name, t, mib in updates:
        mem = f"{mib:>9.1f}" if mib is not None else f"{'n/a':>9}"
        frac = f"{mib / pruned_mib:>9.2f}" if mib is not None else f"{'n/a':>9}"
        print(f"{name:<48} {t * 1e3:>9.1f} {mem} {frac}")


if __name__ == "__main__":
    main()
