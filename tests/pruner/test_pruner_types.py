"""Pruner types (basic, pattern_lock, progressive, block_mask), lock_init_sparsity and group_lasso:
what each reaches, that pruned weights never grow back, and that a resume is exact."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import Field
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from pruner_helpers import batch, mlp, train_step


def sparsity(session: pk.Pruning) -> float:
    rows = session.report().rows
    return sum(r.sparsity * r.numel for r in rows) / sum(r.numel for r in rows)


def run(config: dict, steps: int, optimizer: str = "sgd", model: nn.Module | None = None, after=None) -> tuple[nn.Module, pk.Pruning, list[float]]:
    model = model if model is not None else mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if optimizer == "sgd" else torch.optim.AdamW(model.parameters(), lr=0.01)
    session = pk.prepare_pruning(model, config, opt)
    trace = []
    for step in range(steps):
        train_step(model, opt, step)
        trace.append(sparsity(session))
        if after is not None:
            after(step, model, session)
    return model, session, trace


# ---------------------------------------------------------------------------------------- registry
def test_the_builtin_types_are_registered_and_listed() -> None:
    assert {"basic", "pattern_lock", "progressive", "block_mask"} <= set(pk.PRUNERS.names())
    assert dict(pk.list_pruners())["progressive"].startswith("Basic pruning whose events zero")
    assert "group_lasso" in pk.REGULARIZERS


def test_unknown_type_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"pruners\[0\]\.type: unknown pruner type 'progresive'.*did you mean 'progressive'"):
        pk.load_config({"pruners": [{"type": "progresive", "target_sparsity": 0.5}]})


def test_type_parameters_are_validated_and_keys_a_type_does_not_use_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"progressive_steps: must be >= 2"):
        pk.load_config({"pruners": [{"type": "progressive", "progressive_steps": 1, "target_sparsity": 0.5}]})
    with pytest.raises(ConfigError, match=r"unknown key 'progressive_steps'"):
        pk.load_config({"pruners": [{"progressive_steps": 4, "target_sparsity": 0.5}]})
    with pytest.raises(ConfigError, match=r"pruner type 'pattern_lock' does not use target_sparsity"):
        pk.load_config({"pruners": [{"type": "pattern_lock", "target_sparsity": 0.5}]})
    with pytest.raises(ConfigError, match=r"block_mask masks whole blocks, and pattern 2:4 has none"):
        pk.load_config({"pruners": [{"type": "block_mask", "pattern": "2:4", "target_sparsity": 0.5}]})
    with pytest.raises(ConfigError, match=r"group_lasso shrinks blocks, and pattern 2:4 has none"):
        pk.load_config({"pruners": [{"pattern": "2:4", "target_sparsity": 0.5, "regularizer": {"type": "group_lasso", "reg_coeff": 0.1}}]})
    with pytest.raises(ConfigError, match=r"'snip_momentum_progressive' is a pruner type, not a criterion.*type: progressive with criterion: snip_momentum"):
        pk.load_config({"pruners": [{"criterion": "snip_momentum_progressive", "target_sparsity": 0.5}]})


def test_defaults_give_each_type_only_the_keys_it_reads() -> None:
    config = pk.load_config(
        {"defaults": {"target_sparsity": 0.5, "criterion": "snip", "progressive_steps": 2},
         "pruners": [{"type": "pattern_lock", "op_names": ["^0$"]}, {"type": "progressive", "op_names": ["^2$"]}, {"op_names": ["^4$"]}]}
    )
    lock, progressive, basic = config.pruners
    assert lock.type == "pattern_lock" and "target_sparsity" not in lock.model_fields_set
    assert progressive.progressive_steps == 2 and progressive.criterion == "snip"
    assert basic.criterion == "snip" and basic.target_sparsity == 0.5


def test_a_third_party_type_is_selectable_from_yaml_with_validated_parameters() -> None:
    class EveryOtherConfig(pk.PrunerConfig):
        type: str = "every_other_test"
        skip: int = Field(2, ge=1, le=8)

    @pk.register_pruner("every_other_test", config=EveryOtherConfig)
    class EveryOther(pk.PrunerGroup):
        """Runs only every `skip`-th event (test)."""

        config_model = EveryOtherConfig

    try:
        yaml_text = "pruners:\n  - type: every_other_test\n    skip: 3\n    target_sparsity: 0.5\n"
        config = pk.load_config(yaml_text)
        assert isinstance(config.pruners[0], EveryOtherConfig) and config.pruners[0].skip == 3
        with pytest.raises(ConfigError, match=r"<yaml>:3 pruners\[0\]\.skip: must be <= 8"):
            pk.load_config(yaml_text.replace("skip: 3", "skip: 9"))
        session = pk.Pruning(mlp(), config)
        assert type(session.groups[0]) is EveryOther
        schema = pk.config_json_schema()
        assert "EveryOtherConfig" in schema["$defs"]
        assert type(pk.get_pruner({"type": "every_other_test", "target_sparsity": 0.3}, mlp(seed=2))) is EveryOther
    finally:
        pk.PRUNERS.unregister("every_other_test")


# ---------------------------------------------------------------------------------------- pattern_lock
def sparse_model(kind: str) -> nn.Module:
    """An MLP whose weights already have zeros in the pattern ``kind``."""
    model = mlp(seed=5)
    with torch.no_grad():
        for m in model:
            if not isinstance(m, nn.Linear):
                continue
            w = m.weight
            if kind == "1x1":
                w.masked_fill_(w.abs() < w.abs().median(), 0.0)
            elif kind == "4x1 partly":  # blocks of 4 rows with 1-3 zeros each: INC unlocked them
                w[::4].zero_()
                w[1::4, ::2] = 0.0
            elif kind == "2:4":  # exactly 2:4: INC turned it into 100% zeros
                groups = w.view(w.shape[0], -1, 4)
                low = groups.abs().argsort(dim=-1)[..., :2]
                groups.scatter_(-1, low, 0.0)
            elif kind == "channels":
                w[:, ::3] = 0.0
            elif kind == "cancelling":  # a block [1, -1, 2, -2]: INC took it for a zero block
                w[:4, 0] = torch.tensor([1.0, -1.0, 2.0, -2.0])
                w[4:8].zero_()
    return model


@pytest.mark.parametrize("kind", ["1x1", "4x1 partly", "2:4", "channels", "cancelling"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_pattern_lock_keeps_exactly_the_zeros(kind: str, optimizer: str) -> None:
    model = sparse_model(kind)
    before = {n: (m.weight == 0).clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    model, session, _ = run({"pruners": [{"type": "pattern_lock"}]}, 12, optimizer, model=model)
    for name, zero in before.items():
        now = dict(model.named_modules())[name].weight == 0
        assert torch.equal(now, zero), name  # not one zero lost, not one added
    expected = sum(int(z.sum()) for z in before.values()) / sum(z.numel() for z in before.values())
    assert sparsity(session) == pytest.approx(expected, abs=1e-12)
    assert session.history[0].step == 0 and session.report().rows[0].pattern == "lock"


def test_lock_init_sparsity_continues_a_pruned_checkpoint() -> None:
    """s0 = the checkpoint's zero fraction; its zeros are kept; the schedule ramps from there."""
    model = sparse_model("1x1")  # 50% zeros
    config = {"pruners": [{"target_sparsity": 0.8, "lock_init_sparsity": True, "scheduler": {"type": "iterative", "end_step": 8, "frequency": 2, "decay": "linear"}}]}
    zeros_before = {n: (m.weight == 0).clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    model, session, _ = run(config, 10, "adamw", model=model)
    targets = [round(r.target, 4) for r in session.history]
    assert targets[0] == pytest.approx(0.5, abs=0.01) and targets[-1] == 0.8
    assert targets == sorted(targets)
    assert sparsity(session) == pytest.approx(0.8, abs=1e-3)
    for name, zero in zeros_before.items():
        assert bool((dict(model.named_modules())[name].weight[zero] == 0).all()), name


# ---------------------------------------------------------------------------------------- progressive
PROGRESSIVE = {"pruners": [{"type": "progressive", "pattern": "4x1", "criterion": "snip_momentum", "target_sparsity": 0.8,
                            "scheduler": {"type": "iterative", "start_step": 0, "end_step": 16, "frequency": 4, "decay": "linear"}}]}


@pytest.mark.parametrize("mode", ["scores", "linear"])
def test_progressive_zeroes_each_event_gradually_and_reaches_the_target_at_end_step(mode: str) -> None:
    config = copy.deepcopy(PROGRESSIVE)
    config["pruners"][0]["progressive_type"] = mode
    basic = copy.deepcopy(PROGRESSIVE)
    basic["pruners"][0]["type"] = "basic"
    _, session, trace = run(config, 20)
    _, _, plain = run(basic, 20)
    # basic jumps at each event (steps 4, 8, 12); progressive gets there in 4 sub-steps per event
    for event in (4, 8, 12):
        assert plain[event] == pytest.approx(plain[event + 3])
        steps = trace[event : event + 4]
        assert all(a < b for a, b in zip(steps, steps[1:])), (event, steps)
        assert steps[-1] == pytest.approx(plain[event], abs=0.02)
    assert trace[16] == plain[16] == pytest.approx(0.8, abs=0.005) and trace[15] < 0.7  # the last event at once, at end_step
    assert session.history[-1].step == 16 and session.history[-1].sparsity == pytest.approx(trace[16], abs=1e-9)


def test_progressive_needs_room_between_events() -> None:
    config = copy.deepcopy(PROGRESSIVE)
    config["pruners"][0]["scheduler"]["frequency"] = 1
    config["pruners"][0]["scheduler"]["end_step"] = 4
    _, _, trace = run(config, 6)
    basic = copy.deepcopy(config)
    basic["pruners"][0]["type"] = "basic"
    assert trace == run(basic, 6)[2]  # frequency 1: nothing to interpolate, the same as basic


def test_progressive_linear_needs_long_enough_blocks() -> None:
    with pytest.raises(ConfigError, match="fewer elements than progressive_steps"):
        pk.load_config({"pruners": [{"type": "progressive", "progressive_type": "linear", "pattern": "2x1", "target_sparsity": 0.5}]})


# ---------------------------------------------------------------------------------------- block_mask
def test_block_mask_scores_equal_the_momentum_of_a_real_block_mask_gradient() -> None:
    """INC multiplied the weight by a block mask in forward; dL/dmask equals the block sum of w·g."""
    config = {"pruners": [{"type": "block_mask", "pattern": "4x2", "op_names": ["^0$"], "target_sparsity": 0.5,
                           "scheduler": {"type": "iterative", "start_step": 0, "end_step": 6, "frequency": 6}}]}
    model = mlp()
    reference = copy.deepcopy(model)
    session = pk.Pruning(model, config)
    mask = torch.ones(24 // 4, 16 // 2, requires_grad=True)
    expected = torch.zeros_like(mask)
    for step in range(3):
        x, y = batch(step)
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        session.on_before_optimizer_step()
        session.on_after_optimizer_step()
        # the same step with a mask in forward, as INC did
        w = reference[0].weight
        expanded = mask.repeat_interleave(4, 0).repeat_interleave(2, 1)
        h = nn.functional.linear(x, w * expanded, reference[0].bias)
        out = reference[4](reference[3](reference[2](reference[1](h))))
        mask.grad = None
        nn.functional.mse_loss(out, y).backward()
        expected = 0.9 * expected + mask.grad.abs()
    assert torch.allclose(session.groups[0].scores["0"], expected, rtol=1e-5, atol=1e-7)


def test_block_mask_reaches_its_target_without_regrowth() -> None:
    config = {"pruners": [{"type": "block_mask", "pattern": "channelx1", "target_sparsity": 0.5,
                           "scheduler": {"type": "iterative", "end_step": 6, "frequency": 2}}]}
    model, session, trace = run(config, 10, "adamw")
    assert trace[6] == pytest.approx(0.5, abs=0.02) and trace[-1] == trace[6]
    for name, mask in session.masks.items():
        assert int(torch.count_nonzero(dict(model.named_modules())[name].weight[~mask])) == 0


# ---------------------------------------------------------------------------------------- group lasso
def test_group_lasso_scales_each_block_by_its_gradient_norm_inside_the_window() -> None:
    coeff = 2e-3
    config = {"pruners": [{"pattern": "4x1", "target_sparsity": 0.5, "op_names": ["^0$"], "regularizer": {"type": "group_lasso", "reg_coeff": coeff},
                           "scheduler": {"type": "iterative", "start_step": 1, "end_step": 3, "frequency": 2}}]}
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    session = pk.prepare_pruning(model, config, opt)
    checked = []
    for step in range(6):
        x, y = batch(step)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        g = model[0].weight.grad.clone()
        w_before = model[0].weight.detach().clone()
        events = len(session.history)
        opt.step()
        if len(session.history) > events:
            continue  # an event step: the masks changed inside this step
        mask = session.masks["0"]
        g = g * mask  # the session zeroes pruned gradients before the step
        expected = w_before - 0.05 * g
        if 1 <= step <= 3:  # the window: start_step .. last event
            norms = g.view(6, 4, 16).pow(2).sum(1).sqrt()
            expected = expected * (1 - coeff / (norms + 1e-12)).clamp(min=0).repeat_interleave(4, 0)
        assert torch.allclose(model[0].weight, expected * mask, atol=1e-7), step
        checked.append(step)
    assert checked == [0, 2, 4, 5]
    assert not torch.equal(session.masks["0"], torch.ones(24, 16, dtype=torch.bool))


# ---------------------------------------------------------------------------------------- resume
TYPE_CONFIGS = {
    "progressive": PROGRESSIVE,
    "progressive-linear": {"pruners": [{**PROGRESSIVE["pruners"][0], "progressive_type": "linear"}]},
    "block_mask": {"pruners": [{"type": "block_mask", "pattern": "4x1", "scope": "global", "target_sparsity": 0.6,
                                "scheduler": {"type": "iterative", "end_step": 12, "frequency": 4}}]},
    "pattern_lock": {"pruners": [{"type": "pattern_lock", "scheduler": {"type": "oneshot", "start_step": 3}}]},
    "group_lasso": {"pruners": [{"pattern": "4x1", "target_sparsity": 0.5, "regularizer": {"type": "group_lasso", "reg_coeff": 1e-3},
                                 "scheduler": {"type": "iterative", "end_step": 12, "frequency": 4}}]},
    "lock_init": {"pruners": [{"target_sparsity": 0.7, "lock_init_sparsity": True, "scheduler": {"type": "iterative", "start_step": 2, "end_step": 12, "frequency": 4}}]},
}


@pytest.mark.parametrize("name", list(TYPE_CONFIGS))
@pytest.mark.parametrize("cut", [6, 9])
def test_every_type_resumes_exactly(name: str, cut: int, tmp_path) -> None:
    """N steps in one go == cut steps, save (weights_only load), a fresh session and optimizer, the rest."""
    config = TYPE_CONFIGS[name]
    total = 16
    model = sparse_model("1x1")
    full_model = copy.deepcopy(model)
    opt = torch.optim.AdamW(full_model.parameters(), lr=0.01)
    full = pk.prepare_pruning(full_model, config, opt)
    for step in range(total):
        train_step(full_model, opt, step)

    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    first = pk.prepare_pruning(model, config, opt)
    for step in range(cut):
        train_step(model, opt, step)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "pruning": first.state_dict()}, tmp_path / "ckpt.pt")
    first.close()
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed_model = mlp(seed=9)
    resumed_model.load_state_dict(saved["model"])
    resumed_opt = torch.optim.AdamW(resumed_model.parameters(), lr=0.01)
    resumed_opt.load_state_dict(saved["opt"])
    resumed = pk.Pruning(resumed_model, config)
    resumed.load_state_dict(saved["pruning"])
    resumed.attach(resumed_opt)
    for step in range(cut, total):
        train_step(resumed_model, resumed_opt, step)
    assert resumed.history == full.history
    for a, b in zip(full_model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    for n, m in full.masks.items():
        assert torch.equal(m, resumed.masks[n])


@pytest.mark.parametrize("pattern", ["4x1", "3x2", "channelx1", "2xchannel", "1x1"])
def test_group_lasso_block_norms_are_the_same_in_row_chunks(pattern: str, monkeypatch) -> None:
    """Chunk-sized temporaries (partial edge blocks and blocks taller than a chunk included) give the
    block sums of one whole-tensor reduction."""
    import prunekit.regularization as regularization
    from prunekit.pruner.patterns import make_pattern
    from prunekit.pruner.selection import Layout
    from prunekit.config.pattern_syntax import parse_pattern

    g = torch.randn(23, 17)
    p = make_pattern(parse_pattern(pattern), Layout("linear", (23, 17)), where="test")
    whole = p.resolution(g.square(), "sum")
    monkeypatch.setattr(regularization, "_CHUNK", 40)  # ranges of 2 rows
    assert torch.allclose(regularization._block_square_sums(g, p), whole, rtol=1e-6)


@pytest.mark.parametrize("pattern, target", [("4x1", 0.8), ("channelx1", 0.8), ("2:4", 0.5)])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_lock_init_sparsity_locks_whole_units_and_the_schedule_counts_them(pattern: str, target: float, scope: str) -> None:
    """Zeros scattered at random: only blocks entirely zero (N:M: N zeros of a group) are locked, so the
    masks reach exactly each event's target; the other zeros are weights like the rest."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    with torch.no_grad():
        for layer in model:
            layer.weight.masked_fill_(torch.rand_like(layer.weight) < 0.5, 0.0)
    config = {"pruners": [{"pattern": pattern, "scope": scope, "target_sparsity": target, "lock_init_sparsity": True,
                           "scheduler": {"type": "iterative", "end_step": 4, "frequency": 2}}]}
    session = pk.Pruning(model, config)
    records = [r for r in (session.prune_now() for _ in range(5)) if r is not None]
    assert [r.step for r in records] == [0, 2, 4]
    for record in records:
        assert record.sparsity == pytest.approx(record.target, abs=0.01)  # never more than the schedule asks
    assert records[-1].sparsity == pytest.approx(target, abs=0.005)


def test_every_type_config_loads_back_from_its_dump() -> None:
    config = pk.load_config({"pruners": [{"type": "pattern_lock", "op_names": ["^0$"]}, {"type": "block_mask", "op_names": ["^2$"], "target_sparsity": 0.5},
                                         {"type": "progressive", "op_names": ["^4$"], "target_sparsity": 0.5}]})
    for dump in (config.model_dump(), config.model_dump(mode="json")):
        assert pk.load_config(dump) == config
    session = pk.Pruning(mlp(), config.model_dump(mode="json"))  # a saved state's config builds the session
    session.close()


def test_the_block_mask_criterion_refuses_what_it_cannot_score_in_any_type() -> None:
    with pytest.raises(ConfigError, match="block_mask masks whole blocks, and pattern 2:4 has none"):
        pk.load_config({"pruners": [{"criterion": "block_mask", "pattern": "2:4", "target_sparsity": 0.5}]})
    with pytest.raises(ConfigError, match="'max' of signed products means nothing"):
        pk.load_config({"pruners": [{"type": "progressive", "criterion": "block_mask", "reduce": "max", "target_sparsity": 0.5}]})


def test_a_corrupted_progressive_state_is_refused() -> None:
    model, session, _ = run(PROGRESSIVE, 5)  # sub-steps of the event at step 4 pending
    state = session.state_dict()
    assert state["groups"]["pruner0"]["progressive"]["pending"]["done"] == 1
    state["groups"]["pruner0"]["progressive"]["pending"]["every"] = 0
    with pytest.raises(pk.PruningError, match=r"progressive\.pending: expected 2 <= stages <= 64, every >= 1"):
        session.load_state_dict(state)
    state = session.state_dict()
    state["groups"]["pruner0"]["progressive"]["stage"]["0"].fill_(9)
    with pytest.raises(pk.PruningError, match=r"progressive\.stage\['0'\]: values outside \[-1, 4\]"):
        session.load_state_dict(state)


def test_prune_now_does_not_run_the_regularizer() -> None:
    """No optimizer step was taken: the weights only change by the event's masks."""
    model = mlp()
    config = {"pruners": [{"pattern": "4x1", "target_sparsity": 0.5, "regularizer": {"type": "group_lasso", "reg_coeff": 10.0}}]}
    session = pk.Pruning(model, config)
    before = [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]
    nn.functional.mse_loss(model(batch(0)[0]), batch(0)[1]).backward()
    session.prune_now()
    for w, m in zip(before, [m for m in model if isinstance(m, nn.Linear)]):
        kept = session.masks[str(list(model).index(m))]
        assert torch.equal(m.weight[kept], w[kept])
