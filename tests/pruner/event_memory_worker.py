"""Peak extra memory of one mask update per case (launched by test_event_memory.py): ``python event_memory_worker.py ROWS COLS CASE...``.

``CASE`` is ``pattern:criterion:scope:target:dtype`` (the pattern may itself hold a colon, ``2:4``: it
is split from the right). Prints one JSON object: ``{"skip": reason}``, or ``{"cases": {CASE:
{"extra": peak extra bytes / weight bytes, "sparsity": ...}}}``; ``snip_momentum`` cases also give
``"step_extra"`` (the peak of a step that only accumulates scores) and ``"step_kept"`` (what the
first accumulating step leaves resident besides the accumulated scores themselves), in the same unit.

Measured as ``benchmarks/bench_pruner.py`` does: glibc returns every block of 64 KiB or more to the OS
at once (``M_MMAP_THRESHOLD``, set before torch is imported), so the high-water mark of the resident
set (``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``) above the resident set before the
event sees every temporary. Before each measured event, a warm-up event with the same config runs on
a small layer, so that the one-time costs of a fresh process (the code pages of every PyTorch kernel
used for the first time, ~10 MiB; the widening buffers of ``prunekit.pruner.masks``, allocated once
per process) are not charged to the layer. Everything the measured event allocates is charged: its
chunk-sized scores and flags, the pruner's scratch buffers, the grid.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _machine import reset_peak, status_kib, unmap_freed_blocks  # noqa: E402  (the benchmarks' probes; no torch import)


def main() -> None:
    if not unmap_freed_blocks():
        print(json.dumps({"skip": "glibc mallopt(M_MMAP_THRESHOLD) is unavailable"}))
        return
    if status_kib("VmHWM") is None or not reset_peak():
        print(json.dumps({"skip": "/proc/self/clear_refs or VmHWM is unavailable"}))
        return
    import torch
    from torch import nn

    import prunekit as pk

    torch.set_num_threads(int(os.environ.get("PRUNEKIT_TEST_THREADS", "1")))  # 2: one large layer in pieces on workers
    rows, cols = int(sys.argv[1]), int(sys.argv[2])
    results = {}
    for case in sys.argv[3:]:
        pattern, criterion, scope, target, dtype_name = case.rsplit(":", 4)
        dtype = getattr(torch, dtype_name)
        momentum = criterion == "snip_momentum"
        # snip_momentum: steps 0 and 1 accumulate (step 0 is also an event at ratio 0), step 2 is the event
        schedule = {"type": "iterative", "start_step": 0, "end_step": 2, "frequency": 2} if momentum else {"type": "oneshot"}
        config = {"pruners": [{"pattern": pattern, "criterion": criterion, "scope": scope, "target_sparsity": float(target), "scheduler": schedule}]}

        def prepared(out_features: int) -> tuple[nn.Module, pk.Pruning]:
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(cols, out_features, bias=False)).to(dtype)
            session = pk.Pruning(model, config)
            if criterion != "magnitude":
                model(torch.randn(2, cols, dtype=dtype)).float().sum().backward()
            return model, session

        def step(session: pk.Pruning) -> tuple[int, int, int]:
            """One optimizer step of the session: (RSS before, peak, RSS after), KiB."""
            gc.collect()
            before = status_kib("VmRSS")
            reset_peak()
            session.on_before_optimizer_step()
            session.on_after_optimizer_step()
            peak = status_kib("VmHWM")
            return before, peak, status_kib("VmRSS")

        small, warm = prepared(64)  # warm-up: the same steps on a small layer
        for _ in range(3 if momentum else 1):
            step(warm)
        warm.close()
        del small, warm
        model, session = prepared(rows)
        weight_bytes = rows * cols * dtype.itemsize
        result = {}
        if momentum:
            before, _, after = step(session)  # the first accumulation (and an event at ratio 0)
            scores = sum(t.numel() * t.element_size() for g in session.groups for t in g.scores.values())
            result["step_kept"] = ((after - before) * 1024 - scores) / weight_bytes
            before, peak, _ = step(session)  # a step that only accumulates
            result["step_extra"] = (peak - before) * 1024 / weight_bytes
        before, peak, _ = step(session)  # the event
        result.update(extra=(peak - before) * 1024 / weight_bytes, sparsity=session.report().rows[0].sparsity)
        results[case] = result
        session.close()
        del model, session
        gc.collect()
    print(json.dumps({"cases": results}))


if __name__ == "__main__":
    main()
