"""INC 3.7.1's PyTorch pruning tests, ported (``test/pruning_with_pt/pruning_2.x`` and ``pruning_2_plus.x``).

Each test keeps what INC's file checked (the configs, the hooks it calls, its asserts) with the
mechanical changes only: prunekit's imports, ``prepare_compression(model, config)`` ->
``pk.prepare_pruning(model, config)`` (the manual INC-style hooks) and ``prepare_pruning(model,
config, optimizer)`` as it was, manager attributes -> the session's. INC's torchvision models
(random weights) are replaced by small models with the same module names (``inc_models``). Then
each asserts what INC's tests never did: the element-wise sparsity reached per group, no pruned
weight non-zero, the classifier head dense. Not ported here: ``retrain_free``, ``sparse_gpt`` and
Wanda (post-training pruning, another issue), ``mha`` head pruning and ``model_slim`` (structured
pruning), and the parts that download Hugging Face models.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from inc_models import ResNet18Like, ViTLike, dummy_batches


def train_with_callbacks(model: nn.Module, config, epochs: int, steps: int, lr: float = 0.01) -> pk.Pruning:
    """INC's test loop: every hook, in INC's order (``compression_manager.callbacks`` -> the session)."""
    pruning = pk.prepare_pruning(model, config)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    pruning.on_train_begin()
    local_step = 0
    for epoch in range(epochs):
        model.train()
        pruning.on_epoch_begin(epoch)
        for image, target in dummy_batches(steps, seed=epoch):
            pruning.on_step_begin(local_step)
            loss = criterion(model(image), target)
            optimizer.zero_grad()
            loss.backward()
            pruning.on_before_optimizer_step()
            optimizer.step()
            pruning.on_after_optimizer_step()
            pruning.on_step_end()
            local_step += 1
        pruning.on_epoch_end()
    pruning.on_train_end()
    pruning.on_before_eval()
    model.eval()
    pruning.on_after_eval()
    return pruning


def group_sparsity(pruning: pk.Pruning) -> dict[str, float]:
    out: dict[str, list[int]] = {}
    for row in pruning.report().rows:
        acc = out.setdefault(row.pruner, [0, 0])
        acc[0] += round(row.sparsity * row.numel)
        acc[1] += row.numel
    return {name: zeros / total for name, (zeros, total) in out.items()}


def assert_no_regrowth(model: nn.Module, pruning: pk.Pruning) -> None:
    modules = dict(model.named_modules())
    for name, kept in pruning.masks.items():
        assert int(torch.count_nonzero(modules[name].weight.detach()[~kept])) == 0, name


def inc_config(pruning_configs: list[dict], **globals_) -> pk.WeightPruningConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # INC-form notes (capped targets, ignored decay) are tested elsewhere
        return pk.WeightPruningConfig(pruning_configs, **globals_)


def load(config) -> pk.PruningConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pk.load_config(config)


# ------------------------------------------------------------------ pruning_2.x/test_pruning.py
def test_pruning() -> None:
    """Three groups (8x2 magnitude_progressive, 2:4 snip_momentum, 5x1 snip_progressive), steps 1-10.
    INC's config carried an unsupported ``"false_key"``, which INC only logged; prunekit refuses
    unknown keys (see test_unknown_keys_are_refused_where_inc_logged_them)."""
    config = inc_config(
        [
            {"op_names": ["layer1.*"], "target_sparsity": 0.5, "pattern": "8x2", "pruning_type": "magnitude_progressive"},
            {"op_names": ["layer2.*"], "pattern": "2:4", "target_sparsity": 0.5},
            {"op_names": ["layer3.*"], "pruning_type": "snip_progressive", "pattern": "5x1", "target_sparsity": 0.7},
        ],
        target_sparsity=0.8, start_step=1, end_step=10,
    )
    model = ResNet18Like()
    pruning = train_with_callbacks(model, config, epochs=2, steps=10)
    got = group_sparsity(pruning)
    assert [g.config.type for g in pruning.groups] == ["progressive", "basic", "progressive"]
    assert got["pruner0"] == pytest.approx(0.5, abs=0.01)
    assert got["pruner1"] == pytest.approx(0.5, abs=0.01)
    assert got["pruner2"] == pytest.approx(0.7, abs=0.02)
    assert_no_regrowth(model, pruning)
    assert int(torch.count_nonzero(model.fc.weight)) == model.fc.weight.numel()  # the head stays dense


def test_unknown_keys_are_refused_where_inc_logged_them() -> None:
    with pytest.raises(pk.ConfigError, match=r"pruning_configs\[0\]\.false_key: unknown key 'false_key'"):
        pk.load_config(pk.WeightPruningConfig([{"op_names": ["layer1.*"], "false_key": "this is to test unsupported keys"}]))


# ------------------------------------------------------------------ pruning_2.x/test_pruning_config.py
def test_pruning_config() -> None:
    """INC asserted the resolved per-pruner values; here from the session's groups."""
    config = inc_config(
        [
            {"op_names": ["layer1.*", "layer2.*"], "excluded_op_names": ["downsample.*"], "target_sparsity": 0.6,
             "pattern": "channelx1", "pruning_type": "snip_progressive", "pruning_scope": "local", "start_step": 0, "end_step": 10},
            {"op_names": ["layer3.*"], "pruning_type": "pattern_lock"},
        ],
        target_sparsity=0.8, pruning_frequency=2,
    )
    model = ResNet18Like()
    pruning = train_with_callbacks(model, config, epochs=1, steps=12)
    first, second = pruning.groups
    assert first.config.scheduler.frequency == 2
    assert first.config.target_sparsity == 0.6
    assert first.config.pattern == "channelx1"
    assert second.config.type == "pattern_lock"
    assert not any("downsample" in layer.name for layer in first.layers)
    assert group_sparsity(pruning)["pruner0"] == pytest.approx(0.6, abs=0.02)
    assert group_sparsity(pruning)["pruner1"] == 0.0  # random weights have no zeros to lock
    assert_no_regrowth(model, pruning)


# ------------------------------------------------------------------ pruning_2.x/test_pruning_criteria.py
@pytest.mark.parametrize("linear_progressive", [False, True])
def test_pruning_criteria(linear_progressive: bool) -> None:
    """INC's two tests: magnitude_progressive 8x2, snip one-shot 2:4 at step 6, snip_momentum_progressive 4x1
    (frequency 4, min 0.5, max 0.8), cube decay; the second switched to progressive_type linear."""
    local = [
        {"op_names": ["layer1.*"], "excluded_op_names": ["downsample.*"], "target_sparsity": 0.5, "pattern": "8x2",
         "pruning_type": "magnitude_progressive", "pruning_scope": "local", "sparsity_decay_type": "cube"},
        {"op_names": ["layer3.*"], "excluded_op_names": ["downsample.*"], "pruning_type": "snip_momentum_progressive",
         "pattern": "4x1", "pruning_frequency": 4, "min_sparsity_ratio_per_op": 0.5, "max_sparsity_ratio_per_op": 0.8},
    ]
    if not linear_progressive:
        local.insert(1, {"op_names": ["layer2.*"], "target_sparsity": 0.5, "pattern": "2:4", "pruning_type": "snip", "start_step": 6, "end_step": 6})
    config = load(inc_config(local, target_sparsity=0.8, sparsity_decay_type="cube", start_step=1, end_step=10))
    if linear_progressive:  # INC mutated pruners[0].progressive_configs; prunekit: the config key
        config.pruners[0].progressive_type = "linear"
    model = ResNet18Like()
    pruning = train_with_callbacks(model, config, epochs=2, steps=10)
    got = group_sparsity(pruning)
    assert got["pruner0"] == pytest.approx(0.5, abs=0.01)
    assert got[pruning.groups[-1].name] == pytest.approx(0.8, abs=0.01)  # target 0.8, capped at max 0.8
    if not linear_progressive:
        assert got["pruner1"] == pytest.approx(0.5, abs=1e-9)
        assert [r.step for r in pruning.history if r.pruner == "pruner1"] == [6]
    assert_no_regrowth(model, pruning)


# ------------------------------------------------------------------ pruning_2.x/test_pruning_patterns.py
@pytest.mark.parametrize("first", [("5:8", "magnitude", 0.5), ("6:8", "magnitude_progressive", 0.75)])
def test_pruning_patterns_and_progressive(first: tuple[str, str, float]) -> None:
    """test_pruning_patterns.py (5:8) and test_pruning_progressive.py (6:8 progressive, the last group linear)."""
    pattern, kind, target = first
    config = load(inc_config(
        [
            {"op_names": ["layer1.*"], "target_sparsity": target, "pattern": pattern, "pruning_type": kind},
            {"op_names": ["layer2.*"], "pattern": "1xchannel", "pruning_scope": "global"},
            {"start_step": 2, "end_step": 20, "op_names": ["layer3.*"], "target_sparsity": 0.666666, "pattern": "4x2",
             "pruning_type": "snip_progressive", "pruning_frequency": 5},
        ],
        target_sparsity=0.8, sparsity_decay_type="cos", excluded_op_names=["downsample.*"], pruning_scope="local",
        min_sparsity_ratio_per_op=0.1, start_step=1, end_step=10,
    ))
    if kind.endswith("progressive"):
        config.pruners[-1].progressive_type = "linear"
    model = ResNet18Like()
    pruning = train_with_callbacks(model, config, epochs=5, steps=5)
    got = group_sparsity(pruning)
    assert got["pruner0"] == pytest.approx(target, abs=0.01)
    # 1xchannel: a block is a whole output row (1/16 of a layer) and max_sparsity_per_op 0.98 caps a layer at
    # 15 of its 16 rows, so the global budget lands within one block per layer (4 layers)
    assert got["pruner1"] == pytest.approx(0.8, abs=0.045)
    assert got["pruner2"] == pytest.approx(0.666666, abs=0.02)
    assert_no_regrowth(model, pruning)


# ------------------------------------------------------------------ pruning_2.x/test_pruning_regs.py
def test_pruning_regs() -> None:
    """The layer3 group adds group_lasso. INC's file wrote a top-level reg_coeff, which INC reset to 0 (only
    ``parameters: {reg_coeff}`` reached it); prunekit honours both."""
    config = inc_config(
        [
            {"op_names": ["layer1.*"], "target_sparsity": 0.5, "pattern": "8x2", "pruning_type": "magnitude_progressive"},
            {"op_names": ["layer2.*"], "pattern": "2:4", "target_sparsity": 0.5},
            {"op_names": ["layer3.*"], "pruning_type": "snip_progressive", "pattern": "5x1", "target_sparsity": 0.7,
             "reg_type": "group_lasso", "reg_coeff": 0.1},
        ],
        target_sparsity=0.8, start_step=1, end_step=10,
    )
    assert load(config).pruners[2].regularizer.reg_coeff == 0.1
    model = ResNet18Like()
    pruning = train_with_callbacks(model, config, epochs=2, steps=10)
    got = group_sparsity(pruning)
    assert got["pruner2"] >= 0.7 - 0.02  # the regularizer zeroes more than the masks: at least the target
    assert_no_regrowth(model, pruning)


# ------------------------------------------------------------------ pruning_2.x/test_pruning_schedulers.py
def test_pruning_schedulers() -> None:
    config = inc_config(
        [
            {"op_names": ["layer1.*"], "excluded_op_names": ["downsample.*"], "target_sparsity": 0.5, "pattern": "4x1",
             "pruning_type": "magnitude", "pruning_scope": "global", "start_step": 0, "end_step": 2},
            {"op_names": ["layer2.*"], "pattern": "32x1", "pruning_type": "snip_momentum", "pruning_scope": "local",
             "start_step": 1, "end_step": 10, "pruning_frequency": 2, "target_sparsity": 0.75, "sparsity_decay_type": "exp"},
        ],
        target_sparsity=0.9, start_step=0, end_step=10, pruning_frequency=1, sparsity_decay_type="exp",
    )
    model = ResNet18Like()
    pruning = train_with_callbacks(model, config, epochs=2, steps=10)
    got = group_sparsity(pruning)
    assert got == pytest.approx({"pruner0": 0.5, "pruner1": 0.75}, abs=0.02)
    assert [r.step for r in pruning.history if r.pruner == "pruner1"] == [1, 3, 5, 7, 9]
    assert_no_regrowth(model, pruning)


# ------------------------------------------------------------------ pruning_2.x/test_pruning_types.py
def test_pruning_types_pattern_lock_on_a_2_of_4_layer() -> None:
    """INC ran pattern_lock 2:4 on layer4 and only printed per-layer zero fractions; INC's own run turned a
    2:4-sparse layer into 100% zeros. Here layer4 is 2:4-sparse first, and stays exactly so."""
    model = ResNet18Like()
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.startswith("layer4") and isinstance(module, nn.Conv2d):
                w = module.weight
                view = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1, 4).clone()  # [out, k·k·in] in groups of 4 inputs
                view.scatter_(-1, view.abs().argsort(dim=-1)[..., :2], 0.0)
                w.copy_(view.reshape(w.shape[0], w.shape[2], w.shape[3], w.shape[1]).permute(0, 3, 1, 2))
    before = {n: (m.weight == 0).clone() for n, m in model.named_modules() if n.startswith("layer4") and isinstance(m, nn.Conv2d)}
    config = inc_config([{"op_names": ["layer4.*"], "pattern": "2:4", "pruning_type": "pattern_lock", "start_step": 0, "end_step": 0}],
                        target_sparsity=0.9, pruning_scope="global", start_step=0, end_step=10, pruning_frequency=3)
    pruning = train_with_callbacks(model, config, epochs=2, steps=10)
    for name, zero in before.items():
        assert torch.equal(dict(model.named_modules())[name].weight == 0, zero), name
        assert zero.float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert all(row.sparsity == pytest.approx(0.5, abs=0.01) and row.pattern == "lock" for row in pruning.report().rows)


# ------------------------------------------------------------------ pruning_2.x/test_pruning_block.py + pruning_2_plus.x/test_pruning_block.py
def test_pruning_block() -> None:
    """block_mask groups on the ViT's MLPs (2xchannel global mean, 32x32 local sum; the plus file: channelx2
    target 0.95). INC gave ``pruning_op_types`` as the string "Linear", which INC iterated letter by letter
    (selecting LayerNorm and Conv layers); prunekit reads it as one class name."""
    config = inc_config(
        [
            {"op_names": ["encoder_layer_1.mlp*"], "target_sparsity": 0.95, "pattern": "channelx2", "pruning_type": "block_mask",
             "pruning_op_types": "Linear", "pruning_scope": "global", "criterion_reduce_type": "mean"},
            {"op_names": ["encoder_layer_2.mlp*"], "target_sparsity": 0.5, "pattern": "32x32", "pruning_op_types": "Linear",
             "pruning_type": "block_mask", "pruning_scope": "local", "criterion_reduce_type": "sum"},
            {"op_names": ["encoder_layer_3.mlp*"], "target_sparsity": 0.5, "pattern": "2xchannel", "pruning_type": "block_mask",
             "pruning_op_types": ["Linear"], "pruning_scope": "global"},
        ],
        start_step=1, end_step=10,
    )
    model = ViTLike()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.001)
    pruning = pk.prepare_pruning(model, config, optimizer)  # pruning_2_plus.x: the optimizer's step hooks
    assert all(type(layer.module) is nn.Linear for g in pruning.groups for layer in g.layers)
    for epoch in range(2):
        for image, target in dummy_batches(10, shape=(3, 32, 32), seed=epoch):
            loss = nn.functional.cross_entropy(model(image), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    got = group_sparsity(pruning)
    # within one block: channelx2 blocks of mlp.0 are 128 of the group's 4096 weights (0.031)
    assert got == pytest.approx({"pruner0": 0.95, "pruner1": 0.5, "pruner2": 0.5}, abs=0.032)
    assert_no_regrowth(model, pruning)


# ------------------------------------------------------------------ pruning_2_plus.x/test_pruning.py
def test_prepare_pruning_with_an_optimizer() -> None:
    config = inc_config(
        [
            {"op_names": ["layer1.*"], "target_sparsity": 0.6, "pattern": "8x2", "pruning_type": "magnitude_progressive"},
            {"op_names": ["layer2.*"], "pattern": "2:4", "target_sparsity": 0.5, "pruning_type": "snip_momentum", "pruning_scope": "local"},
        ],
        target_sparsity=0.8, start_step=1, end_step=4,
    )
    model = ResNet18Like()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    pruning = pk.prepare_pruning(model, config, optimizer)
    assert model is not None  # INC's assert
    for epoch in range(4):
        for image, target in dummy_batches(4, seed=epoch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(image), target).backward()
            optimizer.step()
    assert group_sparsity(pruning) == pytest.approx({"pruner0": 0.6, "pruner1": 0.5}, abs=0.01)
    assert_no_regrowth(model, pruning)


# ------------------------------------------------------------------ pruning_2.x/test_conv_pruning.py
class ToyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 4, 2)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv1d(4, 4, 2)
        self.linear = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.conv2(self.act(self.conv1(x))).flatten(1))


def conv_config() -> pk.WeightPruningConfig:
    return inc_config(
        [
            {"op_names": ["conv1"], "target_sparsity": 0.6, "pattern": "channelx1", "pruning_type": "snip", "pruning_scope": "local"},
            {"op_names": ["conv2"], "target_sparsity": 0.5, "pattern": "2:4", "pruning_scope": "global"},
        ],
        target_sparsity=0.8, start_step=1, end_step=10,
    )


def test_conv1d_pruning() -> None:
    model = ToyConv()
    pruning = pk.prepare_pruning(model, conv_config())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    pruning.on_train_begin()
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        pruning.on_step_begin(step)
        loss = nn.functional.cross_entropy(model(torch.randn(2, 4, 10, generator=g)), torch.zeros(2, dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        pruning.on_step_end()
    pruning.on_train_end()
    assert group_sparsity(pruning) == pytest.approx({"pruner0": 0.625, "pruner1": 0.5}, abs=1e-9)  # 0.6 of 8 columns: 5 (closest)
    assert_no_regrowth(model, pruning)


def test_hf_conv1d_pruning() -> None:
    """The second half of INC's file: transformers' Conv1D (weights stored [in, out])."""
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    model = nn.Sequential()
    model.add_module("conv1", Conv1D(8, 16))
    model.add_module("act", nn.ReLU())
    model.add_module("conv2", Conv1D(8, 8))
    model.add_module("linear", nn.Linear(8, 3))
    assert transformers is not None
    pruning = pk.prepare_pruning(model, conv_config())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    for step in range(20):
        loss = nn.functional.cross_entropy(model(torch.randn(4, 16, generator=g)), torch.zeros(4, dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
    got = group_sparsity(pruning)
    assert got["pruner1"] == pytest.approx(0.5, abs=1e-9)
    kept = pruning.masks["conv1"]  # [in 16, out 8]: channelx1 removes whole input columns of the [out, in] view
    assert ((~kept).all(dim=1) == (~kept).any(dim=1)).all()
    assert_no_regrowth(model, pruning)


# ------------------------------------------------------------------ pruning_2.x/test_auto_excluding_classifier.py
class NaiveMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear1 = nn.Linear(16, 32)
        self.ac1 = nn.ReLU()
        self.linear2 = nn.Linear(32, 16)
        self.ac2 = nn.ReLU()
        self.linear3 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear3(self.ac2(self.linear2(self.ac1(self.linear1(x)))))


def test_auto_excluding_classifier() -> None:
    from prunekit.pruner.selection import find_classifier_head

    head = find_classifier_head(NaiveMLP())
    assert head is not None and head[0] == "linear3"
    pruning = pk.Pruning(NaiveMLP(), inc_config([{}], target_sparsity=0.5))
    assert [layer.name for layer in pruning.groups[0].layers] == ["linear1", "linear2"]
