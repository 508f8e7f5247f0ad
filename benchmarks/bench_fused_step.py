"""Eager vs ``torch.compile``: prunekit's per-step work, side by side in one process.

The two passes prunekit runs on every optimizer step, on 3 x Linear(4096, 4096) weights (50M)
with masks at 0.9:

* **gradient masking** (magnitude, between events): ``g[mask == 0] = 0``; eager = prunekit's
  ``zero_pruned_many_`` (a bitwise AND through a widened int8 mask, pieces on several threads);
  compiled = ``torch.where(mask != 0, g, 0)`` written back into ``g``, one fused kernel per layer.
* **snip_momentum accumulation** (4x1 blocks, inside the window): mask the gradient, score
  ``|w·g|``, average each 4x1 block, ``S <- 0.9·S + score`` with non-finite scores counted as 0;
  eager = prunekit's chunked pass (``PrunerGroup._accumulate``); compiled = the same formula in one
  function (Inductor fuses it into one kernel per layer: C++/OpenMP on CPU, Triton on CUDA).

For each: median time per step over ``--repeats`` calls after warm-up, the compile time (first call),
recompilations after warm-up (must be 0) and whether the results are identical to eager (masks:
bit for bit; scores: max relative difference, since a fused block sum may add in another order).
Run at every ``--threads`` count (default ``1,default``), idle and with a busy core (``--load``).

Run: ``python benchmarks/bench_fused_step.py [--threads 1,default] [--load idle,busy] [--repeats 20] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import add_setting_arguments, busy_core, print_machine, settings, wall_seconds  # noqa: E402
from prunekit.pruner import Pruning  # noqa: E402
from prunekit.pruner.masks import zero_pruned_many_  # noqa: E402

WIDTH, DEPTH = 4096, 3
MOMENTUM = 0.9


def masked_grad(g: torch.Tensor, mask: torch.Tensor) -> None:
    """The compiled gradient masking: exact (NaN/inf of pruned entries become +0 too)."""
    g.copy_(torch.where(mask != 0, g, torch.zeros((), dtype=g.dtype, device=g.device)))


def snip_momentum_4x1(w: torch.Tensor, g: torch.Tensor, mask: torch.Tensor, acc: torch.Tensor) -> None:
    """The compiled accumulation: mask the gradient, S <- 0.9·S + mean of |w·g| over each 4x1 block
    (``reduce: mean``, the default)."""
    g.copy_(torch.where(mask != 0, g, torch.zeros((), dtype=g.dtype, device=g.device)))
    score = (w * g).abs().view(w.shape[0] // 4, 4, w.shape[1]).sum(1) * 0.25
    score = torch.nan_to_num(score, nan=0.0, posinf=0.0, neginf=0.0)
    acc.copy_(score + MOMENTUM * acc)


def _median_ms(fn, repeats: int, device: str) -> float:
    return statistics.median(wall_seconds(fn, device) for _ in range(repeats)) * 1e3


def _setup(device: str):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(DEPTH)]).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    window = {"type": "iterative", "start_step": 0, "end_step": 1 << 20, "frequency": 1 << 19}
    cfg = {"pruners": [{"pattern": "4x1", "criterion": "snip_momentum", "target_sparsity": 0.9, "scheduler": window}]}
    session = Pruning(model, cfg)
    group = session.groups[0]
    for layer in group.layers:  # masks at 0.9, as after an event
        mask = group.mask8[layer.name]
        mask.copy_(-(torch.rand(mask.shape, device=device) > 0.9).to(torch.int8))
    group.has_pruned = True
    return model, session, group


def compiled_or_reason(fn):
    try:
        return torch.compile(fn, fullgraph=True, dynamic=False), None
    except Exception as err:  # noqa: BLE001 - reported, the eager path stays
        return None, f"{type(err).__name__}: {err}"


def _compare(
    name: str, eager: Callable[[], None], fused_fn: Callable, calls: list[tuple], reset: Callable[[], None],
    result: Callable[[], list[torch.Tensor]], agreement: Callable[[list[torch.Tensor], list[torch.Tensor]], str], repeats: int, device: str,
) -> tuple[str, float, float | None, float | None, str]:
    """One row: ``eager()`` against ``fused_fn(*args)`` for every ``args`` in ``calls``; ``reset()`` restores
    the inputs, ``result()`` reads the outputs, ``agreement(compiled, eager)`` describes how they agree."""
    import torch._dynamo

    eager_ms = _median_ms(eager, repeats, device)
    fused, reason = compiled_or_reason(fused_fn)
    if fused is None:
        return name, eager_ms, None, None, f"torch.compile unavailable: {reason}"
    reset()
    t0 = time.perf_counter()
    try:
        for args in calls:
            fused(*args)
    except Exception as err:  # noqa: BLE001 - reported: the eager path is the fallback
        return name, eager_ms, None, None, f"compilation failed: {type(err).__name__}: {str(err)[:120]}"
    compile_s = time.perf_counter() - t0
    got = [t.clone() for t in result()]
    reset()
    eager()
    agree = agreement(got, result())
    torch._dynamo.utils.counters.clear()
    fused_ms = _median_ms(lambda: [fused(*args) for args in calls], repeats, device)
    graphs = torch._dynamo.utils.counters["stats"].get("unique_graphs", 0)
    return name, eager_ms, fused_ms, compile_s, f"{agree}; new graphs after warm-up: {graphs}"


def bench(device: str, repeats: int) -> list[tuple[str, float, float | None, float | None, str]]:
    """Rows ``(pass, eager ms, compiled ms, compile s, notes)``."""
    model, session, group = _setup(device)
    weights = [layer.weight.detach() for layer in group.layers]
    masks = [group.mask8[layer.name] for layer in group.layers]
    grads = [layer.weight.grad for layer in group.layers]
    saved = [g.clone() for g in grads]
    group._accumulate(0, mask_grads=True)  # creates the accumulators
    accs = [group.scores[layer.name] for layer in group.layers]
    start = [a.clone() for a in accs]

    def reset() -> None:
        for t, s in zip(grads + accs, saved + start):
            t.copy_(s)

    def identical(a: list[torch.Tensor], b: list[torch.Tensor]) -> str:
        return f"identical: {all(torch.equal(x, y) for x, y in zip(a, b))}"

    def relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> str:
        return f"max rel. diff of scores {max(float(((x - y).abs() / y.abs().clamp_min(1e-30)).max()) for x, y in zip(a, b)):.1e}"

    rows = [
        _compare("gradient masking", lambda: zero_pruned_many_(list(zip(grads, masks))), masked_grad, list(zip(grads, masks)),
                 reset, lambda: grads, identical, repeats, device),
        _compare("snip_momentum 4x1 accumulation", lambda: group._accumulate(0, mask_grads=True), snip_momentum_4x1,
                 list(zip(weights, grads, masks, accs)), reset, lambda: accs, relative, repeats, device),
    ]
    session.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setting_arguments(parser)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu")
        return
    print_machine(args.device)
    print(f"\nweights: {DEPTH} x {WIDTH} x {WIDTH} float32, masks at 0.9; median of {args.repeats} calls per step\n")
    for n, load in settings(args.threads, args.load):
        torch._dynamo.reset()  # compile again for this thread count
        with busy_core(args.busy if load == "busy" else None) as described:
            rows = bench(args.device, args.repeats)
        print(f"=== {n} torch thread{'s' if n > 1 else ''}, {described} ===")
        print(f"{'pass':<32} {'eager ms':>9} {'compiled ms':>12} {'compile s':>10}  notes")
        for name, eager, fused, compile_s, notes in rows:
            fused_s = f"{fused:>12.2f}" if fused is not None else f"{'-':>12}"
            comp_s = f"{compile_s:>10.1f}" if compile_s is not None else f"{'-':>10}"
            print(f"{name:<32} {eager:>9.2f} {fused_s} {comp_s}  {notes}")
        print(flush=True)


if __name__ == "__main__":
    main()
