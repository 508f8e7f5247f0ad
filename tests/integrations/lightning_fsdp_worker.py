"""Lightning with FSDP2 (``ModelParallelStrategy``, ``configure_model`` calls ``fully_shard``) on CPU, launched by
test_lightning_fsdp.py: ``python lightning_fsdp_worker.py DEVICES MODE FOLDER`` (Lightning starts the other ranks).

Every rank trains on its slice of the same global batch, so runs on different numbers of ranks see the same
data. ``MODE``: ``full`` (8 steps; ``ModelCheckpoint`` saves ``FOLDER/step=4.ckpt`` on the way, with the masks of
step 4 in ``FOLDER/step4-DEVICES.json``), ``resume`` (from that checkpoint to step 8). Rank 0 writes
``FOLDER/MODE-DEVICES.json``: the gathered masks and the history.
"""

from __future__ import annotations

import gc
import json
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from prunekit.integrations.lightning import PruningCallback

CONFIG = {"pruners": [{"pattern": "4x1", "criterion": "snip_momentum", "target_sparsity": 0.6,
                       "scheduler": {"type": "iterative", "start_step": 1, "end_step": 7, "frequency": 2}}]}
BATCH = 12


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 30), nn.Tanh(), nn.Linear(30, 10))

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for module in self.net:
            if isinstance(module, nn.Linear):
                fully_shard(module, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        per = BATCH // self.trainer.world_size
        rows = slice(self.global_rank * per, (self.global_rank + 1) * per)
        return nn.functional.mse_loss(self.net(x[rows]), y[rows])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class SaveMasks(pl.Callback):
    """Writes the gathered masks and history of step 4 (what the checkpoint of step 4 holds)."""

    def __init__(self, pruning: PruningCallback, folder: str, devices: int) -> None:
        self.pruning, self.folder, self.devices = pruning, folder, devices

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == 4:
            assert self.pruning.pruning is not None
            write(trainer, self.pruning.pruning, f"{self.folder}/step4-{self.devices}.json")


class Started(pl.Callback):
    """The step training (re)started at."""

    step = -1

    def on_train_start(self, trainer: pl.Trainer, *args: object) -> None:
        Started.step = trainer.global_step


def write(trainer: pl.Trainer, pruning: object, path: str) -> None:
    masks = {name: (m.full_tensor() if hasattr(m, "full_tensor") else m).to(torch.uint8).tolist() for name, m in pruning.masks.items()}  # type: ignore[attr-defined]
    history = [[r.step, r.target, r.sparsity] for r in pruning.history]  # type: ignore[attr-defined]
    if trainer.global_rank == 0:
        with open(path, "w") as f:
            json.dump({"masks": masks, "history": history, "sharded": pruning.sharded, "started": Started.step}, f)  # type: ignore[attr-defined]


def main() -> None:
    devices, mode, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    # 4 batches per epoch: the checkpoint of step 4 is at an epoch end, where Lightning resumes the loader exactly
    data = torch.utils.data.TensorDataset(torch.randn(4 * BATCH, 16, generator=g), torch.randn(4 * BATCH, 10, generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH)  # the same global batches on every rank
    callback = PruningCallback(CONFIG, root="net", log=False)
    callbacks: list[pl.Callback] = [callback, Started()]
    if mode == "full" and devices > 1:
        callbacks += [ModelCheckpoint(dirpath=folder, filename="{step}", every_n_train_steps=4, save_top_k=-1), SaveMasks(callback, folder, devices)]
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy=ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1),
        max_steps=8, callbacks=callbacks, logger=False, enable_checkpointing=len(callbacks) > 2,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False, default_root_dir=folder,
    )
    trainer.fit(Net(), loader, ckpt_path=f"{folder}/step=4.ckpt" if mode == "resume" else None)
    assert callback.pruning is not None
    write(trainer, callback.pruning, f"{folder}/{mode}-{devices}.json")
    if torch.distributed.is_initialized():  # release what holds the group, meet, destroy it (no aborts at exit)
        callback.pruning.close()
        del trainer, callback, callbacks
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
