"""Events with layers in parallel against events on torch's intra-op threads, idle and with a busy core.

prunekit runs the layers of an event in parallel, one worker thread per layer with single-threaded
kernels (``prunekit/pruner/parallel.py``), when the group has layers of 2M weights or more on
average and none holds more than half the weights; otherwise every kernel runs on torch's intra-op
threads. This script times one mask update (``prune_now`` on fresh weights, median of ``--repeats``)
both ways on several shapes of model, so the thresholds can be checked on any machine:

* ``layers``: prunekit's choice as shipped;
* ``intra-op``: the thresholds raised so that nothing runs on workers (the code path before this
  design: every kernel a parallel region over torch's threads);
* ``forced``: layers on workers whatever their size and balance (what the thresholds avoid).

At every ``--threads`` count (default ``1,default``) and ``--load`` (default ``idle,busy``: a
competing process pinned to one core, started and stopped here).

Run: ``python benchmarks/bench_threads.py [--threads 1,default] [--load idle,busy] [--busy spin|train] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import prunekit.pruner.parallel as parallel  # noqa: E402
from _machine import add_setting_arguments, busy_core, print_machine, settings  # noqa: E402
from prunekit.pruner import Pruning  # noqa: E402

#: (label, layers, side): models of ``layers`` x Linear(side, side)
MODELS = [("3 x 2048^2 (12.6M)", 3, 2048), ("8 x 1448^2 (16.8M)", 8, 1448), ("12 x 1024^2 (12.6M)", 12, 1024), ("1 x 4096^2 (16.8M)", 1, 4096)]
#: (label, pattern, scope, target)
UPDATES = [("1x1 local", "1x1", "local", 0.9), ("1x1 global", "1x1", "global", 0.9), ("4x1 local", "4x1", "local", 0.9), ("2:4 local", "2:4", "local", 0.5)]


def _update_ms(model: nn.Module, saved: dict, pattern: str, scope: str, target: float, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        model.load_state_dict(saved)
        session = Pruning(model, {"pruners": [{"pattern": pattern, "scope": scope, "target_sparsity": target}]})
        t0 = time.perf_counter()
        session.prune_now()
        times.append(time.perf_counter() - t0)
        session.close()
    return statistics.median(times[1:]) * 1e3


def _forced(sizes, devices, min_mean=0) -> int:
    """Every map of two or more items on workers (not inside a worker)."""
    if len(sizes) < 2 or parallel.in_worker() or any(d.type != "cpu" for d in devices):
        return 1
    return min(torch.get_num_threads(), len(sizes))


def _run(repeats: int) -> list[tuple[str, str, float, float, float]]:
    rows = []
    shipped_rule = parallel.workers_for
    for label, layers, side in MODELS:
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(side, side, bias=False) for _ in range(layers)])
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        for name, pattern, scope, target in UPDATES:
            times = []
            for rule in (shipped_rule, lambda *args, **kw: 1, _forced):
                parallel.workers_for = rule
                try:
                    times.append(_update_ms(model, saved, pattern, scope, target, repeats))
                finally:
                    parallel.workers_for = shipped_rule
            rows.append((label, name, *times))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setting_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print_machine()
    for n, load in settings(args.threads, args.load):
        with busy_core(args.busy if load == "busy" else None) as described:
            rows = _run(args.repeats)
        print(f"\n=== {n} torch thread{'s' if n > 1 else ''}, {described} ===")
        print(f"{'model':<22} {'update':<11} {'as shipped ms':>14} {'intra-op ms':>12} {'forced ms':>10}")
        for label, name, shipped, intra, forced in rows:
            print(f"{label:<22} {name:<11} {shipped:>14.1f} {intra:>12.1f} {forced:>10.1f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
