"""INC parity: magnitude 1x1 INC-style configs on a small MLP trained with SGD.

The events must fire at DESIGN's event grid with the targets of DESIGN's formulas (written out
here independently of the scheduler code), and the element-wise sparsity of the live weights
after each event must equal the target to within one weight per layer; the classifier head (the
last Linear) stays dense, as INC left it.
"""

from __future__ import annotations

import math

import pytest
import torch

from prunekit.pruner import prepare_pruning
from pruner_helpers import inc_config, linear_weights, mlp, train_step, zeros

WINDOWS = [(0, 10, 1), (0, 10, 2), (1, 10, 3), (2, 20, 4), (3, 3, 1), (0, 3, 5)]
DECAYS = ["exp", "cos", "cube", "linear"]
TARGETS = [0.5, 0.8, 0.9]
MAX_PER_OP = 0.98


def curve(decay: str, u: float, a: float) -> float:
    return {
        "linear": a * u,
        "cos": a * (1 - math.cos(u * math.pi / 2)),
        "cube": a * u**3,
        "exp": 1 - (1 - a) ** u,
    }[decay]


def expected_events(s: int, e: int, f: int, decay: str, target: float) -> list[tuple[int, float]]:
    t = (e - s) // f
    if t == 0:  # one-shot, or a window shorter than the frequency: one event at s, full target
        return [(s, target)]
    a = min(target, MAX_PER_OP)
    return [(s + j * f, min(curve(decay, j / t, a), target)) for j in range(t + 1)]


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: "s%d-e%d-f%d" % w)
@pytest.mark.parametrize("decay", DECAYS)
def test_events_targets_and_sparsity(scope: str, window: tuple[int, int, int], decay: str) -> None:
    s, e, f = window
    for target in TARGETS:
        model = mlp(seed=3)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        cfg = inc_config(
            target_sparsity=target, pruning_scope=scope, start_step=s, end_step=e,
            pruning_frequency=f, sparsity_decay_type=decay,
        )
        session = prepare_pruning(model, cfg, opt)
        expected = expected_events(s, e, f, decay, target)
        weights = {n: w for n, w in linear_weights(model).items() if n != "4"}  # INC leaves the head ('4') dense
        in_force = 0.0
        events = dict(expected)
        for step in range(e + 3):
            train_step(model, opt, step)
            assert session.global_step == step + 1
            if step in events:
                in_force = events[step]
            # after step + 1 optimizer steps, exactly the events <= step are in force
            if scope == "local":
                for name, w in weights.items():
                    assert abs(zeros(w) - in_force * w.numel()) <= 1, (name, step, zeros(w), in_force)
            else:
                total = sum(w.numel() for w in weights.values())
                pruned = sum(zeros(w) for w in weights.values())
                assert abs(pruned - in_force * total) <= len(weights), (step, pruned, in_force)
        assert zeros(model[4].weight) == 0
        got = [(r.step, r.target) for r in session.history]
        assert [g[0] for g in got] == [x[0] for x in expected]
        for (_, r), (_, x) in zip(got, expected):
            assert r == pytest.approx(x, abs=1e-9)


def test_reference_end_to_end_values() -> None:
    """DESIGN's end-to-end example: target 0.8, s=2, e=20, f=4."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cfg = inc_config(target_sparsity=0.8, start_step=2, end_step=20, pruning_frequency=4, sparsity_decay_type="exp")
    session = prepare_pruning(model, cfg, opt)
    for step in range(21):
        train_step(model, opt, step)
    assert [r.step for r in session.history] == [2, 6, 10, 14, 18]
    assert [round(r.target, 4) for r in session.history] == [0.0, 0.3313, 0.5528, 0.7009, 0.8]
