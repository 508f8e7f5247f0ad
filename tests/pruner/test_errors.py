"""Bad input and misuse: each a clear error (where + how to fix) or a warning that says what to do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.pruner import Pruning, prepare_pruning, select_layers
from prunekit.config import load_config
from pruner_helpers import batch, mlp, train_step, zeros


def cfg(**group) -> dict:
    return {"pruners": [{"target_sparsity": 0.5, **group}]}


def backward(model: nn.Module, step: int = 0) -> None:
    x, y = batch(step)
    nn.functional.mse_loss(model(x), y).backward()


def test_empty_selection_lists_close_names() -> None:
    model = nn.Sequential()
    model.add_module("encoder_fc", nn.Linear(4, 4))
    model.add_module("decoder_fc", nn.Linear(4, 4))
    with pytest.raises(PruningError, match=r"no layer matches.*close module names: encoder_fc"):
        Pruning(model, cfg(op_names=["^encoder_fx$"]))
    with pytest.raises(PruningError, match=r"no module of op_types \['Embedding'\]"):
        Pruning(model, cfg(op_types=["Embedding"]))


def test_selection_on_wrapped_model_has_no_module_prefix() -> None:
    model = nn.DataParallel(mlp())  # same unwrapping as DistributedDataParallel
    group = load_config(cfg(op_names=["^0$", "^2$"])).pruners[0]
    assert [layer.name for layer in select_layers(model, group)] == ["0", "2"]


def test_tied_weights_pruned_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8, bias=False)
            self.b = nn.Linear(8, 8, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.tanh(self.a(x)))

    model = Tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    session = prepare_pruning(model, cfg(), opt)
    assert list(session.masks) == ["a"] and session.groups[0].layers[0].aliases == ["b"]
    opt.zero_grad()
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    assert zeros(model.a.weight) == 32  # 50 % once, not 75 %


def test_layer_in_two_groups_is_an_error() -> None:
    with pytest.raises(PruningError, match="selected by pruner groups 'pruner0' and 'pruner1'"):
        Pruning(mlp(), {"pruners": [{"target_sparsity": 0.5}, {"target_sparsity": 0.3, "op_names": ["^2$"]}]})


def test_frozen_weights_magnitude_only() -> None:
    model = mlp()
    model[0].weight.requires_grad_(False)
    with pytest.raises(PruningError, match=r"layer '0'.*frozen.*criterion: magnitude"):
        Pruning(model, cfg(criterion="snip"))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    session = prepare_pruning(model, cfg(), opt)
    train_step(model, opt, 0)
    assert zeros(model[0].weight) == model[0].weight.numel() // 2
    assert session.history[0].sparsity == pytest.approx(0.5, abs=1e-2)


@pytest.mark.parametrize("criterion", ["magnitude", "snip"])
@pytest.mark.parametrize("pattern", ["1x1", "4x1", "2:4", "4:8", "3:6"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_or_gradients(criterion: str, pattern: str, bad: float) -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prepare_pruning(model, cfg(criterion=criterion, pattern=pattern, op_names=["^2$"]), opt)  # 24 inputs
    opt.zero_grad()
    backward(model)
    with torch.no_grad():  # an inf weight is the largest of its N:M group: it stays, its group score stays finite
        model[2].weight[0, 0] = bad
    with pytest.raises(PruningError, match=r"layer '2'.*not finite"):
        opt.step()


def test_gradient_criterion_without_backward() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prepare_pruning(model, cfg(criterion="gradient"), opt)
    with pytest.raises(PruningError, match=r"layer '0'.*needs gradients.*loss.backward\(\)"):
        opt.step()


def test_missing_or_wrong_optimizer() -> None:
    model = mlp()
    session = Pruning(model, cfg())
    with pytest.raises(PruningError, match="needs the torch.optim.Optimizer"):
        session.attach(None)  # type: ignore[arg-type]
    with pytest.raises(PruningError, match="trains none of the pruned weights"):
        session.attach(torch.optim.SGD(mlp(seed=5).parameters(), lr=0.1))
    with pytest.warns(UserWarning, match="no optimizer step was observed"):
        session.finalize()


def test_hooks_out_of_order() -> None:
    model = mlp()
    session = Pruning(model, cfg())
    with pytest.raises(PruningError, match="without on_before_optimizer_step"):
        session.on_after_optimizer_step()
    session.on_before_optimizer_step()
    with pytest.warns(UserWarning, match="step 0 is retried"):  # optimizer.step() raised in between, or a missing call
        session.on_before_optimizer_step()
    with pytest.raises(PruningError, match="on_step_end"):
        session.on_step_end()
    session.on_after_optimizer_step()
    assert session.global_step == 1
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    session.attach(opt)
    with pytest.raises(PruningError, match="attached to an optimizer"):
        session.on_before_optimizer_step()
    session.attach(opt)  # re-attaching replaces the hooks: one pre-step hook still
    assert len(opt._optimizer_step_pre_hooks) == 1
    session.finalize()
    with pytest.raises(PruningError, match="after finalize"):
        session.on_step_begin()


def test_a_state_whose_events_are_ahead_of_its_step_is_refused() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    session = prepare_pruning(model, cfg(scheduler={"type": "iterative", "start_step": 0, "end_step": 4, "frequency": 1}), opt)
    for step in range(3):
        train_step(model, opt, step)
    state = session.state_dict()
    state["global_step"] = 1  # a corrupted checkpoint would replay step 1 and 2
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(PruningError, match=r"last_step: the event of step 2 fired after the saved global_step 1"):
        session.load_state_dict(state)
    assert session.global_step == 3 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
