"""Pruning FSDP2-sharded models (``fully_shard``): per-rank step overhead, mask-update time and memory,
against the same model unsharded in one process.

Spawns ``--ranks`` processes (default 2) that shard ``--layers`` x ``Linear(--side, --side)`` with
``fully_shard`` (gloo on CPU; with ``--device cuda``, NCCL on every visible GPU), and one unsharded
process. Each measures, median of ``--rounds`` interleaved rounds:

* ``dense step``: forward, backward and SGD-momentum step of the model without pruning;
* ``between events``: the same with a session whose masks are in force (gradients masked);
* ``snip_momentum window``: the same while ``snip_momentum`` scores accumulate (4x1 blocks);
* ``update <pattern>``: one mask update (``prune_now``: scores, threshold search, commit) at 0.9
  (1x1 local and global), 0.75 (4x1) and 0.5 (2:4);
* ``masks + scores``: bytes of masks and scores the process keeps (inside the window).

Each rank of the sharded run prints its own column; every process uses ``--threads`` torch threads
(default 1: ``--ranks`` processes share the machine's cores, with 2 ranks on 2 cores the machine is
busy; ``default`` keeps torch's default, oversubscribing the cores).

Run: ``python benchmarks/bench_fsdp.py [--ranks 2] [--layers 3] [--side 2048] [--batch 32] [--rounds 5] [--threads 1|default] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import print_machine  # noqa: E402

UPDATES = [("update 1x1 local 0.9", "1x1", "local", 0.9), ("update 1x1 global 0.9", "1x1", "global", 0.9),
           ("update 4x1 global 0.75", "4x1", "global", 0.75), ("update 2:4 local 0.5", "2:4", "local", 0.5)]


def build(args: argparse.Namespace, world: int, device: torch.device) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(args.side, args.side) for _ in range(args.layers)]).to(device)
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            fully_shard(layer)
        fully_shard(model)
    return model


def sync(device: torch.device, world: int) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if world > 1:
        dist.barrier()


def timed(fn: Any, device: torch.device, world: int) -> float:
    sync(device, world)
    t0 = time.perf_counter()
    fn()
    sync(device, world)
    return (time.perf_counter() - t0) * 1e3


def state_bytes(session: Any) -> int:
    return sum(m.numel() * m.element_size() for g in session.groups for m in g.mask8.values()) + sum(
        s.numel() * s.element_size() for g in session.groups for s in g.scores.values()
    )


def run_rank(rank: int, world: int, args: argparse.Namespace, store: str, out: str) -> None:
    """One process: every measurement of the module docstring into ``out.<rank>`` (JSON).

    The process group outlives every model, session and tensor of the measurements (they are freed
    and collected before the final barrier), so no gloo work holds Python objects at interpreter exit.
    """
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(f"cuda:{rank}") if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    result = measure(world, args, device)
    gc.collect()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def measure(world: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every measurement of the module docstring, in this process (a rank of ``world`` when > 1)."""
    from prunekit import Pruning

    per = max(1, args.batch // world)  # each rank its share of the global batch
    x = torch.randn(per, args.side, device=device)
    y = torch.randn(per, args.side, device=device)
    models, optimizers = {}, {}
    for key in ("dense", "between", "window"):
        models[key] = build(args, world, device)
        optimizers[key] = torch.optim.SGD(models[key].parameters(), lr=1e-3, momentum=0.9)
    between = Pruning(models["between"], {"pruners": [{"target_sparsity": 0.9, "scheduler": {"type": "oneshot", "start_step": 0}}]})
    between.attach(optimizers["between"])
    window = Pruning(models["window"], {"pruners": [{"pattern": "4x1", "criterion": "snip_momentum", "target_sparsity": 0.9,
                                                     "scheduler": {"type": "iterative", "start_step": 0, "end_step": 10**6, "frequency": 10**6}}]})
    window.attach(optimizers["window"])

    def step(key: str) -> None:
        opt = optimizers[key]
        opt.zero_grad()
        nn.functional.mse_loss(models[key](x), y).backward()
        opt.step()

    for key in models:  # warm-up: the first step of each (the pruned session's event runs here)
        step(key)
    times: dict[str, list[float]] = {"dense step": [], "between events": [], "snip_momentum window": []}
    for _ in range(args.rounds):
        times["dense step"].append(timed(lambda: step("dense"), device, world))
        times["between events"].append(timed(lambda: step("between"), device, world))
        times["snip_momentum window"].append(timed(lambda: step("window"), device, world))
    result: dict[str, Any] = {k: statistics.median(v) for k, v in times.items()}
    result["masks + scores (MiB)"] = state_bytes(window) / 2**20
    for session in (between, window):
        session.close()
    models.clear()  # free the three models before the updates
    optimizers.clear()
    model = build(args, world, device)
    for label, pattern, scope, target in UPDATES:
        runs = []
        for _ in range(max(1, args.rounds // 2)):
            with torch.no_grad():  # fresh weights for each update (the same on every run)
                torch.manual_seed(1)
                for layer in model:
                    w = layer.weight
                    (w._local_tensor if hasattr(w, "_local_tensor") else w).normal_()
            session = Pruning(model, {"pruners": [{"pattern": pattern, "scope": scope, "target_sparsity": target,
                                                   "scheduler": {"type": "oneshot", "start_step": 0}}]})
            runs.append(timed(session.prune_now, device, world))
            session.close()
        result[label] = statistics.median(runs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=None, help="sharded processes (default 2 on CPU, every GPU with --device cuda)")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=32, help="global batch (each rank takes its share)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", default="1", help="torch threads per process: a number, or 'default' (torch's default)")
    args = parser.parse_args()
    args.threads = 0 if args.threads == "default" else int(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    ranks = args.ranks or (torch.cuda.device_count() if args.device == "cuda" else 2)
    print_machine(args.device)
    print(f"{'model':>14}: {args.layers} x Linear({args.side}, {args.side}), global batch {args.batch}, "
          f"{args.rounds} rounds, {'default torch threads' if args.threads <= 0 else f'{args.threads} torch thread(s)'} per process\n")
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, world in (("unsharded", 1), (f"FSDP2 x{ranks}", ranks)):
            out, store = os.path.join(tmp, f"out-{world}"), os.path.join(tmp, f"store-{world}")
            if world == 1:
                run_rank(0, 1, args, store, out)
            else:
                mp.spawn(run_rank, args=(world, args, store, out), nprocs=world, join=True)
            results[label] = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
    columns = [("unsharded", results["unsharded"][0])] + [
        (f"{label} rank {r}", res) for label, ranks_ in results.items() if label != "unsharded" for r, res in enumerate(ranks_)
    ]
    keys = list(columns[0][1])
    width = max(len(k) for k in keys) + 2
    print(f"{'':<{width}}" + "".join(f"{name:>22}" for name, _ in columns))
    for key in keys:
        cells = []
        for _, res in columns:
            value = res[key]
            if key in ("between events", "snip_momentum window"):
                cells.append(f"{value:8.1f} ms ({100 * (value / res['dense step'] - 1):+5.1f}%)")
            elif key.startswith("masks"):
                cells.append(f"{value:10.2f} MiB")
            else:
                cells.append(f"{value:10.1f} ms")
        print(f"{key:<{width}}" + "".join(f"{c:>22}" for c in cells))
    print("\n(between events / window: step time and overhead against the dense step of the same process)")


if __name__ == "__main__":
    main()
