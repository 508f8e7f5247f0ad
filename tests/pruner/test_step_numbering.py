"""One step numbering: an event at step s runs in the loop iteration `for step in range(...)` calls s,
is in force once s + 1 optimizer steps are done, and a run that stops earlier is warned about."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import prunekit as pk

CONFIG = {"pruners": [{"name": "g", "op_types": ["Linear"], "target_sparsity": 0.5,
                       "scheduler": {"type": "iterative", "start_step": 0, "end_step": 6, "frequency": 3, "decay": "linear"}}]}


def session_on_a_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, optimizer, pk.Pruning(model, CONFIG).attach(optimizer)


def train_step(model, optimizer):
    loss = model(torch.randn(4, 8)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_event_steps_are_the_loop_index_and_the_target_holds_after_steps_to_complete():
    model, optimizer, pruning = session_on_a_model()
    assert pruning.steps_to_complete == 7
    ran_in = []
    for step in range(pruning.steps_to_complete):
        events = len(pruning.history)
        assert pruning.global_step == step  # before the step: the loop's index
        train_step(model, optimizer)
        if len(pruning.history) > events:
            ran_in.append(step)
        assert pruning.global_step == step + 1  # after it: steps done, the Trainer's global_step
    assert ran_in == [r.step for r in pruning.history] == [0, 3, 6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pruning.finalize()
    weights = [model[0].weight, model[2].weight]
    assert sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights) == pytest.approx(0.5, abs=1e-2)


def test_finalizing_before_the_last_event_is_warned_about():
    model, optimizer, pruning = session_on_a_model()
    for _ in range(6):  # steps 0..5: the event of step 6 never ran
        train_step(model, optimizer)
    with pytest.warns(UserWarning, match=r"finalize\(\) after 6 optimizer steps, before the schedule ended: g \(last event at step 6, at 0\.2500 of target 0\.5\).*needs N \+ 1 steps.*>= 7"):
        pruning.finalize()
