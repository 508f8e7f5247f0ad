"""PruningCallback under a real Lightning Trainer.fit on CPU: target, resume, accumulation, logging."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from prunekit.integrations.lightning import PruningCallback  # noqa: E402

CONFIG = {
    "pruners": [
        {
            "name": "hidden",
            "op_names": [r"net\.0$", r"net\.2$"],
            "pattern": "1x1",
            "criterion": "snip_momentum",
            "target_sparsity": 0.75,
            "scheduler": {"type": "iterative", "start_step": 2, "end_step": 10, "frequency": 2, "decay": "exp"},
        }
    ]
}


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    y = x[:, :4].argmax(1)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)


def trainer(tmp_path, callbacks, **kwargs) -> "pl.Trainer":
    return pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=pl.loggers.CSVLogger(tmp_path),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def pruned_weights(module) -> dict[str, torch.Tensor]:
    return {"net.0": module.net[0].weight.detach().clone(), "net.2": module.net[2].weight.detach().clone()}


def sparsity(weights) -> float:
    return sum(int((w == 0).sum()) for w in weights.values()) / sum(w.numel() for w in weights.values())


def test_fit_reaches_the_target_and_logs_sparsity(tmp_path):
    callback = PruningCallback(CONFIG)
    model = Classifier()
    fit = trainer(tmp_path, [callback], max_epochs=2, enable_checkpointing=False)
    fit.fit(model, loader())
    assert [r.step for r in callback.pruning.history] == [2, 4, 6, 8, 10]
    assert sparsity(pruned_weights(model)) == pytest.approx(0.75, abs=1e-3)
    assert callback.pruning.global_step == 16
    assert float(fit.logged_metrics["sparsity/hidden"]) == pytest.approx(0.75, abs=1e-3)


def test_resuming_a_checkpoint_without_the_pruning_state_is_refused(tmp_path):
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [ckpt], max_epochs=1).fit(Classifier(), loader())
    with pytest.raises(Exception, match="pruning session is at step 0 but the Trainer at step 8"):
        trainer(tmp_path, [PruningCallback(CONFIG)], max_epochs=2, enable_checkpointing=False).fit(
            Classifier(), loader(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
        )


def test_checkpoint_and_resume_match_an_uninterrupted_run(tmp_path):
    full = Classifier()
    trainer(tmp_path / "full", [PruningCallback(CONFIG)], max_epochs=2, enable_checkpointing=False).fit(full, loader())

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1)
    first = Classifier()
    trainer(tmp_path / "cut", [PruningCallback(CONFIG), ckpt], max_epochs=1).fit(first, loader())  # "killed" after epoch 1 (step 8)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    state = saved["callbacks"]["prunekit.PruningCallback"]
    assert state["global_step"] == 8 and [r["step"] for r in state["history"]] == [2, 4, 6]  # step 8 not taken yet

    resumed_callback = PruningCallback(CONFIG)
    resumed = Classifier()
    trainer(tmp_path / "cut", [resumed_callback], max_epochs=2, enable_checkpointing=False).fit(
        resumed, loader(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert [r.step for r in resumed_callback.pruning.history] == [2, 4, 6, 8, 10]
    for name, weight in pruned_weights(full).items():
        other = pruned_weights(resumed)[name]
        assert torch.equal(weight == 0, other == 0), name
        assert torch.allclose(weight, other, atol=1e-6), name


def test_gradient_accumulation_gives_the_expected_event_steps(tmp_path):
    callback = PruningCallback(CONFIG)
    model = Classifier()
    fit = trainer(tmp_path, [callback], max_epochs=4, accumulate_grad_batches=2, enable_checkpointing=False)
    fit.fit(model, loader())
    assert fit.global_step == 16 and callback.pruning.global_step == 16
    assert [r.step for r in callback.pruning.history] == [2, 4, 6, 8, 10]
    assert sparsity(pruned_weights(model)) == pytest.approx(0.75, abs=1e-3)


def test_logged_sparsity_equals_the_saved_weights(tmp_path):
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    model = Classifier()
    trainer(tmp_path, [PruningCallback(CONFIG), ckpt], max_epochs=2).fit(model, loader())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    weights = {name: saved["state_dict"][f"{name}.weight"] for name in ("net.0", "net.2")}
    import csv

    rows = list(csv.DictReader(open(next((tmp_path / "lightning_logs").rglob("metrics.csv")))))
    epoch_values = [float(r["sparsity/hidden"]) for r in rows if r.get("sparsity/hidden")]
    assert epoch_values[-1] == pytest.approx(sparsity(weights), abs=1e-9)
    masks = saved["callbacks"]["prunekit.PruningCallback"]["groups"]["hidden"]["masks"]
    for name, weight in weights.items():
        assert torch.equal(weight == 0, ~masks[name])


def test_a_submodule_left_in_eval_mode_is_warned_about_at_train_start(tmp_path):
    import warnings

    class WithDropout(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.net.append(nn.Dropout(0.1))
            self.net.eval()  # what from_pretrained() returns

    with pytest.warns(UserWarning, match=r"1 dropout / batch-norm module\(s\) .* in eval mode \(e\.g\. net\.5\).*call \.train\(\)"):
        trainer(tmp_path, [PruningCallback(CONFIG)], max_steps=1, enable_checkpointing=False).fit(WithDropout(), loader())
    model = WithDropout()
    model.net.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|num_workers).*")
        trainer(tmp_path, [PruningCallback(CONFIG)], max_steps=1, enable_checkpointing=False).fit(model, loader())
