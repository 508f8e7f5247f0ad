"""Pruner on CUDA: mask bandwidth, step overhead, mask updates and 2:4 export, in one run.

Prints (exits 0 with a note when CUDA is not available):

1. mask application bandwidth: ``zero_pruned_`` on a gradient (reads it, the 1-byte mask, writes
   it) against a device copy of the same bytes (target: at least 80 %);
2. step overhead on a GPU-sized model (8 x Linear(8192, 8192), bf16, AdamW, batch 4096): dense
   against prunekit after the last event (magnitude) and in the window (snip_momentum 4x1);
3. mask update time and peak extra memory for 1x1 local/global, 4x1 and 2:4 (as on CPU) against
   ``WeightNormSparsifier.step()`` and ``prune.global_unstructured``;
4. 2:4: forward time of the Linear layers dense against ``prunekit.export.to_semi_structured``
   (refused, with the reason, where the GPU or dtype cannot use it).

Run: ``python benchmarks/bench_pruner_gpu.py``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import print_machine  # noqa: E402
from bench_pruner import bench_updates, oneshot_cfg  # noqa: E402
from prunekit.errors import PruningError  # noqa: E402
from prunekit.export import to_semi_structured  # noqa: E402
from prunekit.pruner import Pruning  # noqa: E402
from prunekit.pruner.masks import new_mask, zero_pruned_  # noqa: E402

DEV = "cuda"


def cuda_ms(fn, reps: int = 20) -> float:
    """Median milliseconds of ``fn()`` timed with CUDA events."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def bandwidth() -> None:
    n = 1 << 28
    g = torch.randn(n, device=DEV)
    mask = new_mask(g)
    mask.view(-1)[torch.rand(n, device=DEV) < 0.9] = 0
    src = torch.empty(n + n // 4, dtype=torch.float32, device=DEV)  # same bytes as read + written by masking
    dst = torch.empty_like(src)
    t_mask = cuda_ms(lambda: zero_pruned_(g, mask))
    t_copy = cuda_ms(lambda: dst.copy_(src))
    moved = n * 4 * 2 + n  # read + write the gradient, read the mask
    print(f"mask application: {moved / t_mask / 1e6:.0f} GB/s; device copy of the same bytes: "
          f"{(src.numel() * 4 * 2) / t_copy / 1e6:.0f} GB/s; ratio {t_copy / t_mask * 100:.0f}% (target >= 80%)")


def step_overhead() -> None:
    width, depth, batch = 8192, 8, 4096

    def build() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)]).to(DEV, torch.bfloat16)

    x = torch.randn(batch, width, device=DEV, dtype=torch.bfloat16)
    rows = []
    for label in ("dense", "magnitude 1x1 (after last event)", "snip_momentum 4x1 (in window)"):
        model = build()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        if label.startswith("magnitude"):
            Pruning(model, oneshot_cfg("1x1", 0.9)).attach(opt)
        elif label.startswith("snip"):
            window = {"type": "iterative", "start_step": 0, "end_step": 100000, "frequency": 50000}
            Pruning(model, oneshot_cfg("4x1", 0.9, criterion="snip_momentum", scheduler=window)).attach(opt)

        def step() -> None:
            opt.zero_grad()
            model(x).float().pow(2).mean().backward()
            opt.step()

        rows.append((label, cuda_ms(step, reps=10)))
        model = opt = None  # free the GPU memory before the next variant
        torch.cuda.empty_cache()
    dense = rows[0][1]
    print(f"\n{'training step, AdamW, 8 x Linear(8192) bf16, batch 4096':<58} {'ms':>8} {'vs dense':>9}")
    for label, t in rows:
        print(f"{label:<58} {t:>8.2f} {(t / dense - 1) * 100:>+8.1f}%")


def export_speedup() -> None:
    print(f"\n{'2:4 Linear forward, fp16, batch 4096':<40} {'dense ms':>9} {'2:4 ms':>9} {'speed-up':>9}")
    for width in (4096, 8192):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(width, width)).to(DEV, torch.float16)
        session = Pruning(model, {"pruners": [{"pattern": "2:4", "target_sparsity": 0.5}]})
        session.prune_now()
        session.finalize()
        x = torch.randn(4096, width, device=DEV, dtype=torch.float16)
        with torch.no_grad():
            dense = cuda_ms(lambda: model(x))
            try:
                to_semi_structured(model)
            except PruningError as exc:
                print(f"Linear({width}, {width}): export refused: {exc}")
                continue
            sparse = cuda_ms(lambda: model(x))
        print(f"{f'Linear({width}, {width})':<40} {dense:>9.3f} {sparse:>9.3f} {dense / sparse:>8.2f}x")


def main() -> None:
    if not torch.cuda.is_available():
        print("CUDA is not available: nothing to benchmark (run benchmarks/bench_pruner.py for the CPU tables)")
        return
    print_machine(DEV)
    bandwidth()
    step_overhead()
    times, memory = bench_updates(DEV, 3, memory=False), bench_updates(DEV, 1, memory=True)
    print(f"\n{'mask update (median of 3)':<18} {'prunekit ms':>11} {'MiB':>8} {'peer':<34} {'peer ms':>9} {'MiB':>8}")
    for (label, t, peer, pt), (_, mib, _, pmib) in zip(times, memory):
        print(f"{label:<18} {t * 1e3:>11.1f} {mib or 0:>8.0f} {peer:<34} {pt * 1e3:>9.1f} {pmib or 0:>8.0f}  {pt / t:.1f}x")
    export_speedup()


if __name__ == "__main__":
    main()
