"""PruningCallback under a real Lightning Trainer.fit on CPU: target, resume, accumulation, logging."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from prunekit.integrations.lightning import PruningCallback  # noqa: E402
import prunekit as pk  # noqa: E402

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


def test_the_same_callback_resumes_in_a_second_fit(tmp_path):
    """A callback that already ran a fit (its session finalized) takes the checkpoint's state into the new fit."""
    callback = PruningCallback(CONFIG)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1)
    trainer(tmp_path / "a", [callback, ckpt], max_epochs=1).fit(Classifier(), loader())
    assert [r.step for r in callback.pruning.history] == [2, 4, 6]
    trainer(tmp_path / "b", [callback], max_epochs=2, enable_checkpointing=False).fit(
        Classifier(), loader(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert [r.step for r in callback.pruning.history] == [2, 4, 6, 8, 10] and callback.pruning.global_step == 16


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
        warnings.filterwarnings("ignore", message=".*(pruning schedule needs|before the schedule ended).*")  # 1 step on purpose
        trainer(tmp_path, [PruningCallback(CONFIG)], max_steps=1, enable_checkpointing=False).fit(model, loader())


HF_YAML = r"""
pruners:
  - name: ffn
    op_names: ['^bert\.encoder\.layer\.\d+\.(intermediate|output)\.dense$']
    excluded_op_names: ['^classifier$']
    target_sparsity: 0.5
    scheduler: {type: iterative, start_step: 0, end_step: 4, frequency: 2}
"""


class WrapsAHuggingFaceModel(pl.LightningModule):
    """What Lightning users write: the Hugging Face model as self.model, so its names gain 'model.'."""

    def __init__(self) -> None:
        super().__init__()
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(0)
        config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=16, num_labels=2)
        self.model = transformers.BertForSequenceClassification(config)

    def training_step(self, batch, batch_idx):
        ids, labels = batch
        return self.model(input_ids=ids, labels=labels).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def token_loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (32, 12), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids, ids[:, 0] % 2), batch_size=8)


def test_root_selects_the_same_layers_as_the_trainer_sees(tmp_path):
    module = WrapsAHuggingFaceModel()
    trainer_view = pk.Pruning(module.model, HF_YAML)  # what the Hugging Face Trainer callback builds
    expected = [layer.name for group in trainer_view.groups for layer in group.layers]
    trainer_view.close()
    assert expected == [f"bert.encoder.layer.{i}.{part}.dense" for i in range(2) for part in ("intermediate", "output")]

    callback = PruningCallback(HF_YAML, root="model")
    trainer(tmp_path, [callback], max_steps=6, enable_checkpointing=False).fit(module, token_loader())
    assert [layer.name for group in callback.pruning.groups for layer in group.layers] == expected
    assert [r.step for r in callback.pruning.history] == [0, 2, 4]
    ffn = [module.model.get_submodule(name).weight for name in expected]
    assert sum(int((w == 0).sum()) for w in ffn) / sum(w.numel() for w in ffn) == pytest.approx(0.5, abs=1e-3)


def test_without_root_the_error_says_how_to_select_inside_the_model(tmp_path):
    module = WrapsAHuggingFaceModel()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(pk.PruningError, match=r"match the names below 'model'.*root='model'"):
        trainer(tmp_path, [PruningCallback(HF_YAML)], max_steps=2, enable_checkpointing=False).fit(module, token_loader())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    with pytest.raises(pk.PruningError, match=r"has no submodule 'net'.*children: model"):
        trainer(tmp_path, [PruningCallback(HF_YAML, root="net")], max_steps=2, enable_checkpointing=False).fit(module, token_loader())
    with pytest.raises(ValueError, match="attribute path"):
        PruningCallback(HF_YAML, root=".model")
