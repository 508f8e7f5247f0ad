"""Training with masks: no regrowth under common optimizers, gradient accumulation, attach vs manual hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.pruner import Pruning, prepare_pruning
from pruner_helpers import batch, linear_weights, mlp, train_step, zeros

ITERATIVE = {"type": "iterative", "start_step": 2, "end_step": 14, "frequency": 4, "decay": "exp"}


def config(criterion: str = "magnitude", pattern: str = "1x1", scope: str = "local", target: float = 0.8) -> dict:
    return {"pruners": [{"criterion": criterion, "pattern": pattern, "scope": scope, "target_sparsity": target, "scheduler": ITERATIVE}]}


class AddConstant(torch.optim.Optimizer):
    """An optimizer that moves weights even where the gradient is zero (needs the post-step re-application)."""

    def __init__(self, params, lr: float = 0.01) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"]).add_(1e-3)


OPTIMIZERS = {
    "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam_amsgrad_l2": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2, amsgrad=True),
    "adamw_wd": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "custom": lambda ps: AddConstant(ps),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("criterion,pattern", [("magnitude", "1x1"), ("snip_momentum", "4x1"), ("gradient", "2:4")])
def test_no_regrowth(name: str, criterion: str, pattern: str) -> None:
    model = mlp()
    opt = OPTIMIZERS[name](model.parameters())
    target = 0.5 if pattern == "2:4" else 0.8
    session = prepare_pruning(model, config(criterion, pattern, target=target), opt)
    weights = linear_weights(model)
    at_last_event: dict[str, torch.Tensor] = {}
    for step in range(50):
        train_step(model, opt, step)
        for layer, w in weights.items():
            pruned = ~session.masks[layer]
            assert (w.detach()[pruned] == 0).all(), (name, step, layer)
        if step == 14:
            at_last_event = {k: w.detach().clone() for k, w in weights.items()}
    for layer, w in weights.items():
        kept = session.masks[layer]
        assert abs(zeros(w) / w.numel() - target) < 0.02
        assert (w.detach()[kept] != at_last_event[layer][kept]).all(), f"{layer}: a kept weight did not train"


def test_exact_zero_optimizers_skip_reapply_with_identical_results() -> None:
    """SGD/Adam/AdamW: zeroed state + zeroed gradients keep pruned weights at 0 without re-applying."""
    results = []
    for reapply in ("auto", "always"):
        model = mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        session = prepare_pruning(model, config(), opt, reapply=reapply)
        calls = 0
        for group in session.groups:
            original = group.reapply

            def counting(original=original) -> None:
                nonlocal calls
                calls += 1
                original()

            group.reapply = counting  # type: ignore[method-assign]
        for step in range(20):
            train_step(model, opt, step)
        results.append(({k: v.detach().clone() for k, v in model.state_dict().items()}, calls))
    (auto, auto_calls), (always, always_calls) = results
    assert auto_calls == 0 and always_calls == 20
    for key in auto:
        assert torch.equal(auto[key], always[key]), key


def _train_accumulating(micro: int, session_mode: str) -> tuple[Pruning, nn.Module]:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    session = Pruning(model, config("snip_momentum", "4x1"))
    if session_mode == "attach":
        session.attach(opt)
    for step in range(18):
        x, y = batch(step, n=32)
        opt.zero_grad()
        for i in range(micro):
            if session_mode == "manual":
                session.on_step_begin(step)
            xs, ys = x.chunk(micro)[i], y.chunk(micro)[i]
            (nn.functional.mse_loss(model(xs), ys) / micro).backward()
            if i < micro - 1 and session_mode == "manual":
                session.on_step_end()
        with torch.no_grad():  # an evaluation pass between steps triggers nothing
            model(torch.randn(4, 16))
        if session_mode == "manual":
            session.on_before_optimizer_step()
        opt.step()
        if session_mode == "manual":
            session.on_after_optimizer_step()
            session.on_step_end()
    return session, model


@pytest.mark.parametrize("mode", ["attach", "manual"])
def test_gradient_accumulation_same_events(mode: str) -> None:
    one, model_one = _train_accumulating(1, mode)
    four, model_four = _train_accumulating(4, mode)
    assert one.global_step == four.global_step == 18
    assert [(r.step, r.target) for r in one.history] == [(r.step, r.target) for r in four.history]
    assert [r.step for r in one.history] == [2, 6, 10, 14]
    for name in one.masks:
        assert torch.equal(one.masks[name], four.masks[name])
    for (k, a), b in zip(model_one.state_dict().items(), model_four.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k


@pytest.mark.parametrize("criterion", ["magnitude", "snip"])
def test_attach_and_manual_hooks_identical(criterion: str) -> None:
    states = []
    for mode in ("attach", "manual"):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        session = Pruning(model, config(criterion, "4x1", scope="global"), reapply="always")
        if mode == "attach":
            session.attach(opt)
        session.on_train_begin()
        for step in range(16):
            session.on_step_begin(step)
            x, y = batch(step)
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            if mode == "manual":
                session.on_before_optimizer_step()
            opt.step()
            if mode == "manual":
                session.on_after_optimizer_step()
            session.on_step_end()
        session.on_train_end()
        states.append((model.state_dict(), session.history))
    (a, ha), (b, hb) = states
    assert ha == hb
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_many_groups_each_with_its_own_scheduler() -> None:
    model = mlp(sizes=(16, 32, 32, 8))
    cfg = {
        "pruners": [
            {"name": "early", "op_names": ["^0$"], "pattern": "4x1", "target_sparsity": 0.5, "scheduler": {"type": "oneshot", "start_step": 1}},
            {"name": "late", "op_names": ["^2$", "^4$"], "criterion": "snip", "scope": "global", "target_sparsity": 0.7,
             "scheduler": {"type": "iterative", "start_step": 3, "end_step": 9, "frequency": 3, "decay": "linear"}},
        ]
    }
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    session = prepare_pruning(model, cfg, opt)
    for step in range(12):
        train_step(model, opt, step)
    assert [(r.pruner, r.step) for r in session.history] == [("early", 1), ("late", 3), ("late", 6), ("late", 9)]
    assert [round(r.target, 6) for r in session.history] == [0.5, 0.0, 0.35, 0.7]
    report = session.report()
    assert report.row("0").sparsity == pytest.approx(0.5)
    late = [report.row("2"), report.row("4")]
    assert sum(r.sparsity * r.numel for r in late) / sum(r.numel for r in late) == pytest.approx(0.7, abs=1e-3)
    assert "total" in str(report)


def test_report_reads_live_weights_and_finalize_detaches() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    session = prepare_pruning(model, config(target=0.5), opt)
    for step in range(15):
        train_step(model, opt, step)
    before = session.report().row("0").sparsity
    with torch.no_grad():
        idx = tuple(session.masks["0"].nonzero()[0])
        model[0].weight[idx] = 0.0  # one more zero, by hand: the report reads the live weights
    assert session.report().row("0").sparsity == pytest.approx(before + 1 / model[0].weight.numel())
    pruned = {k: ~m.clone() for k, m in session.masks.items()}
    session.finalize()
    for name, w in linear_weights(model).items():
        assert (w.detach()[pruned[name]] == 0).all()
    step_before = session.global_step
    train_step(model, opt, 99)
    assert session.global_step == step_before  # the optimizer hooks are gone
    moved = [bool((w.detach()[pruned[n]] != 0).any()) for n, w in linear_weights(model).items()]
    assert all(moved)  # nothing masks the step any more
    # a pruned model's state_dict loads into a plain model with strict=True
    fresh = mlp(seed=123)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert list(fresh.state_dict()) == list(mlp().state_dict())


def test_state_dict_keys_unchanged_and_strict_load() -> None:
    model = mlp()
    keys = list(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    session = prepare_pruning(model, config(), opt)
    params = [id(p) for p in model.parameters()]
    for step in range(16):
        train_step(model, opt, step)
    session.finalize()
    assert list(model.state_dict()) == keys
    assert [id(p) for p in model.parameters()] == params  # parameter identity never changes
    plain = mlp(seed=7)
    plain.load_state_dict(model.state_dict(), strict=True)
    assert zeros(plain[0].weight) == zeros(model[0].weight) > 0
