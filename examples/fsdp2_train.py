"""Prune while training with FSDP2 (``fully_shard``), save and resume on another number of ranks.

    torchrun --nproc_per_node 2 examples/fsdp2_train.py --out /tmp/fsdp2-run --steps 40 --save-at 20
    torchrun --nproc_per_node 3 examples/fsdp2_train.py --out /tmp/fsdp2-run --steps 40 --resume

gloo on CPUs, NCCL on GPUs (one per rank). Every rank prunes the rows of the weights it holds; the
masks are those one process would compute. The model, the optimizer and the pruning state are
saved with ``torch.distributed.checkpoint`` (each rank writes its shards) and load on any number of
ranks. The last lines print the per-layer report (whole layers, reduced over the ranks).
"""

from __future__ import annotations

import argparse
import gc
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

import prunekit as pk
from prunekit.integrations.fsdp import load_pruning_state, save_pruning_state

CONFIG = """
pruners:
  - name: mlp
    op_types: [Linear]
    excluded_op_names: ['^4$']        # the output layer stays dense
    pattern: 4x1
    criterion: snip_momentum
    target_sparsity: 0.8
    scheduler: {type: iterative, start_step: 5, end_step: 30, frequency: 5, decay: exp}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="checkpoint folder")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-at", type=int, default=None, help="save here and stop")
    parser.add_argument("--resume", action="store_true", help="load the checkpoint in --out first")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10)).to(device)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)  # each Linear its own FSDP2 unit: weights become DTensor shards of rows
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pruning = pk.prepare_pruning(model, CONFIG, optimizer)  # selection sees nn.Linear (FSDP2's FSDPLinear too)

    if args.resume:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=f"{args.out}/train")
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        load_pruning_state(pruning, f"{args.out}/pruning")  # any number of ranks: shards are redistributed

    last = args.save_at if args.save_at is not None else args.steps
    for step in range(pruning.global_step, last):
        g = torch.Generator().manual_seed(step)  # the same global batch on every rank; each takes its share
        x, y = torch.randn(48, 64, generator=g), torch.randint(0, 10, (48,), generator=g)
        share = slice(rank * 48 // world, (rank + 1) * 48 // world)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[share].to(device)), y[share].to(device))
        loss.backward()
        optimizer.step()  # prunekit masks gradients and runs its events from the optimizer's hooks

    if args.save_at is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=f"{args.out}/train")
        save_pruning_state(pruning, f"{args.out}/pruning")
    report = pruning.report()  # a collective: every rank calls it
    if rank == 0:
        print(f"{world} ranks, step {pruning.global_step}")
        print(report)
    # release what holds the process group, then meet, then destroy it (gloo aborts at exit otherwise)
    pruning.close()
    del pruning, optimizer, model
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
