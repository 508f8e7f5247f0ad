"""PostTrainingDataSparsity and TrainingAwareDataSparsity under a real Trainer.fit (CPU)."""

from __future__ import annotations

import copy
import importlib
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("lightning")
import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from prunekit.data import DataNormSparsifier  # noqa: E402
from prunekit.errors import RegistryError  # noqa: E402
from prunekit.integrations.lightning import (  # noqa: E402
    PostTrainingDataSparsity,
    TrainingAwareDataSparsity,
    find_model,
)
from prunekit.schedulers.data import GammaDataScheduler  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:lightning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:lightning"),
    pytest.mark.filterwarnings("ignore::FutureWarning:lightning"),
]

GAMMA_ARGS = {"gamma": 2.0, "threshold_sl": 0.8}


def backbone() -> nn.Sequential:
    # biases and normalization layers throughout; shapes divisible by (1, 4) blocks
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4), nn.LayerNorm(4), nn.Linear(4, 2))


class Counter(nn.Module):
    """A metric-like child: state, no parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(()))


class Wrapped(pl.LightningModule):
    """Keeps its network under an attribute that is not called `model`."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = backbone()
        self.seen = Counter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_step(self, batch: Any, index: int) -> torch.Tensor:
        x, y = batch
        self.seen.count += 1
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, index: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class Flat(Wrapped):
    """Parameters spread over two children: the LightningModule itself is the model."""

    def __init__(self) -> None:
        super().__init__()
        del self.backbone
        self.encoder = nn.Linear(8, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.encoder(x)))


def loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 2, (64,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=16)


def trainer(tmp_path: Path, epochs: int, callbacks: list[Any], checkpoint: bool = False) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=checkpoint,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )


class Snapshot(pl.Callback):
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:  # runs before on_fit_end
        self.state = copy.deepcopy(pl_module.state_dict())


def expected_zeros(shape: torch.Size, level: float, block: int = 4) -> float:
    numel = shape.numel()
    row = numel if len(shape) == 1 else shape[-1]
    blocks = (numel // row) * -(-row // block)
    return round(level * blocks) * block / numel if row % block == 0 else float("nan")


def test_post_training_sparsifies_a_copy_and_leaves_the_trained_model_untouched(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, snapshot = Wrapped(), Snapshot()
    post = PostTrainingDataSparsity(DataNormSparsifier, {"sparsity_level": 0.5, "sparse_block_shape": (1, 4)})
    trainer(tmp_path, 2, [post, snapshot]).fit(module, loader(), loader())
    after = module.state_dict()
    assert all(torch.equal(after[k], v) for k, v in snapshot.state.items()), "the trained model changed"
    sparse = post.sparsified
    assert sparse is not None and sparse is not module.backbone and not sparse.training
    names = [n for n, _ in module.backbone.named_parameters()]
    assert sorted(post.sparsity) == sorted(names) and "0.bias" in names and "1.weight" in names
    for name, param in sparse.named_parameters():
        mask = post.data_sparsifier.get_mask(name)
        assert torch.equal(param.detach() == 0, ~mask | (dict(module.backbone.named_parameters())[name].detach() == 0))
        want = expected_zeros(param.shape, 0.5)
        if want == want:
            assert post.sparsity[name] == pytest.approx(want), name
    assert sparse(torch.randn(3, 8)).shape == (3, 2)


def test_the_model_is_found_without_an_attribute_name(tmp_path: Path) -> None:
    wrapped, flat = Wrapped(), Flat()
    assert find_model(wrapped) is wrapped.backbone
    assert find_model(flat) is flat
    assert find_model(wrapped, "backbone.0") is wrapped.backbone[0]
    assert find_model(flat, lambda m: m.head) is flat.head
    with pytest.raises(AttributeError, match=r"model_attr='model': Wrapped has no attribute 'model'; its child modules: backbone, seen"):
        find_model(wrapped, "model")
    with pytest.raises(TypeError, match="model_attr returned int; it must return the nn.Module"):
        find_model(wrapped, lambda m: 3)
    post = PostTrainingDataSparsity(DataNormSparsifier, {"sparsity_level": 0.5})
    trainer(tmp_path, 1, [post]).fit(flat, loader())
    assert sorted(post.sparsity) == ["encoder.bias", "encoder.weight", "head.bias", "head.weight"]
    assert isinstance(post.sparsified, Flat) and post.sparsified is not flat and post.sparsified._trainer is None


class CountingSparsifier(DataNormSparsifier):
    loads = 0

    def load_state_dict(self, state_dict: Any, strict: bool = True) -> Any:
        type(self).loads += 1
        return super().load_state_dict(state_dict, strict)


def test_training_aware_schedule_follows_base_times_gamma_to_the_epoch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    CountingSparsifier.loads = 0
    module = Wrapped()
    aware = TrainingAwareDataSparsity(CountingSparsifier, {"sparsity_level": 0.1}, GammaDataScheduler, GAMMA_ARGS)
    trainer(tmp_path, 4, [aware]).fit(module, loader())
    assert [h["epoch"] for h in aware.history] == [0, 1, 2, 3]
    for entry in aware.history:
        want = min(0.8, 0.1 * 2.0 ** entry["epoch"])
        assert all(v == pytest.approx(want) for v in entry["sparsity_level"].values())
        assert entry["sparsity"]["0.weight"] == pytest.approx(expected_zeros(torch.Size([16, 8]), want))
    assert CountingSparsifier.loads == 3, "the sparsifier state is restored at the start of epochs 1..3"
    assert aware.data_scheduler.last_epoch == 4 and aware.data_sparsifier._step_count == 4
    assert aware.data_sparsifier.squashed == list(aware.data_sparsifier.data_groups), "squashed at train end"
    for name, param in aware.sparsified.named_parameters():
        assert bool((param.detach()[~aware.data_sparsifier.get_mask(name)] == 0).all())
    assert (aware.sparsified[0].weight == 0).float().mean().item() == pytest.approx(expected_zeros(torch.Size([16, 8]), 0.8))
    assert bool((module.backbone[0].weight != 0).all()), "the trained model is untouched"


@pytest.mark.parametrize("on_train_epoch_end", [True, False], ids=["saved-at-epoch-end", "saved-after-validation"])
def test_state_survives_a_checkpoint_and_resume(tmp_path: Path, on_train_epoch_end: bool) -> None:
    def callback() -> TrainingAwareDataSparsity:
        return TrainingAwareDataSparsity(DataNormSparsifier, {"sparsity_level": 0.1}, "gamma", GAMMA_ARGS)

    torch.manual_seed(0)
    straight = callback()
    trainer(tmp_path / "a", 4, [straight]).fit(Wrapped(), loader(), loader())

    torch.manual_seed(0)
    first = callback()
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=on_train_epoch_end)
    trainer(tmp_path / "b", 2, [first, saver], checkpoint=True).fit(Wrapped(), loader(), loader())
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(last, weights_only=True)  # plain values only
    assert saved["callbacks"]["TrainingAwareDataSparsity"]["data_scheduler"]["gamma"] == 2.0

    resumed = callback()
    trainer(tmp_path / "c", 4, [resumed], checkpoint=True).fit(Wrapped(), loader(), loader(), ckpt_path=last)
    assert [h["sparsity_level"] for h in resumed.history] == [h["sparsity_level"] for h in straight.history]
    assert resumed.data_scheduler.state_dict() == straight.data_scheduler.state_dict()
    for name in straight.data_sparsifier.data_groups:
        assert torch.equal(resumed.data_sparsifier.get_mask(name), straight.data_sparsifier.get_mask(name)), name
    for (name, a), (_, b) in zip(straight.sparsified.named_parameters(), resumed.sparsified.named_parameters()):
        assert torch.equal(a, b), name


def test_resume_catches_up_an_epoch_end_the_checkpoint_missed() -> None:
    module = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    early = TrainingAwareDataSparsity(DataNormSparsifier, {"sparsity_level": 0.1}, GammaDataScheduler, GAMMA_ARGS)
    early.on_train_start(types.SimpleNamespace(current_epoch=0), module)
    early.on_train_epoch_end(types.SimpleNamespace(current_epoch=0), module)
    state = early.state_dict()
    assert state["epochs_done"] == 1
    late = TrainingAwareDataSparsity(DataNormSparsifier, {"sparsity_level": 0.1}, GammaDataScheduler, GAMMA_ARGS)
    late.load_state_dict(copy.deepcopy(state))
    late.on_train_start(types.SimpleNamespace(current_epoch=2), module)  # epoch 1 finished after the save
    assert late._epochs_done == 2 and late.data_scheduler.last_epoch == 2
    assert [h["sparsity_level"]["0.weight"] for h in late.history] == [0.1, 0.2]
    odd = TrainingAwareDataSparsity(DataNormSparsifier, {"sparsity_level": 0.1}, GammaDataScheduler, GAMMA_ARGS)
    odd.load_state_dict(copy.deepcopy(state))
    with pytest.warns(UserWarning, match="covers 1 epochs but training resumes at epoch 5"):
        odd.on_train_start(types.SimpleNamespace(current_epoch=5), module)
    with pytest.raises(ValueError, match="missing data_scheduler, epochs_done"):
        odd.load_state_dict({"data_sparsifier": {}})


def test_callback_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="the class, not an instance"):
        PostTrainingDataSparsity(DataNormSparsifier(), {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not contain 'data_list'"):
        PostTrainingDataSparsity(DataNormSparsifier, {"data_list": []})
    with pytest.raises(ValueError, match="must not contain 'data_sparsifier'"):
        TrainingAwareDataSparsity(DataNormSparsifier, {}, "gamma", {"data_sparsifier": None, "gamma": 2.0})
    with pytest.raises(TypeError, match="BaseDataScheduler subclass or the registered name"):
        TrainingAwareDataSparsity(DataNormSparsifier, {}, "iterative", {})
    with pytest.raises(RegistryError, match="did you mean 'gamma'"):
        TrainingAwareDataSparsity(DataNormSparsifier, {}, "gama", {})
    assert TrainingAwareDataSparsity(DataNormSparsifier, {}, "step", {"step_size": 1, "gamma": 2.0}).data_scheduler_class.__name__ == "StepDataScheduler"


def test_data_names_narrow_the_selection() -> None:
    module = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    post = PostTrainingDataSparsity(DataNormSparsifier, {"sparsity_level": 0.5}, data_names=[r"weight$"])
    post.on_fit_end(None, module)
    assert sorted(post.sparsity) == ["0.weight", "1.weight"]
    none = PostTrainingDataSparsity(DataNormSparsifier, {}, data_names=["nothing"])
    with pytest.raises(ValueError, match="no parameter of Sequential matches data_names; its parameters: 0.weight"):
        none.on_fit_end(None, module)


def test_import_error_names_the_extra_and_pytorch_lightning_is_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "prunekit.integrations.lightning")
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    with pytest.raises(ImportError, match=r"needs Lightning: pip install 'prunekit\[lightning\]'"):
        importlib.import_module("prunekit.integrations.lightning")
    monkeypatch.setitem(sys.modules, "pytorch_lightning", pl)
    fallback = importlib.import_module("prunekit.integrations.lightning")
    assert issubclass(fallback.PostTrainingDataSparsity, pl.Callback)
