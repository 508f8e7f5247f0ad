"""Weight schedulers: DESIGN's reference tables, the event grid, and properties of every entry."""

from __future__ import annotations

import math

import pytest

import prunekit as pk
from prunekit.errors import ConfigError, PruningError
from prunekit.schedulers import Scheduler, WeightSchedulerConfig

REFERENCE_T10 = {  # target 0.9, T = 10, s0 = 0, max per op 0.98; k = 1..10
    "exp": [0.205672, 0.369043, 0.498813, 0.601893, 0.683772, 0.748811, 0.800474, 0.841511, 0.874107, 0.9],
    "cos": [0.011080, 0.044049, 0.098094, 0.171885, 0.263604, 0.370993, 0.491409, 0.621885, 0.759209, 0.9],
    "cube": [0.000900, 0.007200, 0.024300, 0.057600, 0.112500, 0.194400, 0.308700, 0.460800, 0.656100, 0.9],
    "linear": [0.09, 0.18, 0.27, 0.36, 0.45, 0.54, 0.63, 0.72, 0.81, 0.9],
}
REFERENCE_T4 = {  # target 0.5, T = 4
    "exp": [0.159104, 0.292893, 0.405396, 0.5],
    "cos": [0.038060, 0.146447, 0.308658, 0.5],
    "cube": [0.007813, 0.0625, 0.210938, 0.5],
}


def _iterative(decay: str, **window) -> Scheduler:
    return pk.get_scheduler({"type": "iterative", "decay": decay, **window}, max_sparsity_per_op=0.98)


@pytest.mark.parametrize("decay", sorted(REFERENCE_T10))
def test_reference_table_target_09_t10(decay):
    sched = _iterative(decay, start_step=0, end_step=10)
    got = [sched.update_sparsity_ratio(0.9, k, 10) for k in range(1, 11)]
    assert got == pytest.approx(REFERENCE_T10[decay], abs=1e-6)


@pytest.mark.parametrize("decay", sorted(REFERENCE_T4))
def test_reference_table_target_05_t4(decay):
    sched = _iterative(decay, start_step=0, end_step=4)
    got = [sched.update_sparsity_ratio(0.5, k, 4) for k in range(1, 5)]
    assert got == pytest.approx(REFERENCE_T4[decay], abs=1e-6)


def test_agp_is_the_fast_start_ramp():
    sched = _iterative("agp", start_step=0, end_step=4)
    got = [sched.update_sparsity_ratio(0.8, k, 4) for k in range(5)]
    assert got == pytest.approx([0.8 * (1 - (1 - k / 4) ** 3) for k in range(5)], abs=1e-12)


@pytest.mark.parametrize(
    ("decay", "targets"),
    [("exp", [0.0, 0.3313, 0.5528, 0.7009, 0.8]), ("linear", [0.0, 0.2, 0.4, 0.6, 0.8])],
)
def test_end_to_end_event_grid_reference(decay, targets):
    sched = _iterative(decay, start_step=2, end_step=20, frequency=4)
    events = sched.events()
    assert [e.step for e in events] == [2, 6, 10, 14, 18]
    assert [sched.ratio_at_event(e, 0.8) for e in events] == pytest.approx(targets, abs=1e-4)


@pytest.mark.parametrize(
    ("window", "steps", "indices"),
    [
        ((0, 10, 1), list(range(11)), list(range(11))),
        ((0, 10, 2), [0, 2, 4, 6, 8, 10], [0, 1, 2, 3, 4, 5]),
        ((1, 10, 3), [1, 4, 7, 10], [0, 1, 2, 3]),
        ((2, 20, 4), [2, 6, 10, 14, 18], [0, 1, 2, 3, 4]),
        ((3, 3, 1), [3], [1]),  # T = 0 -> a single event at s reaches the target
        ((0, 3, 5), [0], [1]),
    ],
)
def test_event_grid_matches_design(window, steps, indices):
    s, e, f = window
    sched = _iterative("exp", start_step=s, end_step=e, frequency=f)
    assert [ev.step for ev in sched.events()] == steps
    assert [ev.index for ev in sched.events()] == indices
    for step in range(0, e + 8):
        event = sched.event_at(step)
        assert (event is not None) == (step in steps)
    assert sched.ratio_at_event(sched.events()[-1], 0.5) == pytest.approx(0.5)


def test_first_iterative_event_prunes_nothing():
    sched = _iterative("exp", start_step=5, end_step=15, frequency=5)
    assert sched.step(5, 0.9) == 0.0
    assert sched.step(6, 0.9) is None
    assert sched.step(10, 0.9) == pytest.approx(1 - 0.1**0.5)


def test_target_at_is_the_closed_form_of_step():
    sched = _iterative("linear", start_step=2, end_step=20, frequency=4)
    assert sched.target_at(0, 0.8) == 0.0
    assert sched.target_at(5, 0.8) == 0.0  # event at 2 aims for s0
    assert sched.target_at(6, 0.8) == pytest.approx(0.2)
    assert sched.target_at(9, 0.8) == pytest.approx(0.2)
    assert sched.target_at(18, 0.8) == pytest.approx(0.8)
    assert sched.target_at(10_000, 0.8) == pytest.approx(0.8)


def test_max_sparsity_per_op_caps_the_curve_and_result_never_exceeds_target():
    sched = pk.get_scheduler({"type": "iterative", "decay": "linear", "end_step": 4}, max_sparsity_per_op=0.6)
    assert sched.update_sparsity_ratio(0.9, 4, 4) == pytest.approx(0.6)
    assert sched.update_sparsity_ratio(0.9, 2, 4) == pytest.approx(0.3)


def test_cubic_is_rejected_naming_both_meanings():
    with pytest.raises(ConfigError) as info:
        pk.get_scheduler({"type": "iterative", "decay": "cubic", "end_step": 10})
    text = str(info.value)
    assert "scheduler.decay" in text and "'agp'" in text and "'cube'" in text


def test_oneshot_returns_target_and_has_one_event():
    sched = pk.get_scheduler({"type": "oneshot", "start_step": 7})
    assert [(e.step, e.index, e.total) for e in sched.events()] == [(7, 1, 1)]
    assert sched.update_sparsity_ratio(0.7, 0, 1) == 0.7
    assert sched.step(6, 0.7) is None and sched.step(7, 0.7) == 0.7 and sched.step(8, 0.7) is None


def test_oneshot_with_a_window_is_an_error():
    with pytest.raises(ConfigError, match=r"scheduler.end_step: a one-shot schedule prunes once"):
        pk.get_scheduler({"type": "oneshot", "start_step": 0, "end_step": 10})


def test_steps_must_increase():
    sched = _iterative("exp", start_step=0, end_step=10)
    sched.step(3, 0.5)
    with pytest.raises(PruningError, match="steps must increase"):
        sched.step(3, 0.5)


def test_direct_construction_with_keywords_and_aliases():
    sched = pk.IterativeScheduler(start_step=1, end_step=9, frequency=2, decay="cos")
    assert isinstance(sched.config, WeightSchedulerConfig) and sched.config.decay == "cos"
    assert type(pk.get_scheduler({"type": "gradual", "end_step": 5})) is pk.IterativeScheduler
    assert type(pk.get_scheduler({"type": "one_shot"})) is pk.OneshotScheduler


def test_load_state_dict_refuses_another_schedule():
    a = _iterative("exp", start_step=0, end_step=10)
    b = _iterative("cos", start_step=0, end_step=10)
    with pytest.raises(PruningError, match=r"decay: saved 'exp', now 'cos'"):
        b.load_state_dict(a.state_dict())


# ----------------------------------------------------------------------- every registered scheduler
def _weight_scheduler_names() -> list[str]:
    import custom_scheduler  # noqa: F401  (registers 'polynomial' as user code would)

    return [e.name for e in pk.SCHEDULERS.entries() if isinstance(e.obj, type) and issubclass(e.obj, Scheduler)]


def _window_for(name: str) -> dict:
    if name in ("oneshot",):
        return {"start_step": 3}
    return {"start_step": 3, "end_step": 27, "frequency": 4}


@pytest.mark.parametrize("name", _weight_scheduler_names())
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9])
def test_every_scheduler_is_monotone_reaches_target_and_stays(name, target):
    sched = pk.get_scheduler({"type": name, **_window_for(name)}, max_sparsity_per_op=0.98)
    ratios = []
    for step in range(0, 60):
        ratio = sched.step(step, target)
        if ratio is not None:
            ratios.append(ratio)
            assert not math.isnan(ratio)
    assert ratios, f"{name} fired no event"
    assert all(b >= a - 1e-12 for a, b in zip(ratios, ratios[1:])), ratios
    assert ratios[-1] == pytest.approx(target)
    last = sched.last_event_step
    assert all(sched.target_at(step, target) == pytest.approx(target) for step in range(last, last + 50))


@pytest.mark.parametrize("name", _weight_scheduler_names())
def test_every_scheduler_survives_a_state_round_trip(name):
    config = {"type": name, **_window_for(name)}
    first = pk.get_scheduler(config)
    for step in range(0, 12):
        first.step(step, 0.8)
    second = pk.get_scheduler(config)
    second.load_state_dict(first.state_dict())
    assert second.state_dict() == first.state_dict()
    assert [second.step(s, 0.8) for s in range(12, 40)] == [first.step(s, 0.8) for s in range(12, 40)]
