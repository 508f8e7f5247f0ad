"""PruningTrainerCallback under a real transformers Trainer on a tiny GPT-2 built from a config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from prunekit.config import load_config as pk_load  # noqa: E402
from prunekit.integrations.transformers import STATE_FILE, PruningTrainerCallback  # noqa: E402

CONFIG = {
    "pruners": [
        {
            "name": "mlp",
            "op_names": [r"\.mlp\.c_fc$", r"\.mlp\.c_proj$"],
            "op_types": ["Conv1D"],
            "pattern": "1x1",
            "criterion": "snip_momentum",
            "target_sparsity": 0.75,
            "scheduler": {"type": "iterative", "start_step": 2, "end_step": 10, "frequency": 2, "decay": "cos"},
        }
    ]
}


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, length: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config)


class StopAt(transformers.TrainerCallback):
    """Simulates a killed job: training stops right after the checkpoint of `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


def make_trainer(out: Path, callbacks: list, accumulation: int = 1, batch: int = 8) -> "transformers.Trainer":
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=14,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        learning_rate=3e-3,
        logging_steps=2,
        save_strategy="steps",
        save_steps=6,
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=TokenData(), callbacks=callbacks)


def pruned_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(("mlp.c_fc.weight", "mlp.c_proj.weight"))}


def test_trainer_reaches_the_target_and_logs_sparsity(tmp_path):
    callback = PruningTrainerCallback(CONFIG)
    trainer = make_trainer(tmp_path, [callback])
    trainer.train()
    weights = pruned_weights(trainer.model)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros / sum(w.numel() for w in weights.values()) == pytest.approx(0.75, abs=1e-3)
    assert [r.step for r in callback.pruning.history] == [2, 4, 6, 8, 10]
    logged = [h for h in trainer.state.log_history if "sparsity/mlp" in h]
    assert logged and logged[-1]["sparsity/mlp"] == pytest.approx(0.75, abs=1e-3)
    # the checkpoint holds the pruning state next to the weights
    assert (tmp_path / "checkpoint-6" / STATE_FILE).is_file()


def test_reported_sparsity_equals_the_saved_weights(tmp_path):
    from safetensors.torch import load_file

    callback = PruningTrainerCallback(CONFIG)
    trainer = make_trainer(tmp_path, [callback])
    trainer.train()
    saved = load_file(str(tmp_path / "checkpoint-14" / "model.safetensors"))
    state = torch.load(tmp_path / "checkpoint-14" / STATE_FILE, weights_only=True)
    for name, mask in state["groups"]["mlp"]["masks"].items():
        weight = saved[f"{name}.weight"]
        assert torch.equal(weight == 0, ~mask)  # every pruned weight is zero in the saved checkpoint
    logged = [h for h in trainer.state.log_history if "sparsity/mlp" in h][-1]["sparsity/mlp"]
    measured = sum(int((saved[f"{n}.weight"] == 0).sum()) for n in state["groups"]["mlp"]["masks"])
    total = sum(saved[f"{n}.weight"].numel() for n in state["groups"]["mlp"]["masks"])
    assert logged == pytest.approx(measured / total, abs=1e-9)


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path):
    full = make_trainer(tmp_path / "full", [PruningTrainerCallback(CONFIG)])
    full.train()

    first = make_trainer(tmp_path / "cut", [PruningTrainerCallback(CONFIG), StopAt(6)])
    first.train()
    assert first.state.global_step == 6
    resumed_callback = PruningTrainerCallback(CONFIG)
    resumed = make_trainer(tmp_path / "cut", [resumed_callback])
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-6"))
    assert [r.step for r in resumed_callback.pruning.history] == [2, 4, 6, 8, 10]
    for name, weight in pruned_weights(full.model).items():
        other = pruned_weights(resumed.model)[name]
        assert torch.equal(weight == 0, other == 0), name
        assert torch.allclose(weight, other, atol=1e-6), name


def test_gradient_accumulation_gives_the_expected_event_steps(tmp_path):
    callback = PruningTrainerCallback(CONFIG)
    trainer = make_trainer(tmp_path, [callback], accumulation=4, batch=2)
    trainer.train()
    assert trainer.state.global_step == 14
    assert [r.step for r in callback.pruning.history] == [2, 4, 6, 8, 10]


def test_resume_without_the_pruning_state_is_a_clear_error(tmp_path):
    first = make_trainer(tmp_path, [StopAt(6)])
    first.train()
    with pytest.raises(Exception, match="no pruning state was found"):
        make_trainer(tmp_path, [PruningTrainerCallback(CONFIG)]).train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))


def test_fallback_for_releases_without_optimizer_events_uses_the_step_hooks(tmp_path, monkeypatch):
    import prunekit.integrations.transformers as module

    monkeypatch.setattr(module, "_HAS_OPTIMIZER_EVENTS", False)
    callback = PruningTrainerCallback(CONFIG)
    trainer = make_trainer(tmp_path, [callback])
    trainer.train()
    assert [r.step for r in callback.pruning.history] == [2, 4, 6, 8, 10]
    weights = pruned_weights(trainer.model)
    assert sum(int((w == 0).sum()) for w in weights.values()) / sum(w.numel() for w in weights.values()) == pytest.approx(0.75, abs=1e-3)


def test_checkpoints_can_also_be_saved_in_compact_form(tmp_path):
    from safetensors.torch import load_file

    import prunekit as pk
    from prunekit.sparse_checkpoint import SPARSE_FILE

    callback = PruningTrainerCallback(CONFIG, save_sparse=True)
    trainer = make_trainer(tmp_path, [callback])
    trainer.train()
    assert [s.path for s in callback.sparse_saves] == [tmp_path / f"checkpoint-{n}" / SPARSE_FILE for n in (6, 12, 14)]
    final = callback.sparse_saves[-1]
    assert {f"transformer.h.{i}.mlp.{n}.weight" for i in range(2) for n in ("c_fc", "c_proj")} <= set(final.compacted)
    assert final.aliases == ["lm_head.weight"]  # tied to the token embeddings: stored once
    dense = load_file(str(tmp_path / "checkpoint-14" / "model.safetensors"))
    decoded = pk.load_sparse(tmp_path / "checkpoint-14")
    assert all(torch.equal(decoded[name], tensor) for name, tensor in dense.items())
    fresh = tiny_gpt2()
    pk.load_sparse(tmp_path / "checkpoint-14", into=fresh)
    ids = TokenData().ids[:2]
    trainer.model.eval()
    fresh.eval()
    assert torch.equal(fresh(ids).logits, trainer.model(ids).logits)


def test_the_trainer_logs_each_target_at_the_global_step_the_plan_names(tmp_path):
    from prunekit.registry import get_scheduler

    callback = PruningTrainerCallback(CONFIG)
    trainer = make_trainer(tmp_path, [callback])
    trainer.args.logging_steps = 1
    trainer.train()
    group = pk_load(CONFIG).pruners[0]
    scheduler = get_scheduler(group.scheduler)
    plan = {event.step + 1: scheduler.ratio_at_event(event, group.target_sparsity) for event in scheduler.events()}
    logged = {h["step"]: h["sparsity/mlp"] for h in trainer.state.log_history if "sparsity/mlp" in h and "loss" in h}
    for reached_at, target in plan.items():  # `prunekit plan`'s "reached at global_step" column
        assert logged[reached_at] == pytest.approx(target, abs=2e-3)
        assert logged[reached_at - 1] < target or target == 0


def test_a_run_too_short_for_the_schedule_is_warned_about(tmp_path):
    callback = PruningTrainerCallback(CONFIG)  # last event at step 10: needs 11 optimizer steps
    trainer = make_trainer(tmp_path, [callback])
    trainer.args.max_steps = 10
    with pytest.warns(UserWarning, match=r"max_steps is 10 optimizer steps, but the pruning schedule needs 11"):
        trainer.train()


HEADS = {"pruners": [{"name": "heads", "pattern": "head", "op_names": [r"\.attn$"], "criterion": "snip_momentum", "target_sparsity": 0.5,
                      "scheduler": {"type": "iterative", "start_step": 2, "end_step": 10, "frequency": 4}}]}


def test_heads_are_pruned_gradually_and_resume_exactly_under_the_trainer(tmp_path):
    full_callback = PruningTrainerCallback(HEADS)
    full = make_trainer(tmp_path / "full", [full_callback])
    full.train()
    first = make_trainer(tmp_path / "cut", [PruningTrainerCallback(HEADS), StopAt(6)])
    first.train()
    resumed_callback = PruningTrainerCallback(HEADS)
    resumed = make_trainer(tmp_path / "cut", [resumed_callback])
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-6"))
    assert [r.step for r in resumed_callback.pruning.history] == [2, 6, 10]
    for name, units in full_callback.pruning.groups[0].pruned_units.items():
        assert int(units.sum()) == 1 and torch.equal(units, resumed_callback.pruning.groups[0].pruned_units[name])  # 1 of 2 heads
    for name, mask in full_callback.pruning.masks.items():
        assert torch.equal(mask, resumed_callback.pruning.masks[name]), name
