"""Selector typos, per-op bounds under block rounding, overflowed gradients, resumed sessions."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import prunekit as pk


class EncoderDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(8, 8)
        self.decoder = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 4)


@pytest.mark.parametrize(
    ("selectors", "message"),
    [
        ({"op_names": ["encoder", "decodr"]}, r"op_names\[1\] 'decodr' matches no layer .*close names: decoder"),
        ({"excluded_op_names": ["lm_haed"]}, r"excluded_op_names\[0\] 'lm_haed' matches no module .*close names: lm_head"),
    ],
)
def test_every_selector_entry_must_match(selectors, message):
    with pytest.raises(pk.PruningError, match=message):
        pk.Pruning(EncoderDecoder(), {"pruners": [{"target_sparsity": 0.5, **selectors}]})


def test_a_bare_layer_as_model_gets_a_helpful_error():
    with pytest.raises(pk.PruningError, match=r"the model itself is a Linear.*nn.Sequential"):
        pk.Pruning(nn.Linear(4, 4), {"pruners": [{"target_sparsity": 0.5}]})


def test_max_sparsity_per_op_holds_when_blocks_round_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 6), nn.Linear(6, 3))
    session = pk.Pruning(model, {"pruners": [{"target_sparsity": 0.9, "max_sparsity_per_op": 0.9, "pattern": "1xchannel"}]})
    session.prune_now()
    for row in session.report():
        assert row.sparsity <= 0.9, row  # a 3-row layer may not lose all 3 rows


def test_global_min_and_max_per_op_hold_with_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(40, 12), nn.Linear(12, 8))
    with torch.no_grad():
        model[0].weight.mul_(100)  # the global threshold wants to spare layer 0 entirely
    session = pk.Pruning(model, {"pruners": [{"target_sparsity": 0.5, "min_sparsity_per_op": 0.4, "max_sparsity_per_op": 0.6,
                                              "pattern": "4x1", "scope": "global"}]})
    session.prune_now()
    for row in session.report():
        assert 0.4 <= row.sparsity <= 0.6, row


def test_an_overflowed_gradient_does_not_poison_snip_momentum_scores():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    config = {"pruners": [{"op_names": ["^0$"], "criterion": "snip_momentum", "target_sparsity": 0.5,
                           "scheduler": {"type": "iterative", "start_step": 0, "end_step": 4, "frequency": 2}}]}
    session = pk.Pruning(model, config).attach(optimizer, hooks=False)  # how the framework callbacks drive it
    for step in range(6):
        optimizer.zero_grad()
        model(torch.randn(4, 8)).pow(2).mean().backward()
        if step == 1:
            model[0].weight.grad[0, 0] = float("inf")  # an fp16 overflow: AMP's GradScaler skips this step
        session.on_before_optimizer_step()
        if step != 1:
            optimizer.step()
        session.on_after_optimizer_step()
    assert [r.step for r in session.history] == [0, 2, 4]
    assert session.report().row("0").sparsity == pytest.approx(0.5)


def test_a_resumed_session_does_not_warn_that_no_step_was_observed():
    model = nn.Sequential(nn.Linear(8, 8))
    config = {"pruners": [{"target_sparsity": 0.5, "scheduler": {"type": "iterative", "start_step": 6, "end_step": 10, "frequency": 2}}]}
    first = pk.Pruning(model, config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    first.attach(optimizer)
    for _ in range(3):
        model(torch.randn(2, 8)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    state = first.state_dict()
    first.close()  # one live session per weight
    resumed = pk.Pruning(model, config)
    resumed.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="finalize.. after 3 optimizer steps, before the schedule ended")  # true here
        resumed.finalize()
