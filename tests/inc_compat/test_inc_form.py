"""INC-form configs select what INC 3.7.1 selected and prune what it pruned (except where
docs/migrating_from_inc.md documents an intended difference)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.config.inc import INC_PRUNING_TYPES
from prunekit.pruner.selection import find_classifier_head


def quiet_config(config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pk.load_config(config)


@pytest.mark.parametrize("pruning_type", [t for t in INC_PRUNING_TYPES if t != "sparse_gpt"])
def test_every_training_time_pruning_type_maps_as_inc_mapped_it(pruning_type: str) -> None:
    kind, criterion = INC_PRUNING_TYPES[pruning_type]
    extra = {"start_step": 0, "end_step": 0} if kind == "pattern_lock" else {"start_step": 1, "end_step": 9, "pruning_frequency": 4}
    group = quiet_config({"pruning_type": pruning_type, "pattern": "4x1", **extra}).pruners[0]
    assert group.type == kind
    if criterion is not None:
        assert group.criterion == criterion


def test_retrain_free_says_it_is_not_implemented_and_what_to_use() -> None:
    with pytest.raises(pk.ConfigError, match="retrain-free pruning .* is not implemented.*sparse_gpt"):
        pk.load_config({"pruning_type": "retrain_free"})


def test_sparse_gpt_is_the_one_shot_type_with_incs_defaults_dropped() -> None:
    group = quiet_config({"pruning_type": "sparse_gpt", "target_sparsity": 0.5, "op_names": ["layers"]}).pruners[0]
    assert (group.type, group.pattern, group.target_sparsity) == ("sparse_gpt", "1x1", 0.5)  # INC's default 4x1 is not SparseGPT's
    assert quiet_config({"pruning_type": "sparse_gpt", "pattern": "2:4", "target_sparsity": 0.5}).pruners[0].pattern == "2:4"
    with pytest.raises(pk.ConfigError, match="sparse_gpt prunes unstructured"):
        pk.load_config({"pruning_type": "sparse_gpt", "pattern": "4x1"})


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 16)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(16, 4)  # INC's unanchored regex 'fc' also excluded fc1 and fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.fc2(self.fc1(x).relu()).relu()))


def test_the_head_is_excluded_by_the_module_not_by_an_unanchored_name() -> None:
    assert find_classifier_head(Classifier())[0] == "fc"  # a trailing Dropout is looked past, as INC did
    session = pk.Pruning(Classifier(), {"target_sparsity": 0.5})
    assert [layer.name for layer in session.groups[0].layers] == ["fc1", "fc2"]


def test_the_head_rule_follows_inc_and_can_be_turned_off() -> None:
    ends_in_relu = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU())
    assert find_classifier_head(ends_in_relu) is None  # INC excluded nothing then
    off = pk.Pruning(Classifier(), {"target_sparsity": 0.5, "exclude_head": False})
    assert [layer.name for layer in off.groups[0].layers] == ["fc1", "fc2", "fc"]
    native = pk.Pruning(Classifier(), {"pruners": [{"target_sparsity": 0.5}]})  # prunekit form: off unless asked
    assert [layer.name for layer in native.groups[0].layers] == ["fc1", "fc2", "fc"]
    asked = pk.Pruning(Classifier(), {"pruners": [{"target_sparsity": 0.5, "exclude_head": True}]})
    assert [layer.name for layer in asked.groups[0].layers] == ["fc1", "fc2"]


class TiedLM(nn.Module):
    """OPT-style: the lm_head shares its weight with the token embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(32, 16)
        self.fc1 = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, 32, bias=False)
        self.lm_head.weight = self.embed_tokens.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.fc1(self.embed_tokens(ids)).relu())


def test_a_head_tied_to_the_embeddings_leaves_the_embeddings_dense() -> None:
    model = TiedLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruning = pk.prepare_pruning(model, {"target_sparsity": 0.8, "pruning_type": "magnitude", "pruning_op_types": ["Linear", "Embedding"]}, optimizer)
    assert [layer.name for layer in pruning.groups[0].layers] == ["fc1"]
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randint(0, 32, (4, 5))).logsumexp(-1).mean().backward()
        optimizer.step()
    assert int(torch.count_nonzero(model.embed_tokens.weight)) == model.embed_tokens.weight.numel()
    assert (model.fc1.weight == 0).float().mean().item() == pytest.approx(0.8, abs=0.01)


def test_validate_names_the_auto_excluded_head(tmp_path, monkeypatch) -> None:
    from prunekit.cli import _describe_selection

    text = _describe_selection(Classifier(), pk.load_config({"target_sparsity": 0.5}))
    assert "fc (Linear): the classifier head, left dense (exclude_head)" in text


def test_subclasses_of_a_named_type_are_selected() -> None:
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    session = pk.Pruning(nn.Sequential(layer), {"pruners": [{"op_types": ["Linear"], "target_sparsity": 0.5}]})
    names = [layer.name for layer in session.groups[0].layers]
    assert "0.self_attn.out_proj" in names and {"0.linear1", "0.linear2"} <= set(names)
    session.prune_now()
    assert (layer.self_attn.out_proj.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_selectors_that_match_nothing_warn_in_inc_form_and_fail_in_prunekit_form() -> None:
    model = Classifier()
    inc = {"pruning_configs": [{"op_names": ["fc1"]}, {"op_names": ["pooler"]}, {"op_names": ["qa_outputs", "fc2"]}], "target_sparsity": 0.5}
    with pytest.warns(UserWarning) as record:
        session = pk.Pruning(model, inc)
    messages = " ".join(str(w.message) for w in record)
    assert "'pooler'" in messages and "'qa_outputs'" in messages and "prunes nothing" in messages
    assert [g.name for g in session.groups] == ["pruner0", "pruner2"]
    with pytest.raises(pk.PruningError, match="no layer matches"):
        pk.Pruning(model, {"pruners": [{"op_names": ["pooler"], "target_sparsity": 0.5}]})


def test_a_target_above_the_per_op_maximum_is_capped_with_one_warning_in_inc_form() -> None:
    with pytest.warns(UserWarning, match=r"capped at max_sparsity_ratio_per_op") as record:
        config = pk.load_config({"target_sparsity": 0.9, "max_sparsity_ratio_per_op": 0.6, "pruning_type": "magnitude",
                                 "pruning_configs": [{"op_names": ["fc1"]}, {"op_names": ["fc2"]}]})
    assert len([w for w in record if "capped" in str(w.message)]) == 1
    assert [g.target_sparsity for g in config.pruners] == [0.6, 0.6]
    model = Classifier()
    session = pk.Pruning(model, config)
    session.prune_now()
    assert [r.sparsity for r in session.report().rows] == pytest.approx([0.6, 0.6], abs=0.02)  # every layer at the maximum (4x1 blocks), as INC
    with pytest.raises(pk.ConfigError, match="exceeds max_sparsity_per_op"):
        pk.load_config({"pruners": [{"target_sparsity": 0.9, "max_sparsity_per_op": 0.6}]})


def test_regularization_and_lock_init_sparsity_keys() -> None:
    group = quiet_config({"reg_type": "group_lasso", "parameters": {"reg_coeff": 0.2}, "lock_init_sparsity": True}).pruners[0]
    assert group.regularizer.type == "group_lasso" and group.regularizer.reg_coeff == 0.2 and group.lock_init_sparsity
    assert quiet_config({"reg_type": "group_lasso", "reg_coeff": 0.1}).pruners[0].regularizer.reg_coeff == 0.1
    with pytest.raises(pk.ConfigError, match=r"reg_coeff: reg_coeff is given without reg_type"):
        pk.load_config({"reg_coeff": 0.1})
    with pytest.raises(pk.ConfigError, match=r"unknown regularizer type 'l1'"):
        pk.load_config({"reg_type": "l1"})


def test_pruning_op_types_as_a_string_is_one_class_name() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Conv1d(1, 1, 1), nn.Linear(8, 4), nn.ReLU())
    session = pk.Pruning(model, {"target_sparsity": 0.5, "pruning_op_types": "Linear"})
    assert [layer.name for layer in session.groups[0].layers] == ["0", "3"]  # INC took 'L','i',... and matched LayerNorm, Conv1d


def test_inc_hooks_exist_and_take_incs_arguments() -> None:
    model = Classifier()
    session = pk.prepare_pruning(model, {"target_sparsity": 0.5, "start_step": 1, "end_step": 1})
    session.on_train_begin(dataloader=[(torch.randn(2, 8), None)])
    session.on_epoch_begin(0)
    session.on_step_begin(0)
    model(torch.randn(2, 8)).sum().backward()
    session.on_before_optimizer_step()
    session.on_after_optimizer_step()
    session.on_step_end()
    session.on_epoch_end()
    session.on_before_eval()
    session.on_after_eval()
    session.on_train_end()
    assert session.global_step == 1
