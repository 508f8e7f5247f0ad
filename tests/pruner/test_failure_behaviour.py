"""What a refused load, a failed event or a failed optimizer step leaves behind, and the guards
against silent wrong results (a new optimizer, replaced or resized weights, NaN weights, two
sessions on one layer, sparse gradients)."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import PruningError
from pruner_helpers import batch, mlp, train_step, zeros


def two_groups(second: str = "1") -> dict:
    return {"pruners": [{"name": "a", "op_names": ["^0$"], "target_sparsity": 0.5}, {"name": "b", "op_names": [f"^{second}$"], "target_sparsity": 0.5}]}


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[list[torch.Tensor], dict | None]:
    weights = [p.detach().clone() for p in model.parameters()]
    state = None
    if optimizer is not None:
        state = {k: {n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in s.items()} for k, s in optimizer.state_dict()["state"].items()}
    return weights, state


def same(model: nn.Module, snap: tuple[list[torch.Tensor], dict | None], optimizer: torch.optim.Optimizer | None = None) -> bool:
    weights, state = snap
    if not all(torch.equal(a, b) for a, b in zip(weights, model.parameters())):
        return False
    if optimizer is not None:
        now = optimizer.state_dict()["state"]
        for k, s in state.items():
            for n, v in s.items():
                if isinstance(v, torch.Tensor) and not torch.equal(v, now[k][n]):
                    return False
    return True


def iterative(**extra) -> dict:
    return {"pruners": [{"target_sparsity": 0.5, "scheduler": {"type": "iterative", "start_step": 0, "end_step": 4, "frequency": 2}, **extra}]}


# ---------------------------------------------------------------------------------------- loads
def test_a_refused_load_changes_nothing_issue_reproduction() -> None:
    src = pk.Pruning(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), two_groups())
    src.prune_now()
    dst = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 16))
    session = pk.Pruning(dst, two_groups())
    before = snapshot(dst)
    with pytest.raises(PruningError, match=r"(?s)nothing was changed.*groups\['b'\]\.masks\['1'\]: shape \[8, 8\] does not fit"):
        session.load_state_dict(src.state_dict())
    assert same(dst, before) and zeros(dst[0].weight) == 0
    assert session.global_step == 0 and session.history == [] and not any(g.has_pruned for g in session.groups)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda s: s["groups"].pop("b"), r"groups\['b'\]: missing"),
        (lambda s: s["groups"].update(c=s["groups"]["a"]), r"groups\['c'\]: no such pruner group"),
        (lambda s: s["history"].append({"step": "x"}), r"history\[2\]"),
        (lambda s: s["history"][0].update(sparsity=None), r"history\[0\]: field 'sparsity'"),
        (lambda s: s.update(global_step=-1), r"global_step: expected an integer >= 0"),
        (lambda s: s.update(global_step=True), r"global_step: expected an integer >= 0"),
        (lambda s: s["groups"]["b"]["masks"].update({"2": torch.ones(8, 8, dtype=torch.int64)}), r"expected a bool tensor, got dtype torch.int64"),
        (lambda s: s["groups"]["b"]["masks"].pop("2"), r"masks\['2'\]: missing"),
        (lambda s: s["groups"]["b"].update(ratio=float("nan")), r"ratio: expected a number within \[0, 1\]"),
        (lambda s: s["groups"]["b"].update(scheduler={"last_step": "x", "config": {"type": "iterative"}}), r"groups\['b'\]\.scheduler"),
        (lambda s: s.pop("config"), r"missing key\(s\) config"),
        (lambda s: s.update(format=99), r"unsupported pruning state format"),
    ],
)
def test_a_malformed_state_is_refused_before_anything_changes(corrupt, message) -> None:
    model = mlp((8, 8, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    session = pk.prepare_pruning(model, two_groups("2"), optimizer)
    train_step(model, optimizer, 0, d_in=8, d_out=8)
    state = session.state_dict()
    corrupt(state)
    target_model = mlp((8, 8, 8), seed=3)
    target_optimizer = torch.optim.Adam(target_model.parameters(), lr=0.01)
    session.close()
    target = pk.prepare_pruning(target_model, two_groups("2"), target_optimizer)
    train_step(target_model, target_optimizer, 0, d_in=8, d_out=8)
    before, history, masks = snapshot(target_model, target_optimizer), list(target.history), target.masks
    with pytest.raises(PruningError, match=message):
        target.load_state_dict(state)
    assert same(target_model, before, target_optimizer)
    assert target.history == history and target.global_step == 1
    assert all(torch.equal(masks[n], m) for n, m in target.masks.items())
    train_step(target_model, target_optimizer, 1, d_in=8, d_out=8)  # still usable
    assert target.global_step == 2


def test_scores_of_the_wrong_shape_are_refused_at_load() -> None:
    config = {"pruners": [{"target_sparsity": 0.5, "criterion": "snip_momentum", "pattern": "4x1", "scheduler": {"type": "iterative", "start_step": 0, "end_step": 8, "frequency": 4}}]}
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = pk.prepare_pruning(model, config, optimizer)
    train_step(model, optimizer, 0)
    state = session.state_dict()
    assert state["groups"]["pruner0"]["scores"]["0"].shape == (6, 16)  # 4x1 blocks of the 24x16 weight
    state["groups"]["pruner0"]["scores"]["0"] = torch.zeros(24, 16)
    state["groups"]["pruner0"]["scores"]["2"] = torch.full((6, 24), float("nan"))
    with pytest.raises(PruningError) as err:
        session.load_state_dict(state)
    assert "scores['0']: shape [24, 16] does not fit layer '0' (expected [6, 16])" in str(err.value)
    assert "scores['2']: holds NaN/inf" in str(err.value)


# ---------------------------------------------------------------------------------------- events
def test_a_non_finite_layer_fails_the_event_before_any_layer_changes_and_the_retry_prunes() -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    session = pk.prepare_pruning(model, {"pruners": [{"target_sparsity": 0.5, "scheduler": {"type": "oneshot", "start_step": 1}}]}, optimizer)
    train_step(model, optimizer, 0)
    with torch.no_grad():
        saved = model[4].weight[0, 0].item()
        model[4].weight[0, 0] = float("nan")  # the last layer diverged
    before = snapshot(model, optimizer)
    with pytest.raises(PruningError, match=r"layer '4': the weights are not finite \(NaN/inf\) at optimizer step 1"):
        train_step(model, optimizer, 1)
    assert same(model, before, optimizer) or torch.isnan(model[4].weight).any()  # NaN != NaN: compare the rest
    assert zeros(model[0].weight) == 0 and zeros(model[2].weight) == 0  # no layer was pruned
    assert session.global_step == 1 and session.history == []
    with torch.no_grad():
        model[4].weight[0, 0] = saved
    train_step(model, optimizer, 1)  # the same step again: the event runs now
    assert [r.step for r in session.history] == [1] and session.global_step == 2
    assert all(abs(zeros(model[i].weight) / model[i].weight.numel() - 0.5) < 0.01 for i in (0, 2, 4))


@pytest.mark.parametrize("criterion", ["magnitude", "gradient", "snip", "snip_momentum"])
def test_nan_weights_are_an_error_for_every_criterion(criterion: str) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    config = {"pruners": [{"target_sparsity": 0.5, "criterion": criterion, "scheduler": {"type": "iterative", "start_step": 0, "end_step": 2, "frequency": 2}}]}
    pk.prepare_pruning(model, config, optimizer)
    train_step(model, optimizer, 0)
    train_step(model, optimizer, 1)
    with torch.no_grad():
        model[2].weight[3, 3] = float("nan")
    with pytest.raises(PruningError, match=r"layer '2': the weights are not finite"):
        train_step(model, optimizer, 2)
    assert zeros(model[2].weight) < model[2].weight.numel() // 2  # nothing pruned at the refused event


def test_a_failed_mask_broadcast_leaves_masks_and_weights_agreeing_and_the_step_retries(monkeypatch) -> None:
    import torch.distributed as dist

    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    session = pk.prepare_pruning(model, {"pruners": [{"target_sparsity": 0.5}]}, optimizer, sync_masks=True)
    calls = {"n": 0}

    def broadcast(tensor: torch.Tensor, src: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("connection reset by peer")

    monkeypatch.setattr(dist, "broadcast", broadcast)
    with pytest.raises(RuntimeError, match="connection reset"):
        train_step(model, optimizer, 0)
    for name, mask in session.masks.items():  # each layer: untouched, or pruned with its weight
        weight = dict(model.named_modules())[name].weight
        assert torch.equal(weight[~mask], torch.zeros_like(weight[~mask]))
    assert session.history == [] and session.global_step == 0
    train_step(model, optimizer, 0)  # the retry runs the event
    assert [r.step for r in session.history] == [0] and session.global_step == 1
    assert session.report().rows[-1].sparsity == pytest.approx(0.5, abs=0.01)


class FlakyAdam(torch.optim.Adam):
    """Adam whose step raises once, at its ``fail_at``-th call (an OOM or a NaN check inside step())."""

    def __init__(self, params, fail_at: int, **kw) -> None:
        super().__init__(params, **kw)
        self.calls, self.fail_at = 0, fail_at

    def step(self, closure=None):  # type: ignore[override]
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().step(closure)


@pytest.mark.parametrize("attach", [True, False])
def test_an_exception_inside_optimizer_step_leaves_the_session_usable(attach: bool) -> None:
    """A step that raised is retried under the same step number: events are neither lost nor doubled."""
    config = {"pruners": [{"target_sparsity": 0.6, "criterion": "snip_momentum", "scheduler": {"type": "iterative", "start_step": 0, "end_step": 6, "frequency": 2}}]}
    model = mlp()
    optimizer = FlakyAdam(model.parameters(), fail_at=3, lr=0.01)  # the third call: optimizer step 2, an event step
    session = pk.prepare_pruning(model, config, optimizer if attach else None)
    done, step, failures = 0, 0, []
    while done < 8 and len(failures) < 3:
        x, y = batch(step)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        try:
            if not attach:
                session.on_before_optimizer_step()
            optimizer.step()
            if not attach:
                session.on_after_optimizer_step()
        except RuntimeError as err:
            failures.append(str(err))
            continue  # the run goes on with the next batch
        done += 1
        step += 1
    assert failures == ["CUDA out of memory (simulated)"]
    assert session.global_step == 8
    assert [r.step for r in session.history] == [0, 2, 4, 6]
    assert session.history[-1].sparsity == pytest.approx(0.6, abs=0.01)


def test_a_custom_scheduler_that_raises_leaves_the_step_retryable() -> None:
    class Once:
        raised = False

    @pk.register_scheduler("raises_once_test", force=True)
    class RaisesOnce(pk.Scheduler):
        """Raises at its first call (test)."""

        def update_sparsity_ratio(self, target_ratio, current_prune_step, total_prune_steps, masks=None, init_ratio=0.0):
            if not Once.raised:
                Once.raised = True
                raise ZeroDivisionError("bug in my scheduler")
            return target_ratio

    try:
        model = mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        session = pk.prepare_pruning(model, {"pruners": [{"target_sparsity": 0.5, "scheduler": {"type": "raises_once_test"}}]}, optimizer)
        with pytest.raises(ZeroDivisionError):
            train_step(model, optimizer, 0)
        train_step(model, optimizer, 0)
        assert [r.step for r in session.history] == [0]
    finally:
        pk.SCHEDULERS.unregister("raises_once_test")


# ---------------------------------------------------------------------------------------- guards
def test_a_new_optimizer_that_steps_pruned_weights_is_an_error_and_attach_recovers() -> None:
    model = mlp()
    old = torch.optim.SGD(model.parameters(), lr=0.1)
    session = pk.prepare_pruning(model, {"pruners": [{"target_sparsity": 0.5}]}, old)
    train_step(model, old, 0)
    train_step(model, old, 1)
    new = torch.optim.SGD(model.parameters(), lr=0.05)  # e.g. a new learning rate, new optimizer
    with pytest.raises(PruningError, match=r"an optimizer \(SGD\) stepped pruned weights, but the session is attached to another optimizer \(SGD\).*pruning.attach\(optimizer\)"):
        train_step(model, new, 2)
    session.attach(new)  # re-attach: masks applied again to the weights and to the new optimizer's state
    assert session.report().rows[-1].sparsity == pytest.approx(0.5, abs=0.01)
    for step in range(2, 6):
        train_step(model, new, step)
    assert session.global_step == 6 and session.report().rows[-1].sparsity == pytest.approx(0.5, abs=0.01)


def test_a_new_optimizer_before_any_event_warns_that_events_stop() -> None:
    model = mlp()
    old = torch.optim.SGD(model.parameters(), lr=0.1)
    pk.prepare_pruning(model, {"pruners": [{"target_sparsity": 0.5, "scheduler": {"type": "oneshot", "start_step": 5}}]}, old)
    train_step(model, old, 0)
    new = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.warns(UserWarning, match=r"stepped the weights of the pruning session, but the session is attached to another.*attach\(optimizer\)"):
        train_step(model, new, 1)


def test_an_optimizer_stepping_inside_the_attached_one_is_not_reported() -> None:
    """SAM-style wrappers call a base optimizer's step() inside their own; weight perturbations in place
    and an EMA copy between steps are not optimizer steps either."""

    class Wrapper(torch.optim.Optimizer):
        def __init__(self, params, base: torch.optim.Optimizer) -> None:
            super().__init__(params, {})
            self.base = base

        @torch.no_grad()
        def step(self, closure=None):  # type: ignore[override]
            return self.base.step()

    model = mlp()
    base = torch.optim.SGD(model.parameters(), lr=0.05)
    wrapper = Wrapper(model.parameters(), base)
    session = pk.prepare_pruning(model, iterative(), wrapper)
    ema = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(6):
            x, y = batch(step)
            nn.functional.mse_loss(model(x), y).backward()
            with torch.no_grad():  # SAM's ascent step: perturb in place, second backward, restore
                eps = [0.01 * p.grad for p in model.parameters()]
                for p, e in zip(model.parameters(), eps):
                    p.add_(e)
            wrapper.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            with torch.no_grad():
                for p, e in zip(model.parameters(), eps):
                    p.sub_(e)
            wrapper.step()
            wrapper.zero_grad()
            with torch.no_grad():
                for e, p in zip(ema, model.parameters()):
                    e.mul_(0.9).add_(p, alpha=0.1)
    assert [r.step for r in session.history] == [0, 2, 4] and session.global_step == 6


def test_gradient_accumulation_and_evaluation_do_not_trip_the_guards() -> None:
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    session = pk.prepare_pruning(model, iterative(), optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(6):
            for micro in range(3):
                x, y = batch(step * 3 + micro)
                nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad():
                model(batch(99)[0])
    assert session.global_step == 6


def test_detach_pauses_and_attach_resumes() -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = pk.prepare_pruning(model, iterative(), optimizer)
    train_step(model, optimizer, 0)
    session.detach()
    assert not session.attached and session.optimizer is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(1, 4):  # steps the session does not see, on purpose
            train_step(model, optimizer, step)
    assert session.global_step == 1
    session.attach(optimizer)
    for step in range(4, 8):
        train_step(model, optimizer, step)
    assert [r.step for r in session.history] == [0, 2, 4] and session.global_step == 5


def test_weights_replaced_by_load_state_dict_assign_are_detected() -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = pk.prepare_pruning(model, {"pruners": [{"target_sparsity": 0.5}]}, optimizer)
    train_step(model, optimizer, 0)
    dense = {k: torch.randn_like(v) for k, v in mlp(seed=4).state_dict().items()}
    model.load_state_dict(dense, assign=True)
    for call in (session.report, session.state_dict, lambda: session.masks, session.finalize):
        with pytest.raises(PruningError, match=r"layer '0': the module's weight is no longer the Parameter .*assign=True"):
            call()


def test_a_resized_weight_is_an_error_naming_the_layer() -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pk.prepare_pruning(model, {"pruners": [{"target_sparsity": 0.5}]}, optimizer)
    train_step(model, optimizer, 0)
    model[2].weight.data = torch.randn(12, 24)
    model[2].out_features = 12
    model[4].weight.data = torch.randn(8, 12)
    with pytest.raises(PruningError, match=r"layer '2': the weight's shape changed from \[24, 24\] to \[12, 24\]"):
        optimizer.step()


def test_two_sessions_on_one_layer_are_refused_naming_both() -> None:
    model = mlp()
    first = pk.Pruning(model, {"pruners": [{"name": "blocks", "pattern": "4x1", "target_sparsity": 0.5}]})
    with pytest.raises(PruningError, match=r"layer '0' \(pruner 'nm'\) is already pruned by another live session .*pruner 'blocks', layer '0'"):
        pk.Pruning(model, {"pruners": [{"name": "nm", "pattern": "2:4", "target_sparsity": 0.5}]})
    first.finalize()
    second = pk.Pruning(model, {"pruners": [{"name": "nm", "pattern": "2:4", "target_sparsity": 0.5}]})
    del second
    gc.collect()  # a session nobody holds frees its layers
    third = pk.Pruning(model, {"pruners": [{"target_sparsity": 0.5}]})
    third.close()
    pk.Pruning(model, {"pruners": [{"target_sparsity": 0.5}]})


def test_sparse_embedding_gradients() -> None:
    emb = nn.Sequential(nn.Embedding(40, 8, sparse=True), nn.Linear(8, 2))
    with pytest.raises(PruningError, match=r"layer '0': Embedding\(sparse=True\) produces sparse gradients.*criterion: magnitude"):
        pk.Pruning(emb, {"pruners": [{"op_types": ["Embedding"], "criterion": "gradient", "target_sparsity": 0.5}]})
    optimizer = torch.optim.SGD(emb.parameters(), lr=0.5)
    session = pk.prepare_pruning(emb, {"pruners": [{"op_types": ["Embedding"], "target_sparsity": 0.5}]}, optimizer)
    for step in range(5):
        optimizer.zero_grad()
        emb(torch.randint(0, 40, (32,), generator=torch.Generator().manual_seed(step))).pow(2).sum().backward()
        assert emb[0].weight.grad.is_sparse
        optimizer.step()
    mask = session.masks["0"]
    assert torch.count_nonzero(emb[0].weight[~mask]) == 0 and session.report().rows[0].sparsity == 0.5


def test_a_model_moved_to_another_device_after_prepare_is_an_error_naming_the_layer() -> None:
    model = mlp()
    session = pk.Pruning(model, {"pruners": [{"target_sparsity": 0.5}]})
    # model.to("cuda") keeps the Parameters and moves their data; without a GPU here, move the session's
    # side instead: the same mismatch between a weight and its mask
    group = session.groups[0]
    group.mask8["0"] = group.mask8["0"].to("meta")
    with pytest.raises(PruningError, match=r"layer '0': the weight moved from meta to cpu.*Move the model first"):
        session.report()
