"""Pruner speed and memory, side by side with torch.ao.pruning and torch.nn.utils.prune.

On a 50M-parameter MLP (3 x Linear(4096, 4096), batch 32, CPU by default):

1. one training step, SGD with momentum and AdamW: dense; prunekit attached with masks at 0.9
   after the last event (magnitude: only the gradient masking runs) and inside the pruning window
   (snip_momentum 4x1 accumulating its scores between events); ``WeightNormSparsifier`` (a
   parametrization in the forward pass); ``torch.nn.utils.prune`` (a forward pre-hook). Variants
   are interleaved round by round; the median step of every round is shown;
2. one mask update at sparsity 0.9 (2:4 at 0.5, its maximum): prunekit's event (1x1 local, 1x1
   global, 4x1, 2:4) against ``WeightNormSparsifier.step()`` with the equivalent block settings
   and ``prune.global_unstructured``: time and peak extra memory;
3. scale: prunekit's 1x1 local and global mask update at 10M, 50M and 200M parameters;
4. single layer: one event on ONE large layer (``--single-layer``, default 16384 x 12288 = 201M
   parameters, as many as the largest scale: the performance issue's case) per pattern, criterion and scope, for float32 and
   bfloat16 weights (``--single-layer-dtypes``): time and peak extra memory in units of the layer's
   weight bytes (the promise: at most 0.5). ``--single-layer 4096x4096`` runs it smaller.

Times and memory come from separate runs. Every case is timed in this process with the normal
allocator, prunekit and its peer alternating. Peak extra memory is measured in one child process
(``--memory-child``) that tells glibc, before anything is allocated, to mmap every block >= 64 KiB
(so freed memory leaves the RSS at once): the RSS high-water mark above the RSS before the update,
one run per case (on CUDA, ``torch.cuda.max_memory_allocated`` in this process). Timing under
that allocator setting would charge every temporary a fresh mmap, and measuring memory after the
timing runs would let the update reuse their freed heap unseen.

Every section runs in every setting of ``--threads`` (default ``1,default``: one torch thread and
torch's default, the machine's cores) x ``--load`` (default ``idle,busy``: busy = a competing
process pinned to one core, started and stopped by the benchmark; ``--busy spin`` a Python loop,
``--busy train`` a one-thread training loop); the run ends with a summary of the targets per setting.

Run: ``python benchmarks/bench_pruner.py [--steps 4] [--rounds 3] [--threads 1,default] [--load idle,busy]
[--busy spin|train] [--device cpu] [--skip steps,updates,scale,single,memory] [--single-layer 16384x12288]``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import (  # noqa: E402
    add_setting_arguments, busy_core, freeze_library_objects, print_machine, reset_peak, settings, status_kib, thread_counts, unmap_freed_blocks, wall_seconds,
)
from prunekit.pruner import Pruning  # noqa: E402

WIDTH, DEPTH, BATCH = 4096, 3, 32
SCALES = {"10M": 1824, "50M": 4096, "200M": 8192}


def seconds(fn: Callable[[], object], device: str) -> float:
    """Wall time of ``fn()`` (synchronised on CUDA), after collecting the garbage of the run before."""
    gc.collect()
    return wall_seconds(fn, device)


def peak_extra_mib(fn: Callable[[], object], device: str) -> float | None:
    """Peak extra MiB of ``fn()``: CUDA allocator peak, or RSS high-water mark (after :func:`unmap_freed_blocks`)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    before = status_kib("VmRSS")
    if not reset_peak():
        return None
    fn()
    peak = status_kib("VmHWM")
    return (peak - before) / 1024 if before is not None and peak is not None else None


def build(device: str, width: int | None = None) -> nn.Sequential:
    width = WIDTH if width is None else width
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(DEPTH):
        layers.append(nn.Linear(width, width))
        if i < DEPTH - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(device)


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def time_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int, device: str, warmup: int = 1) -> float:
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


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)


def oneshot_cfg(pattern: str, target: float, scope: str = "local", criterion: str = "magnitude", scheduler=None) -> dict:
    return {"pruners": [{"pattern": pattern, "target_sparsity": target, "scope": scope, "criterion": criterion,
                         "scheduler": scheduler or {"type": "oneshot", "start_step": 0}}]}


def _prime_masks(session: Pruning, model: nn.Module, target: float) -> None:
    """Give an in-window session masks at ``target`` (as after an event) without running one."""
    with torch.no_grad():
        for group in session.groups:
            for layer in group.layers:
                w = layer.weight.detach().abs().view(-1)
                k = int(target * w.numel())
                t = torch.kthvalue(w, k).values
                group.mask8[layer.name].copy_(-(layer.weight.detach().abs() > t).to(torch.int8))
                layer.weight.mul_(group.mask8[layer.name] != 0)
            group.has_pruned = True


def _variants(device: str) -> list[tuple[str, Callable[[], tuple[nn.Module, torch.optim.Optimizer]]]]:
    def dense(make_opt):
        def f():
            model = build(device)
            return model, make_opt(model.parameters())
        return f

    def magnitude(make_opt):
        def f():
            model = build(device)
            opt = make_opt(model.parameters())
            Pruning(model, oneshot_cfg("1x1", 0.9)).attach(opt)  # the warm-up step is the event; then outside the window
            return model, opt
        return f

    def snip(make_opt):
        def f():
            model = build(device)
            opt = make_opt(model.parameters())
            window = {"type": "iterative", "start_step": 0, "end_step": 100000, "frequency": 50000}
            session = Pruning(model, oneshot_cfg("4x1", 0.9, criterion="snip_momentum", scheduler=window)).attach(opt)
            _prime_masks(session, model, 0.9)
            return model, opt
        return f

    def wns():
        from torch.ao.pruning import WeightNormSparsifier

        model = build(device)
        sparsifier = WeightNormSparsifier(sparsity_level=0.9, sparse_block_shape=(1, 1), zeros_per_block=1)
        sparsifier.prepare(model, [{"tensor_fqn": f"{n}.weight"} for n in linear_names(model)])
        sparsifier.step()
        return model, sgd(model.parameters())

    def hooks():
        from torch.nn.utils import prune

        model = build(device)
        for n in linear_names(model):
            prune.l1_unstructured(model.get_submodule(n), "weight", amount=0.9)
        return model, sgd(model.parameters())

    return [
        ("SGD dense", dense(sgd)),
        ("SGD prunekit magnitude 1x1 (after last event)", magnitude(sgd)),
        ("SGD prunekit snip_momentum 4x1 (in window)", snip(sgd)),
        ("SGD torch.ao WeightNormSparsifier (parametrized)", wns),
        ("SGD torch.nn.utils.prune (forward pre-hook)", hooks),
        ("AdamW dense", dense(adamw)),
        ("AdamW prunekit magnitude 1x1 (after last event)", magnitude(adamw)),
        ("AdamW prunekit snip_momentum 4x1 (in window)", snip(adamw)),
    ]


def bench_steps(steps: int, rounds: int, device: str) -> list[tuple[str, float, float]]:
    """``(name, median ms, median ratio to the dense step of the same optimizer and round)``."""
    built = [(name, make()) for name, make in _variants(device)]
    times: dict[str, list[float]] = {name: [] for name, _ in built}
    ratios: dict[str, list[float]] = {name: [] for name, _ in built}
    for r in range(rounds):
        order = built if r % 2 == 0 else built[::-1]  # interleaved, alternating order
        this: dict[str, float] = {}
        for name, (model, opt) in order:
            this[name] = time_steps(model, opt, steps, device)
            times[name].append(this[name])
        for name in this:
            dense = this["AdamW dense" if name.startswith("AdamW") else "SGD dense"]
            ratios[name].append(this[name] / dense)
    return [(name, statistics.median(times[name]), statistics.median(ratios[name])) for name, _ in built]


def _prunekit_update(model: nn.Module, saved: dict, pattern: str, target: float, scope: str) -> Callable[[], object]:
    model.load_state_dict(saved)
    session = Pruning(model, oneshot_cfg(pattern, target, scope))

    def run() -> None:
        session.on_before_optimizer_step()
        session.on_after_optimizer_step()

    return run


Factory = Callable[[], Callable[[], object]]


def _update_cases(device: str) -> list[tuple[str, Factory, str, Factory]]:
    """``(prunekit case, factory, peer name, factory)``: a factory resets the weights and returns the update to run."""
    from torch.ao.pruning import WeightNormSparsifier
    from torch.nn.utils import prune

    model = build(device)
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    def mine(pattern: str, target: float, scope: str) -> Factory:
        return lambda: _prunekit_update(model, saved, pattern, target, scope)

    def wns(level: float, block: tuple[int, int], zeros: int) -> Factory:
        def factory() -> Callable[[], object]:
            model.load_state_dict(saved)
            sp = WeightNormSparsifier(sparsity_level=level, sparse_block_shape=block, zeros_per_block=zeros)
            sp.prepare(model, [{"tensor_fqn": f"{n}.weight"} for n in linear_names(model)])

            def run() -> None:
                sp.step()

            run.cleanup = sp.squash_mask  # type: ignore[attr-defined]
            return run
        return factory

    def global_unstructured() -> Callable[[], object]:
        fresh = build(device)
        params = [(fresh.get_submodule(n), "weight") for n in linear_names(fresh)]
        return lambda: prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.9)

    return [
        ("1x1 local", mine("1x1", 0.9, "local"), "WeightNormSparsifier (1,1) 0.9", wns(0.9, (1, 1), 1)),
        ("1x1 global", mine("1x1", 0.9, "global"), "prune.global_unstructured 0.9", global_unstructured),
        ("4x1 local", mine("4x1", 0.9, "local"), "WeightNormSparsifier (4,1) 0.9", wns(0.9, (4, 1), 4)),
        ("2:4 local (0.5)", mine("2:4", 0.5, "local"), "WeightNormSparsifier 2:4 (1,4)/2", wns(1.0, (1, 4), 2)),
    ]


def _run(factory: Factory, measure: Callable[[Callable[[], object], str], float | None], device: str) -> float | None:
    run = factory()
    value = measure(run, device)
    getattr(run, "cleanup", lambda: None)()
    return value  # the next measurement collects the garbage first


def _median(values: list[float | None]) -> float | None:
    return statistics.median(values) if values and all(v is not None for v in values) else None  # type: ignore[type-var]


def bench_updates(device: str, repeats: int, memory: bool) -> list[tuple[str, float | None, str, float | None]]:
    """Rows ``(prunekit case, value, peer, value)``: seconds (median of ``repeats``, prunekit and peer
    interleaved) or, with ``memory``, peak extra MiB of one run each."""
    measure = peak_extra_mib if memory else seconds
    rows = []
    for label, mine, peer_name, peer in _update_cases(device):
        ours, theirs = [], []
        for _ in range(1 if memory else repeats):
            ours.append(_run(mine, measure, device))
            theirs.append(_run(peer, measure, device))
        rows.append((label, _median(ours), peer_name, _median(theirs)))
    return rows


def bench_scale(device: str, repeats: int, memory: bool) -> list[tuple[str, int, float | None]]:
    """Rows ``(case, parameters, seconds or peak extra MiB)`` of prunekit's 1x1 update at every scale."""
    measure = peak_extra_mib if memory else seconds
    rows = []
    for label, width in SCALES.items():
        model = build(device, width)
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        n = DEPTH * width * width
        for scope in ("local", "global"):
            values = [_run(functools.partial(_prunekit_update, model, saved, "1x1", 0.9, scope), measure, device)
                      for _ in range(1 if memory else repeats)]
            rows.append((f"{label} 1x1 {scope}", n, _median(values)))
        del model, saved
        gc.collect()
    return rows


#: (label, pattern, criterion, scope, target) of the single-layer section
SINGLE_CASES = [
    ("magnitude 1x1 local", "1x1", "magnitude", "local", 0.9),
    ("magnitude 1x1 global", "1x1", "magnitude", "global", 0.9),
    ("magnitude 4x1 local", "4x1", "magnitude", "local", 0.9),
    ("magnitude 1x2 local", "1x2", "magnitude", "local", 0.9),
    ("snip 4x4 global", "4x4", "snip", "global", 0.9),
    ("snip 2:4 local (0.5)", "2:4", "snip", "local", 0.5),
    ("magnitude 2:4 local (0.25)", "2:4", "magnitude", "local", 0.25),
    ("gradient channelx1 global (0.5)", "channelx1", "gradient", "global", 0.5),
    ("magnitude 1xchannel local (0.5)", "1xchannel", "magnitude", "local", 0.5),
    ("snip_momentum 4x1 local", "4x1", "snip_momentum", "local", 0.9),
]


def _single_update(model: nn.Module, saved: torch.Tensor, pattern: str, target: float, scope: str, criterion: str) -> Callable[[], object]:
    """One layer's weights reset, gradients ready (snip_momentum: one step accumulated); returns the event."""
    layer = model[0]
    with torch.no_grad():
        layer.weight.copy_(saved)
    layer.weight.grad = None
    window = {"type": "iterative", "start_step": 0, "end_step": 1, "frequency": 1} if criterion == "snip_momentum" else None
    session = Pruning(model, oneshot_cfg(pattern, target, scope, criterion, scheduler=window))
    if criterion != "magnitude":
        x = torch.randn(2, layer.in_features, device=saved.device, dtype=saved.dtype)
        model(x).float().sum().backward()
    if criterion == "snip_momentum":  # step 0 accumulates the scores; the event is at step 1
        session.on_before_optimizer_step()
        session.on_after_optimizer_step()

    def run() -> None:
        session.on_before_optimizer_step()
        session.on_after_optimizer_step()

    run.cleanup = session.close  # type: ignore[attr-defined]
    return run


def bench_single(device: str, shape: tuple[int, int], dtypes: list[str], repeats: int, memory: bool) -> list[tuple[str, str, float | None]]:
    """Rows ``(case, dtype, seconds or peak extra MiB)`` of one event on a single ``shape`` layer."""
    measure = peak_extra_mib if memory else seconds
    rows, cols = shape
    out = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(cols, rows, bias=False)).to(device=device, dtype=dtype)
        saved = model[0].weight.detach().clone()
        small = nn.Sequential(nn.Linear(cols, 64, bias=False)).to(device=device, dtype=dtype)
        small_saved = small[0].weight.detach().clone()
        for label, pattern, criterion, scope, target in SINGLE_CASES:
            if memory:  # the same event on a small layer first: one-time costs (kernel code pages) are not the layer's
                _run(functools.partial(_single_update, small, small_saved, pattern, target, scope, criterion), seconds, device)
            factory = functools.partial(_single_update, model, saved, pattern, target, scope, criterion)
            values = [_run(factory, measure, device) for _ in range(1 if memory else repeats)]
            out.append((label, dtype_name, _median(values)))
        del model, saved, small, small_saved
        gc.collect()
    return out


def _single_args(args: argparse.Namespace) -> tuple[tuple[int, int], list[str]]:
    """The single layer's shape (default: as many parameters as the largest scale, 3 x width^2:
    16384 x 12288 = 201M for width 8192) and dtypes."""
    if args.single_layer:
        rows, cols = (int(v) for v in args.single_layer.lower().split("x"))
    else:
        width = max(SCALES.values())
        rows, cols = 2 * width, 3 * width // 2
        args.single_layer = f"{rows}x{cols}"  # for the memory child
    return (rows, cols), [d for d in args.single_layer_dtypes.split(",") if d]


def _memory_runs(args: argparse.Namespace, skip: set[str], threads: int) -> tuple[list, list, list]:
    """The memory rows of :func:`bench_updates`, :func:`bench_scale` and :func:`bench_single`, from a
    ``--memory-child`` process."""
    if {"updates", "scale", "single"} <= skip:
        return [], [], []
    if args.device.startswith("cuda"):  # the CUDA allocator's own statistics: no child needed
        shape, dtypes = _single_args(args)
        return (bench_updates(args.device, 1, memory=True) if "updates" not in skip else [],
                bench_scale(args.device, 1, memory=True) if "scale" not in skip else [],
                bench_single(args.device, shape, dtypes, 1, memory=True) if "single" not in skip else [])
    argv = [__file__, '--memory-child', '--threads', str(threads), '--device', args.device, '--skip', ','.join(skip),
            '--single-layer', args.single_layer, '--single-layer-dtypes', args.single_layer_dtypes]
    code = (f"import sys; sys.argv = {argv!r}; "
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench_pruner as b; "
            f"b.WIDTH, b.BATCH, b.SCALES = {WIDTH!r}, {BATCH!r}, {SCALES!r}; b.main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return ([tuple(r) for r in result["updates"]], [tuple(r) for r in result["scale"]],
            [tuple(r) for r in result["single"]])


def _print_tables(steps, update_times, update_mem, scale_times, scale_mem, single_times, single_mem, shape, rounds: int, repeats: int) -> None:
    pruned_mib = DEPTH * WIDTH * WIDTH * 4 / 2**20
    if steps:
        print(f"{'training step (median of %d rounds)' % rounds:<52} {'ms':>9} {'vs dense':>9}")
        for name, t, ratio in steps:
            print(f"{name:<52} {t * 1e3:>9.1f} {(ratio - 1) * 100:>+8.1f}%")

    def frac(mib: float | None, nbytes: float) -> str:
        return f"{mib * 2**20 / nbytes:>8.2f}" if mib is not None else f"{'n/a':>8}"

    if update_times:
        update_mem = update_mem or [(None, None, None, None)] * len(update_times)
        print(f"\n{'mask update (median of %d)' % repeats:<18} {'prunekit ms':>11} {'/pruned':>8} "
              f"{'peer':<34} {'peer ms':>9} {'/pruned':>8} {'speed-up':>8}")
        for (label, t, peer, pt), (_, mib, _, pmib) in zip(update_times, update_mem):
            nbytes = pruned_mib * 2**20
            print(f"{label:<18} {t * 1e3:>11.1f} {frac(mib, nbytes)} {peer:<34} {pt * 1e3:>9.1f} "
                  f"{frac(pmib, nbytes)} {pt / t:>7.1f}x")
        print("(/pruned: peak extra memory of the update, in units of the pruned weights' bytes; one run each)")

    if scale_times:
        scale_mem = scale_mem or [(None, None, None)] * len(scale_times)
        print(f"\n{'scale (1x1 at 0.9, median of 2)':<24} {'params':>12} {'ms':>9} {'ns/param':>9} {'/pruned':>8}")
        for (label, n, t), (_, _, mib) in zip(scale_times, scale_mem):
            print(f"{label:<24} {n:>12,} {t * 1e3:>9.1f} {t / n * 1e9:>9.2f} {frac(mib, 4 * n)}")

    if single_times:
        single_mem = single_mem or [(None, None, None)] * len(single_times)
        rows, cols = shape
        print(f"\nsingle layer: one Linear({cols}, {rows}), {rows * cols:,} parameters; one event, one run each")
        print(f"{'case':<34} {'dtype':<9} {'ms':>9} {'/weights':>8}")
        for (label, dtype_name, t), (_, _, mib) in zip(single_times, single_mem):
            nbytes = rows * cols * getattr(torch, dtype_name).itemsize
            print(f"{label:<34} {dtype_name:<9} {t * 1e3:>9.1f} {frac(mib, nbytes)}")
        print("(/weights: peak extra memory of the event in units of the layer's weight bytes; the promise is 0.5)")


def _summary(results: dict[tuple[int, str], dict]) -> None:
    """One line per setting: the speed-ups of the four updates and the step overheads (the targets)."""
    print("\nsummary (targets: updates >= 10x for 1x1 local/global, >= 5x for 4x1 and 2:4; "
          "steps: magnitude <= +5%, snip_momentum <= +15%)")
    labels = ["1x1 local", "1x1 global", "4x1 local", "2:4 local (0.5)"]
    steps = ["SGD prunekit magnitude 1x1 (after last event)", "SGD prunekit snip_momentum 4x1 (in window)",
             "AdamW prunekit magnitude 1x1 (after last event)", "AdamW prunekit snip_momentum 4x1 (in window)"]
    print(f"{'threads':>7} {'load':<6} " + " ".join(f"{l:>16}" for l in labels) + " " + " ".join(f"{s.split()[0] + ' ' + s.split()[2]:>18}" for s in steps))
    for (threads, load), r in results.items():
        ups = {label: pt / t for label, t, _, pt in r["updates"]}
        over = {name: ratio - 1 for name, _, ratio in r["steps"]}
        cells = [f"{ups[l]:>15.1f}x" if l in ups else f"{'-':>16}" for l in labels]
        cells += [f"{over[s] * 100:>+17.1f}%" if s in over else f"{'-':>18}" for s in steps]
        print(f"{threads:>7} {load:<6} " + " ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the step benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each mask update (median is shown)")
    add_setting_arguments(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: steps,updates,scale,single,memory")
    parser.add_argument("--single-layer", default=None, metavar="ROWSxCOLS",
                        help="the single layer of the single-layer section (default: 16384x12288, 201M parameters, "
                             "as many as the largest scale)")
    parser.add_argument("--single-layer-dtypes", default="float32,bfloat16", help="weight dtypes of the single-layer section")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    shape, dtypes = _single_args(args)
    if args.memory_child:
        torch.set_num_threads(int(args.threads))
        unmap_freed_blocks()
        freeze_library_objects()
        print(json.dumps({
            "updates": bench_updates(args.device, 1, memory=True) if "updates" not in skip else [],
            "scale": bench_scale(args.device, 1, memory=True) if "scale" not in skip else [],
            "single": bench_single(args.device, shape, dtypes, 1, memory=True) if "single" not in skip else [],
        }))
        return
    torch.set_num_threads(thread_counts(args.threads)[0])
    freeze_library_objects()
    print_machine(args.device)
    pruned_mib = DEPTH * WIDTH * WIDTH * 4 / 2**20
    print(f"\nmodel: {DEPTH} x Linear({WIDTH}, {WIDTH}), batch {BATCH}; pruned weights {pruned_mib:.0f} MiB")

    results: dict[tuple[int, str], dict] = {}
    memory_of: dict[int, tuple[list, list, list]] = {}
    for n, load in settings(args.threads, args.load):
        if n not in memory_of:  # memory in a child process (module docstring), once per thread count: not per load
            memory_of[n] = ([], [], []) if "memory" in skip else _memory_runs(args, skip, n)
        memory = memory_of[n]
        with busy_core(args.busy if load == "busy" else None) as described:
            print(f"\n=== {n} torch thread{'s' if n > 1 else ''}, {described} ===\n", flush=True)
            steps = bench_steps(args.steps, args.rounds, args.device) if "steps" not in skip else []
            update_times = bench_updates(args.device, args.repeats, memory=False) if "updates" not in skip else []
            scale_times = bench_scale(args.device, 2, memory=False) if "scale" not in skip else []
            single_times = bench_single(args.device, shape, dtypes, 1, memory=False) if "single" not in skip else []
        _print_tables(steps, update_times, memory[0], scale_times, memory[1], single_times, memory[2], shape, args.rounds, args.repeats)
        sys.stdout.flush()
        results[(n, load)] = {"steps": steps, "updates": update_times}
    if len(results) > 1 and not {"steps", "updates"} <= skip:
        _summary(results)


if __name__ == "__main__":
    main()
