"""One rank of the DDP test (launched by test_distributed.py): ``python ddp_worker.py RANK WORLD STORE OUT``.

``STORE`` is a file path for gloo's rendezvous (a file store needs no free TCP port, so parallel runs
cannot collide). Every object that holds the process group (the DDP wrapper, its reducer) is released
and the ranks meet at a barrier before the group is destroyed: a DDP reducer that outlives its process
group makes gloo abort the interpreter at exit ("terminate called without an active exception").
"""

from __future__ import annotations

import gc
import json
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from prunekit.pruner import prepare_pruning
from pruner_helpers import batch, mlp

CFG = {
    "pruners": [
        {
            "criterion": "snip_momentum",
            "pattern": "4x1",
            "scope": "global",
            "target_sparsity": 0.8,
            "scheduler": {"type": "iterative", "start_step": 1, "end_step": 9, "frequency": 2, "decay": "exp"},
        }
    ]
}
MAGNITUDE = {"pruners": [{"scope": "global", "target_sparsity": 0.7, "min_sparsity_per_op": 0.2, "max_sparsity_per_op": 0.9}]}


def masks_agree(masks: dict[str, torch.Tensor], world: int) -> bool:
    agree = True
    for mask in masks.values():
        mine = mask if mask.is_floating_point() else mask.to(torch.uint8)
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
        agree &= all(torch.equal(g, gathered[0]) for g in gathered)
    return agree


def ddp_run(rank: int, world: int, result: dict[str, list]) -> None:
    """DDP, gradient criterion, global scope: every rank sees different data."""
    model = DistributedDataParallel(mlp(seed=0))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    session = prepare_pruning(model, CFG, opt)
    for step in range(11):
        x, y = batch(step * world + rank)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if session.history and session.history[-1].step == step:
            result["ddp_events"].append([step, session.history[-1].sparsity])
            result["ddp_agree"].append(masks_agree(session.masks, world))


#: one config per pruner type (and the regularizer): each must keep every rank's masks and weights identical
TYPE_CONFIGS = {
    "progressive": {"pruners": [{"type": "progressive", "pattern": "4x1", "criterion": "snip_momentum", "target_sparsity": 0.75,
                                 "scheduler": {"type": "iterative", "start_step": 0, "end_step": 8, "frequency": 4}}]},
    "block_mask": {"pruners": [{"type": "block_mask", "pattern": "channelx1", "scope": "global", "target_sparsity": 0.5,
                                "scheduler": {"type": "iterative", "start_step": 1, "end_step": 7, "frequency": 2}}]},
    "group_lasso": {"pruners": [{"pattern": "4x1", "target_sparsity": 0.5, "regularizer": {"type": "group_lasso", "reg_coeff": 1e-4},
                                 "scheduler": {"type": "iterative", "start_step": 0, "end_step": 6, "frequency": 2}}]},
    "pattern_lock": {"pruners": [{"type": "pattern_lock"}]},
}


def types_run(rank: int, world: int, result: dict[str, list]) -> None:
    """Every pruner type under DDP: identical masks and weights on every rank after each step."""
    for name, config in TYPE_CONFIGS.items():
        model = DistributedDataParallel(mlp(seed=0))
        if name == "pattern_lock":
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() == 2:
                        p.masked_fill_(p.abs() < 0.05, 0.0)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        session = prepare_pruning(model, config, opt)
        agree = True
        for step in range(10):
            x, y = batch(step * world + rank)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            agree &= masks_agree(session.masks, world) and masks_agree({n: p.detach() for n, p in model.named_parameters()}, world)
        zeros = sum(int((l.weight == 0).sum()) for g in session.groups for l in g.layers)
        result["types"].append([name, agree, len(session.history), zeros])
        session.finalize()
        del model, opt, session
        gc.collect()


def unsynchronized_run(rank: int, world: int, result: dict[str, list]) -> None:
    """Ranks with different weights (no DDP): rank 0's masks are broadcast; without sync they differ."""
    for key, sync in (("sync_agree", None), ("nosync_agree", False)):
        plain = mlp(seed=100 + rank)
        opt = torch.optim.SGD(plain.parameters(), lr=0.05)
        session = prepare_pruning(plain, MAGNITUDE, opt, sync_masks=sync)
        x, y = batch(rank)
        torch.nn.functional.mse_loss(plain(x), y).backward()
        opt.step()
        result[key].append(masks_agree(session.masks, world))
        for layer in session.groups[0].layers:
            assert (layer.weight.detach()[~session.masks[layer.name]] == 0).all()


def main() -> None:
    rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    result: dict[str, list] = {"ddp_events": [], "ddp_agree": [], "sync_agree": [], "nosync_agree": [], "types": []}
    ddp_run(rank, world, result)
    types_run(rank, world, result)
    unsynchronized_run(rank, world, result)
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    with open(out, "w") as fh:
        json.dump(result, fh)

if __name__ == "__main__":
    main()
