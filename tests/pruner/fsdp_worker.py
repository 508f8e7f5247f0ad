"""One rank of the FSDP2 tests (launched by test_fsdp.py): ``python fsdp_worker.py RANK WORLD STORE OUT SCENARIO [ARG]``.

``WORLD`` 1 is the unsharded reference (one process, no ``fully_shard``, no process group). Every
rank trains on its slice of the same global batch (FSDP2 averages the gradients), so the runs
differ only in how the model is sharded. ``STORE`` is a file path for gloo's rendezvous; the ranks
meet at a barrier before the group is destroyed (no aborts at exit).

``SCENARIO`` is a comma-separated list, run one after the other in the same processes; ``OUT.RANK``
receives JSON ``{scenario: result}`` (the gathered masks as 0/1 lists, history, report, whether
pruned weights and their momentum are zero on this rank, the most bytes of masks and scores this
rank held). ``NAME@32-50-30-22`` picks other layer sizes (shards that cut through blocks).

* ``train:NAME``: train ``STEPS`` steps with config ``CONFIGS[NAME]``;
* ``ties:NAME``: no training; weights rounded to a few values (many exact ties, across shard
  boundaries), one event (``prune_now``);
* ``save:NAME``: train ``SAVE_AT`` steps, save model, optimizer and pruning state with
  ``torch.distributed.checkpoint`` into ``ARG``;
* ``resume:NAME``: load that checkpoint (any world size) and train on to ``STEPS``;
* ``hfsave:NAME`` / ``hfresume:NAME``: the same through ``PruningTrainerCallback`` (the Trainer's calls);
* ``refuse:-``: the messages for what cannot be pruned shard by shard.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

SIZES = (32, 48, 24, 24)
#: ``PRUNEKIT_TEST_DEVICE=cuda``: NCCL, rank k on cuda:k (the CUDA variant of the tests)
DEVICE = torch.device("cpu")
STEPS, SAVE_AT, BATCH = 12, 5, 12

CONFIGS: dict[str, dict[str, Any]] = {
    "1x1_global": {"pattern": "1x1", "scope": "global", "criterion": "magnitude", "target_sparsity": 0.7,
                   "min_sparsity_per_op": 0.3, "max_sparsity_per_op": 0.95,
                   "scheduler": {"type": "iterative", "start_step": 1, "end_step": 9, "frequency": 2}},
    "4x1_snip_momentum": {"pattern": "4x1", "scope": "global", "criterion": "snip_momentum", "target_sparsity": 0.75,
                          "scheduler": {"type": "iterative", "start_step": 1, "end_step": 9, "frequency": 2, "decay": "exp"}},
    "2:4": {"pattern": "2:4", "scope": "local", "criterion": "snip", "target_sparsity": 0.5,
            "scheduler": {"type": "iterative", "start_step": 2, "end_step": 8, "frequency": 3}},
    "1xchannel": {"pattern": "1xchannel", "scope": "global", "criterion": "magnitude", "target_sparsity": 0.5,
                  "scheduler": {"type": "iterative", "start_step": 1, "end_step": 7, "frequency": 3}},
    "channelx1": {"pattern": "channelx1", "scope": "global", "criterion": "snip_momentum", "target_sparsity": 0.5,
                  "scheduler": {"type": "iterative", "start_step": 1, "end_step": 7, "frequency": 3}},
    "channelx1_local": {"pattern": "channelx1", "scope": "local", "criterion": "magnitude", "target_sparsity": 0.5,
                        "scheduler": {"type": "oneshot", "start_step": 0}},
    "8x1": {"pattern": "8x1", "scope": "global", "criterion": "snip_momentum", "target_sparsity": 0.6,
            "scheduler": {"type": "iterative", "start_step": 1, "end_step": 9, "frequency": 4}},
    "2x2_local": {"pattern": "2x2", "scope": "local", "criterion": "magnitude", "target_sparsity": 0.6,
                  "scheduler": {"type": "iterative", "start_step": 0, "end_step": 6, "frequency": 3}},
    "2x1_global": {"pattern": "2x1", "scope": "global", "criterion": "magnitude", "target_sparsity": 0.6,
                   "scheduler": {"type": "oneshot", "start_step": 0}},
    # a criterion that declares no inputs (scores are scanned for NaN/inf at each event), on every layer / the first
    "score_only": {"pattern": "1x1", "scope": "global", "criterion": "score_only", "target_sparsity": 0.6,
                   "scheduler": {"type": "iterative", "start_step": 1, "end_step": 7, "frequency": 3}},
    "score_only_first": {"op_names": ["^0$"], "pattern": "1x1", "criterion": "score_only", "target_sparsity": 0.6,
                         "scheduler": {"type": "iterative", "start_step": 1, "end_step": 7, "frequency": 3}},
    # structured units: attention heads (in_proj rows on several ranks, out_proj columns on all) and FFN channels
    "units": {"pruners": [
        {"name": "heads", "pattern": "head", "criterion": "snip_momentum", "target_sparsity": 0.5,
         "scheduler": {"type": "iterative", "start_step": 1, "end_step": 9, "frequency": 4}},
        {"name": "ffn", "pattern": "channel", "scope": "global", "criterion": "magnitude", "target_sparsity": 0.5,
         "scheduler": {"type": "iterative", "start_step": 1, "end_step": 9, "frequency": 4}},
    ]},
    "4x1_local": {"pattern": "4x1", "scope": "local", "criterion": "magnitude", "target_sparsity": 0.6,
                  "scheduler": {"type": "oneshot", "start_step": 0}},
    "1x1_local": {"pattern": "1x1", "scope": "local", "criterion": "magnitude", "target_sparsity": 0.55,
                  "scheduler": {"type": "oneshot", "start_step": 0}},
}


def _register_score_only() -> None:
    from prunekit.pruner.criteria import Criterion
    from prunekit.registry import CRITERIA

    if "score_only" in CRITERIA:
        return

    @CRITERIA.register("score_only")
    class ScoreOnly(Criterion):
        """|w|, defined by score() alone (inputs() is None: each event scans its scores)."""

        name = "score_only"

        def score(self, weight: torch.Tensor, grad: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
            return weight.detach().abs().float()


def config_of(name: str) -> dict[str, Any]:
    config = CONFIGS[name]
    return config if "pruners" in config else {"pruners": [config]}


class Encoder(nn.Module):
    """Two ``nn.TransformerEncoderLayer`` (d_model 32, 4 heads, FFN 48) and a linear head: heads and FFN channels."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 48, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(32, SIZES_TF[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x.view(x.shape[0], 4, 8).repeat(1, 1, 4))).mean(1)


#: the Encoder's input and output sizes (``NAME@tf``)
SIZES_TF = (32, 6)


def model_for(world: int, sizes: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    if sizes == SIZES_TF:
        model = Encoder().to(DEVICE)
        if world > 1:
            from torch.distributed.fsdp import fully_shard

            for layer in model.encoder.layers:
                fully_shard(layer)
            fully_shard(model)
        return model
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    model = nn.Sequential(*layers).to(DEVICE)
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for module in model:
            if isinstance(module, nn.Linear):
                fully_shard(module)
        fully_shard(model)
    return model


def global_batch(step: int, sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(BATCH, sizes[0], generator=g).to(DEVICE), torch.randn(BATCH, sizes[-1], generator=g).to(DEVICE)


def local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if hasattr(t, "_local_tensor") else t


def state_bytes(session: Any) -> int:
    """Bytes of the masks and scores this rank keeps."""
    return sum(m.numel() * m.element_size() for g in session.groups for m in g.mask8.values()) + sum(
        s.numel() * s.element_size() for g in session.groups for s in g.scores.values()
    )


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range, rank: int, world: int, sizes: tuple[int, ...], session: Any) -> int:
    """Train on this rank's slice of each global batch; returns the most bytes of masks and scores seen."""
    peak = state_bytes(session)
    for step in steps:
        x, y = global_batch(step, sizes)
        per = BATCH // world
        xs, ys = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
        opt.zero_grad()
        nn.functional.mse_loss(model(xs), ys).backward()
        opt.step()
        peak = max(peak, state_bytes(session))
    return peak


def whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def pruned_stay_zero(session: Any, opt: torch.optim.Optimizer | None) -> bool:
    """This rank's pruned weights, and their optimizer state, are exactly zero."""
    ok = True
    for group in session.groups:
        for layer in group.layers:
            pruned = group.mask8[layer.name] == 0
            ok &= bool((local(layer.weight.detach())[pruned] == 0).all())
            if opt is not None:
                for value in opt.state.get(layer.weight, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == layer.weight.shape:
                        ok &= bool((local(value)[pruned] == 0).all())
    return ok


def result_of(session: Any, opt: torch.optim.Optimizer | None = None, peak: int = 0) -> dict[str, Any]:
    masks = {name: whole(mask).to(torch.uint8).tolist() for name, mask in session.masks.items()}
    report = session.report()
    return {
        "masks": masks,
        "history": [[r.step, r.target, r.sparsity, r.layers] for r in session.history],
        "report": [[r.name, list(r.shape), r.sparsity, r.numel] for r in report],
        "sparsity": report.sparsity,
        "zero": pruned_stay_zero(session, opt),
        "state_bytes": peak,
    }


def ties_run(name: str, world: int, sizes: tuple[int, ...]) -> Any:
    from prunekit import Pruning

    model = model_for(world, sizes)
    with torch.no_grad():
        for p in model.parameters():
            local(p).mul_(8).round_().div_(8)  # values in steps of 1/8: many exact ties
    cfg = dict(CONFIGS[name])
    cfg["scheduler"] = {"type": "oneshot", "start_step": 0}
    cfg["criterion"] = "magnitude"
    session = Pruning(model, {"pruners": [cfg]})
    session.prune_now()
    return session


def refusals(world: int) -> dict[str, Any]:
    """The messages of what cannot be pruned shard by shard."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    from prunekit import Pruning

    out: dict[str, Any] = {}
    if world == 1:
        return {"skipped": "DTensors need a process group"}
    model = model_for(1, (8, 8, 4))
    mesh = init_device_mesh(DEVICE.type, (world,))
    model[0].weight = nn.Parameter(distribute_tensor(model[0].weight.detach(), mesh, [Replicate()]))
    from torch.distributed.fsdp import fully_shard

    late = model_for(1, (8, 8, 4))
    session = Pruning(late, {"pruners": [{"target_sparsity": 0.5}]})
    fully_shard(late)  # after the session: its masks are of whole weights
    try:
        session.report()
        out["late"] = "accepted"
    except Exception as err:  # noqa: BLE001
        out["late"] = f"{type(err).__name__}: {err}"
    session.close()
    try:
        from prunekit import slim

        slim(model_for(world, SIZES_TF))
        out["slim"] = "accepted"
    except Exception as err:  # noqa: BLE001
        out["slim"] = f"{type(err).__name__}: {err}"
    for key, cfg in (
        ("replicate", {"pruners": [{"op_names": ["^0$"], "target_sparsity": 0.5}]}),
        ("type", {"pruners": [{"op_names": ["^2$"], "type": "progressive", "target_sparsity": 0.5}]}),
    ):
        if key == "type":
            model = model_for(world, (8, 8, 4))
        try:
            Pruning(model, cfg)
            out[key] = "accepted"
        except Exception as err:  # noqa: BLE001
            out[key] = f"{type(err).__name__}: {err}"
    return out


def trainer_run(kind: str, name: str, rank: int, world: int, sizes: tuple[int, ...], folder: str) -> dict[str, Any]:
    """The Hugging Face Trainer's calls to PruningTrainerCallback, in its order (the Trainer itself cannot
    shard with FSDP2 on CPUs: Accelerate applies FSDP to GPU runs only): save at SAVE_AT, resume there."""
    from types import SimpleNamespace

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from prunekit.integrations.transformers import PruningTrainerCallback

    model = model_for(world, sizes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    callback = PruningTrainerCallback(config_of(name), log=False)
    checkpoint = f"{folder}/checkpoint-{SAVE_AT}"
    args = SimpleNamespace(output_dir=folder, resume_from_checkpoint=checkpoint if kind == "hfresume" else None)
    state = SimpleNamespace(global_step=0, max_steps=STEPS)
    if kind == "hfresume":  # the Trainer loads model and optimizer, then calls on_train_begin at the saved step
        model_sd, opt_sd = get_state_dict(model, opt)
        loaded = {"model": model_sd, "optim": opt_sd}
        dcp.load(loaded, checkpoint_id=f"{checkpoint}/train")
        set_state_dict(model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
        state.global_step = SAVE_AT
    callback.on_train_begin(args, state, None, model=model, optimizer=opt)
    first = state.global_step
    for step in range(first, SAVE_AT if kind == "hfsave" else STEPS):
        x, y = global_batch(step, sizes)
        per = BATCH // world
        opt.zero_grad()
        nn.functional.mse_loss(model(x[rank * per : (rank + 1) * per]), y[rank * per : (rank + 1) * per]).backward()
        callback.on_pre_optimizer_step(args, state, None)
        opt.step()
        callback.on_optimizer_step(args, state, None)
        state.global_step = step + 1
    if kind == "hfsave":
        model_sd, opt_sd = get_state_dict(model, opt)
        dcp.save({"model": model_sd, "optim": opt_sd}, checkpoint_id=f"{checkpoint}/train")
        callback.on_save(args, state, None)
    assert callback.pruning is not None
    return result_of(callback.pruning, opt)


def run_scenario(scenario: str, rank: int, world: int, arg: str | None) -> dict[str, Any]:
    from prunekit import Pruning

    kind, name = scenario.split(":", 1)
    sizes = SIZES
    if "@" in name:  # NAME@32-50-30-22: the layer sizes (NAME@tf: the Encoder)
        name, text = name.split("@")
        sizes = SIZES_TF if text == "tf" else tuple(int(v) for v in text.split("-"))
    if kind == "refuse":
        return refusals(world)
    if kind == "ties":
        return result_of(ties_run(name, world, sizes))
    if kind in ("hfsave", "hfresume"):
        assert arg is not None
        return trainer_run(kind, name, rank, world, sizes, f"{arg}/{scenario.split(':', 1)[1]}")
    model = model_for(world, sizes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    session = Pruning(model, config_of(name)).attach(opt)
    peak = 0
    if kind == "train":
        peak = train(model, opt, range(STEPS), rank, world, sizes, session)
    elif kind == "save":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        from prunekit.integrations.fsdp import save_pruning_state

        peak = train(model, opt, range(SAVE_AT), rank, world, sizes, session)
        model_sd, opt_sd = get_state_dict(model, opt)
        dcp.save({"model": model_sd, "optim": opt_sd}, checkpoint_id=f"{arg}/{scenario}/train")
        save_pruning_state(session, f"{arg}/{scenario}/pruning")
    elif kind == "resume":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        from prunekit.integrations.fsdp import load_pruning_state

        saved = f"{arg}/save:{name}" + (scenario[scenario.index("@"):] if "@" in scenario else "")
        train(model, opt, range(0), rank, world, sizes, session)
        model_sd, opt_sd = get_state_dict(model, opt)
        state = {"model": model_sd, "optim": opt_sd}
        dcp.load(state, checkpoint_id=f"{saved}/train")
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        load_pruning_state(session, f"{saved}/pruning")
        peak = train(model, opt, range(session.global_step, STEPS), rank, world, sizes, session)
    return result_of(session, opt, peak)


def main() -> None:
    rank, world, store, out, scenario = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    arg = sys.argv[6] if len(sys.argv) > 6 else None
    torch.set_num_threads(1)
    _register_score_only()
    global DEVICE
    cuda = os.environ.get("PRUNEKIT_TEST_DEVICE") == "cuda"
    if cuda:
        DEVICE = torch.device("cuda", rank)
        torch.cuda.set_device(DEVICE)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    results: dict[str, Any] = {}
    for one in scenario.split(","):
        try:
            results[one] = run_scenario(one, rank, world, arg)
        except Exception as err:  # noqa: BLE001 - the message is the test's evidence
            import traceback

            results[one] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            break  # the other ranks may be waiting in a collective: stop here
    result = results
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)
    if world > 1:
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
