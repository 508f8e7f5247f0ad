"""Hostile and careless inputs: each one is a located ConfigError (or a clear PruningError), quickly.

Categories: booleans where numbers belong, custom schedulers returning impossible ratios, custom
scheduler configs whose validators crash or whose defaults break the window, scheduler state that
must load with ``weights_only=True``, YAML that would expand or nest without bound, regular
expressions with catastrophic backtracking, and keys that are not strings.
"""

from __future__ import annotations

import enum
import io
import math
import time
from typing import Any

import pytest
import torch
from pydantic import Field, ValidationError, field_validator, model_validator
from torch import nn

import prunekit as pk
from prunekit.cli import main as cli_main
from prunekit.config import load_config
from prunekit.errors import ConfigError, PruningError
from prunekit.schedulers import Scheduler, WeightSchedulerConfig
from prunekit.config.validation import check_regexes, short_repr


def _problems(source: Any) -> list[pk.ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_config(source)
    return list(info.value.problems)


def _one(source: Any) -> pk.ConfigProblem:
    problems = _problems(source)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def _group(**overrides: Any) -> dict:
    return {"pruners": [{"target_sparsity": 0.5, **overrides}]}


# =============================================================================== 1. booleans
BOOL_YAML = [
    ("pruners:\n  - target_sparsity: false\n", "pruners[0].target_sparsity", 2),
    ("pruners:\n  - target_sparsity: 0.5\n    min_sparsity_per_op: true\n", "pruners[0].min_sparsity_per_op", 3),
    ("pruners:\n  - target_sparsity: 0.5\n    max_sparsity_per_op: true\n", "pruners[0].max_sparsity_per_op", 3),
    ("pruners:\n  - target_sparsity: 0.5\n    scheduler: {type: iterative,\n      end_step: true}\n", "pruners[0].scheduler.end_step", 4),
    ("pruners:\n  - target_sparsity: 0.5\n    scheduler: {type: iterative, end_step: 8,\n      frequency: true}\n", "pruners[0].scheduler.frequency", 4),
    ("pruners:\n  - target_sparsity: 0.5\n    scheduler: {type: iterative, end_step: 8,\n      start_step: yes}\n", "pruners[0].scheduler.start_step", 4),
    ("pruners:\n  - target_sparsity: 0.5\n    scheduler: {type: iterative, end_step: 8,\n      init_sparsity: on}\n", "pruners[0].scheduler.init_sparsity", 4),
    ("version: true\npruners:\n  - target_sparsity: 0.5\n", "version", 1),
    ("target_sparsity: true\n", "target_sparsity", 1),  # INC form
    ("target_sparsity: 0.5\nstart_step: 0\nend_step: 8\npruning_frequency: true\n", "pruning_frequency", 4),
]


@pytest.mark.parametrize(("text", "path", "line"), BOOL_YAML, ids=[b[1] for b in BOOL_YAML])
def test_a_boolean_is_never_a_number_in_yaml(text, path, line):
    problem = _one(text)
    assert (problem.path, problem.line) == (path, line), str(problem)
    assert "boolean" in problem.what and ("an integer" in problem.what or "a number" in problem.what)
    assert "write" in problem.fix and "e.g." in problem.fix


def test_a_boolean_is_never_a_number_in_dicts_and_keyword_arguments():
    assert _one(_group(target_sparsity=True)).path == "pruners[0].target_sparsity"
    problem = _one(pk.WeightPruningConfig(target_sparsity=True))
    assert problem.path == "target_sparsity" and "boolean" in problem.what
    assert _one(pk.WeightPruningConfig(end_step=True, start_step=0)).path == "end_step"
    with pytest.raises(ConfigError, match=r"scheduler\.end_step: expected an integer, got a boolean"):
        pk.IterativeScheduler(start_step=0, end_step=True)
    with pytest.raises(ConfigError, match=r"scheduler\.frequency: expected an integer, got a boolean"):
        pk.get_scheduler({"type": "iterative", "end_step": 10, "frequency": True})
    with pytest.raises(ConfigError, match="max_sparsity_per_op"):
        pk.get_scheduler({"type": "iterative", "end_step": 10}, max_sparsity_per_op=True)
    with pytest.raises(ValidationError, match="expected a number, got a boolean"):
        pk.PrunerConfig(target_sparsity=False)


class _NumbersConfig(WeightSchedulerConfig):
    type: str = "numbers_test"
    steps: int = Field(3, ge=1)
    gain: float | None = None
    sizes: list[int] = Field(default_factory=lambda: [1])
    flag: bool = False


def _register_numbers() -> type[Scheduler]:
    @pk.register_scheduler("numbers_test", config=_NumbersConfig)
    class NumbersScheduler(pk.Scheduler):
        """Test scheduler with its own number fields."""

        config_model = _NumbersConfig

        def update_sparsity_ratio(self, target_ratio, current_prune_step, total_prune_steps, masks=None, init_ratio=0.0):
            return target_ratio

    return NumbersScheduler


@pytest.mark.parametrize(
    ("params", "key"),
    [({"steps": True}, "steps"), ({"gain": False}, "gain"), ({"sizes": [2, True]}, "sizes")],
)
def test_a_third_party_scheduler_config_refuses_booleans_for_its_numbers(scratch_scheduler_names, params, key):
    cls = _register_numbers()
    problem = _one(_group(scheduler={"type": "numbers_test", "end_step": 4, **params}))
    assert problem.path == f"pruners[0].scheduler.{key}" and "boolean" in problem.what
    with pytest.raises(ConfigError, match=rf"scheduler\.{key}: .*boolean"):
        cls(end_step=4, **params)


def test_boolean_fields_still_take_booleans(scratch_scheduler_names):
    cls = _register_numbers()
    assert cls(end_step=4, flag=True).config.flag is True
    config = load_config(_group(scheduler={"type": "numbers_test", "end_step": 4, "flag": True, "gain": 2, "steps": 2}))
    assert config.pruners[0].scheduler.flag is True and config.pruners[0].scheduler.gain == 2.0


# =============================================================================== 2. impossible ratios
def _register_returning(value: Any, name: str = "bad_ratio_test") -> type[Scheduler]:
    @pk.register_scheduler(name, config=None)
    class BadRatioScheduler(pk.Scheduler):
        """Returns whatever the test asks for."""

        def update_sparsity_ratio(self, target_ratio, current_prune_step, total_prune_steps, masks=None, init_ratio=0.0):
            return value if current_prune_step >= 1 else 0.0

    pk.SCHEDULERS.unregister(name)
    pk.register_scheduler(name, config=_BadRatioConfig)(BadRatioScheduler)
    return BadRatioScheduler


class _BadRatioConfig(WeightSchedulerConfig):
    type: str = "bad_ratio_test"


@pytest.mark.parametrize("value", [1.7, -0.25, math.nan, math.inf, "0.5", None, True], ids=repr)
def test_a_ratio_outside_0_1_or_not_a_number_names_the_scheduler_step_and_value(scratch_scheduler_names, value):
    cls = _register_returning(value)
    sched = cls(start_step=2, end_step=6, frequency=2)
    assert sched.step(2, 0.5) == 0.0
    with pytest.raises(PruningError) as info:
        sched.step(4, 0.5)
    text = str(info.value)
    assert "'bad_ratio_test'" in text and "BadRatioScheduler" in text
    assert "prune step 1 of 2" in text and "optimizer step 4" in text and repr(value) in text
    assert "[0, 1]" in text
    # the failed step is not recorded: the scheduler state is what it was
    assert (sched.last_step, sched.last_ratio, sched.num_events) == (2, 0.0, 1)
    with pytest.raises(PruningError, match="bad_ratio_test"):
        sched.target_at(100, 0.5)


def test_the_session_does_not_record_an_event_whose_ratio_is_refused(scratch_scheduler_names):
    _register_returning(1.7)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    config = load_config(_group(scheduler={"type": "bad_ratio_test", "start_step": 0, "end_step": 2, "frequency": 1}))
    session = pk.Pruning(model, config)
    session.prune_now()  # event 0 aims for 0
    with pytest.raises(PruningError, match=r"returned 1\.7"):
        session.prune_now()
    group = session.groups[0]
    assert (group.scheduler.last_step, group.scheduler.num_events) == (0, 1)
    assert all(bool(m.all()) for m in session.masks.values())


def test_plan_reports_the_refused_ratio_in_one_line(scratch_scheduler_names, tmp_path, capsys):
    _register_returning(math.nan)
    file = tmp_path / "plan.yaml"
    file.write_text("pruners:\n  - target_sparsity: 0.5\n    scheduler: {type: bad_ratio_test, end_step: 4, frequency: 2}\n")
    assert cli_main(["plan", str(file)]) == 1
    err = capsys.readouterr().err
    assert "bad_ratio_test" in err and "nan" in err and "Traceback" not in err


# =============================================================================== 3. crashing custom configs
@pytest.mark.parametrize("exc", [TypeError, KeyError, ZeroDivisionError, AttributeError])
@pytest.mark.parametrize("where", ["field", "model"])
def test_a_custom_validator_that_crashes_is_a_located_config_error(scratch_scheduler_names, exc, where):
    if where == "field":

        class CrashConfig(WeightSchedulerConfig):
            type: str = "crash_test"
            knob: int = 1

            @field_validator("knob")
            @classmethod
            def _boom(cls, value: int) -> int:
                raise exc("boom")

    else:

        class CrashConfig(WeightSchedulerConfig):  # type: ignore[no-redef]
            type: str = "crash_test"
            knob: int = 1

            @model_validator(mode="after")
            def _boom(self) -> "CrashConfig":
                raise exc("boom")

    @pk.register_scheduler("crash_test", config=CrashConfig)
    class CrashScheduler(pk.Scheduler):
        """Crashes in its config model."""

        config_model = CrashConfig

        def update_sparsity_ratio(self, target_ratio, current_prune_step, total_prune_steps, masks=None, init_ratio=0.0):
            return target_ratio

    problem = _one("pruners:\n  - target_sparsity: 0.5\n    scheduler: {type: crash_test, knob: 2}\n")
    assert (problem.path, problem.line) == ("pruners[0].scheduler", 3)
    assert exc.__name__ in problem.what and "CrashConfig" in problem.what
    for build in (
        lambda: pk.get_scheduler({"type": "crash_test", "knob": 2}),
        lambda: CrashScheduler({"knob": 2}),
        lambda: CrashScheduler(knob=2),
    ):
        with pytest.raises(ConfigError) as info:
            build()
        assert info.value.problems[0].path == "scheduler" and exc.__name__ in info.value.problems[0].what


@pytest.mark.parametrize(
    ("declaration", "key", "what"),
    [
        ({"frequency": (int, 0)}, "frequency", "must be >= 1"),
        ({"start_step": (int, -5)}, "start_step", "must be >= 0"),
        ({"end_step": (int, 10**12)}, "end_step", "must be <= 1000000000"),
        ({"start_step": (int, 9), "end_step": (int, 3)}, "end_step", "before start_step"),
    ],
)
def test_invalid_redeclared_defaults_are_refused_at_the_scheduler_key(scratch_scheduler_names, declaration, key, what):
    from pydantic import create_model

    model = create_model("LooseConfig", __base__=WeightSchedulerConfig, type=(str, "loose_test"), **declaration)

    @pk.register_scheduler("loose_test", config=model)
    class LooseScheduler(pk.Scheduler):
        """Redeclares the window fields without their bounds."""

        config_model = model

        def update_sparsity_ratio(self, target_ratio, current_prune_step, total_prune_steps, masks=None, init_ratio=0.0):
            return target_ratio

    problem = _one("pruners:\n  - target_sparsity: 0.5\n    scheduler: {type: loose_test}\n")
    assert problem.path == f"pruners[0].scheduler.{key}" and what in problem.what and problem.line == 3
    for build in (lambda: pk.get_scheduler({"type": "loose_test"}), lambda: LooseScheduler(), lambda: LooseScheduler({})):
        with pytest.raises(ConfigError, match=rf"scheduler\.{key}: .*{what}"):
            build()


def test_an_unvalidated_config_instance_is_checked_before_any_division():
    bad = pk.IterativeConfig.model_construct(type="iterative", start_step=0, end_step=10, frequency=0, decay="exp", init_sparsity=0.0)
    with pytest.raises(ConfigError, match=r"scheduler\.frequency: must be >= 1"):
        pk.IterativeScheduler(bad)


# =============================================================================== 4. state with non-primitive config
class _Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


class _EnumConfig(WeightSchedulerConfig):
    type: str = "enum_test"
    mode: _Mode = _Mode.FAST
    shape: tuple[int, int] = (1, 2)


def _register_enum() -> type[Scheduler]:
    @pk.register_scheduler("enum_test", config=_EnumConfig)
    class EnumScheduler(pk.Scheduler):
        """A config with an Enum and a tuple field."""

        config_model = _EnumConfig

        def update_sparsity_ratio(self, target_ratio, current_prune_step, total_prune_steps, masks=None, init_ratio=0.0):
            if current_prune_step >= total_prune_steps:
                return target_ratio
            return target_ratio * current_prune_step / total_prune_steps

    return EnumScheduler


def _round_trip_weights_only(state: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_scheduler_state_with_an_enum_config_loads_with_weights_only(scratch_scheduler_names):
    cls = _register_enum()
    first = cls(start_step=0, end_step=8, frequency=2, mode="slow")
    for step in range(5):
        first.step(step, 0.8)
    loaded = _round_trip_weights_only(first.state_dict())
    assert loaded["config"]["mode"] == "slow"
    second = cls(start_step=0, end_step=8, frequency=2, mode=_Mode.SLOW)
    second.load_state_dict(loaded)
    assert [second.step(s, 0.8) for s in range(5, 12)] == [first.step(s, 0.8) for s in range(5, 12)]
    with pytest.raises(PruningError, match=r"mode: saved 'slow', now 'fast'"):
        cls(start_step=0, end_step=8, frequency=2).load_state_dict(loaded)


def test_session_state_with_an_enum_scheduler_loads_with_weights_only(scratch_scheduler_names):
    _register_enum()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    config = _group(scheduler={"type": "enum_test", "start_step": 0, "end_step": 2, "frequency": 1, "mode": "slow"})
    session = pk.Pruning(model, load_config(config))
    session.prune_now()
    session.prune_now()
    loaded = _round_trip_weights_only(session.state_dict())
    fresh = pk.Pruning(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), load_config(config))
    fresh.load_state_dict(loaded)
    assert fresh.global_step == session.global_step


# =============================================================================== 5. bounded YAML
def _alias_bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append(f"pruners: [*a{levels}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_quickly_with_its_line():
    start = time.perf_counter()
    problem = _one(_alias_bomb(9))
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, elapsed
    assert "alias" in problem.what and "100,000" in problem.what and problem.line is not None
    assert problem.line <= 10


def test_a_self_referencing_alias_is_refused_with_its_line():
    problem = _one("pruners: &a [*a]\n")
    assert problem.line == 1 and "refers to itself" in problem.what
    problem = _one("version: 1\npruners:\n  - &g\n    target_sparsity: 0.5\n    extra: *g\n")
    assert problem.line == 5 and "refers to itself" in problem.what


@pytest.mark.parametrize("depth", [100, 5000])
def test_very_deep_nesting_is_refused_quickly(depth):
    start = time.perf_counter()
    problem = _one("pruners: " + "[" * depth + "]" * depth + "\n")
    assert time.perf_counter() - start < 2.0
    assert problem.line == 1 and "nested more than 64 levels" in problem.what


def test_deep_block_nesting_is_refused():
    text = "pruners:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(80)) + "  " * 81 + "v\n"
    problem = _one(text)
    assert "nested more than 64 levels" in problem.what and problem.line is not None


def test_a_5000_digit_integer_is_refused_with_its_line():
    problem = _one("pruners:\n  - target_sparsity: 0.5\n    scheduler: {type: iterative, end_step: " + "9" * 5000 + "}\n")
    assert problem.line == 3 and "5,000 characters" in problem.what
    assert len(str(problem)) < 400


def test_a_one_megabyte_value_is_refused_with_its_line():
    problem = _one("pruners:\n  - target_sparsity: 0.5\n    pattern: " + "x" * 1_000_000 + "\n")
    assert problem.line == 3 and "1,000,000 characters" in problem.what and len(str(problem)) < 400


def test_a_huge_file_is_refused_with_a_line(tmp_path):
    file = tmp_path / "huge.yaml"
    file.write_text("pruners:\n  - target_sparsity: 0.5\n" + "# padding padding padding padding\n" * 200_000)
    start = time.perf_counter()
    problem = _one(file)
    assert time.perf_counter() - start < 2.0
    assert problem.source == str(file) and problem.line is not None and "MiB" in problem.what


def test_too_many_values_are_refused():
    text = "names: &n [" + ", ".join(["a"] * 1000) + "]\npruners:\n  - target_sparsity: 0.5\n    op_names: [" + "*n, " * 120 + "]\n"
    start = time.perf_counter()
    problem = _one(text)
    assert time.perf_counter() - start < 1.0
    assert problem.line == 4 and "100,000" in problem.what


def test_a_non_utf8_file_names_the_line_of_the_first_bad_byte(tmp_path):
    file = tmp_path / "latin1.yaml"
    file.write_bytes(b"pruners:\n  - target_sparsity: 0.5\n    name: caf\xe9\n")
    problem = _one(file)
    assert problem.line == 3 and "UTF-8" in problem.what and "0xe9" in problem.what


def test_a_control_character_names_its_line():
    problem = _one("pruners:\n  - target_sparsity: 0.5\n    name: a\x07b\n")
    assert problem.line == 3


def test_a_long_path_like_string_is_a_config_error_not_an_os_error():
    problem = _one("x" * 5000)
    assert "mapping" in problem.what


def test_deep_or_recursive_dicts_are_config_errors():
    deep: Any = 0.5
    for _ in range(5000):
        deep = [deep]
    problem = _one({"pruners": [{"target_sparsity": 0.5, "op_names": deep}]})
    assert "nested more than 64 levels" in problem.what
    loop: dict = {"target_sparsity": 0.5}
    loop["self"] = loop
    assert "refers to itself" in _one({"pruners": [loop]}).what
    with pytest.raises(ConfigError, match="nested more than 64 levels"):
        pk.WeightPruningConfig(pruning_configs=[{"op_names": deep}])


LONG = "y" * 5000


@pytest.mark.parametrize(
    "source",
    [
        _group(pattern=LONG),
        _group(criterion=LONG),
        _group(op_types=[LONG + "."]),
        _group(op_names=["(" + LONG]),
        _group(scope=LONG),
        _group(target_sparsity=LONG),
        _group(scheduler={"type": LONG}),
        _group(scheduler={"type": "iterative", "end_step": 10, "decay": LONG}),
        _group(**{LONG: 1}),
        {"pruners": [{"target_sparsity": 0.5}], LONG: 1},
        {LONG: 1, "target_sparsity": 0.5},
        "pruners:\n  - target_sparsity: 0.5\n    pattern: " + LONG + "\n",
        "pruners:\n  - target_sparsity: !!python/name:" + LONG + "\n",
    ],
    ids=lambda s: str(s)[:40],
)
def test_echoed_values_are_shortened(source):
    for problem in _problems(source):
        assert len(str(problem)) < 600, str(problem)[:300]


def test_short_repr_keeps_short_values_and_marks_long_ones():
    assert short_repr("4x1") == "'4x1'"
    text = short_repr("z" * 1000)
    assert len(text) < 120 and "…" in text and "1,000 characters" in text


@pytest.mark.parametrize(
    "text",
    [
        _alias_bomb(9),
        "pruners: &a [*a]\n",
        "pruners: " + "[" * 5000 + "]" * 5000 + "\n",
        "pruners:\n  - target_sparsity: 0.5\n    scheduler: {type: iterative, end_step: " + "9" * 5000 + "}\n",
        "pruners:\n  - target_sparsity: 0.5\n    pattern: " + "x" * 1_000_000 + "\n",
        "pruners:\n  - target_sparsity: 0.5\n" + "#" * 100 + "\n" * 30_000,
        "pruners:\n  - target_sparsity: 0.5\n    op_names: ['^(a+)+$']\n",
        b"pruners:\n  - target_sparsity: 0.5\n    name: \xff\n",
    ],
    ids=["bomb", "self", "deep", "digits", "1MB", "huge", "redos", "latin1"],
)
def test_cli_validate_exits_2_with_file_and_line_on_every_hostile_file(tmp_path, capsys, text):
    file = tmp_path / "hostile.yaml"
    if isinstance(text, bytes):
        file.write_bytes(text)
    elif text.startswith("pruners:\n  - target_sparsity: 0.5\n#"):
        file.write_text(text * 40)
    else:
        file.write_text(text)
    assert cli_main(["validate", str(file)]) == 2
    err = capsys.readouterr().err
    assert f"{file}:" in err and "Traceback" not in err and len(err) < 2000


# =============================================================================== 6. regular expressions
CATASTROPHIC = [
    "^(a+)+$",
    "(a|a)+",
    "(a|aa)*",
    "(.*a){20}",
    "(\\w+\\s?)+",
    "(x+x+)+y",
    "((ab)*)+",
    "(\\d+|\\w+)+$",
    "^(?:a(_|\\s*)?)+$",  # an optional part that can match nothing in two ways
    "^(?:(?=a)+a)+$",  # a repeated look-ahead
]
ORDINARY = [
    "^encoder\\.layer\\.\\d+\\.",
    "(q|k|v)_proj$",
    "layers\\.(0|1|2)\\.",
    ".*attn.*",
    "^fc\\d+$",
    "^model\\.layers\\.\\d+\\.(self_attn|mlp)\\.",
    "(layers\\.\\d+\\.)+",
    "([a-z]+_)*proj",
    "(\\w+\\.)*fc\\d",
    "^(?:encoder|decoder)\\.block\\.[0-9]{1,3}\\.",
    "(\\d{1,3}\\.){3}",
    "(?>a+)+",
    "^(?:[a-z_]+\\.)*linear\\d*$",
    "^(?!.*lm_head).*$",
    "^bert\\.encoder\\.layer\\.\\d+\\.(attention\\.self\\.(query|key|value)|output\\.dense)$",
]


@pytest.mark.parametrize("pattern", CATASTROPHIC)
@pytest.mark.parametrize("key", ["op_names", "excluded_op_names"])
def test_catastrophic_regexes_are_refused_with_a_rewrite(pattern, key):
    problem = _one(_group(**{key: ["fc", pattern]}))
    assert problem.path == f"pruners[0].{key}"
    assert f"{key}[1]" in problem.what and "exponential" in problem.what
    assert "rewrite" in problem.fix


def test_catastrophic_data_selectors_are_refused():
    problem = _one({"data_sparsity": {"data_names": ["^(a+)+$"], "sparsifier": {"type": "data_norm", "sparsity_level": 0.5}}})
    assert problem.path == "data_sparsity.data_names" and "exponential" in problem.what


@pytest.mark.parametrize("pattern", ORDINARY)
def test_ordinary_regexes_are_accepted(pattern):
    assert check_regexes([pattern], "op_names") == [pattern]
    load_config(_group(op_names=[pattern]))


def test_the_regex_check_is_fast():
    patterns = ORDINARY * 10
    start = time.perf_counter()
    check_regexes(patterns, "op_names")
    per_pattern = (time.perf_counter() - start) / len(patterns)
    assert per_pattern < 0.005, per_pattern
    long_literal = ["layer\\." * 1200]
    start = time.perf_counter()
    check_regexes(long_literal, "op_names")
    assert time.perf_counter() - start < 0.5


def test_unparseable_regexes_are_config_errors():
    assert "valid regular expression" in _one(_group(op_names=["(" * 3000 + ")" * 3000])).what
    assert "valid regular expression" in _one(_group(op_names=["a{99999999999}"])).what


# =============================================================================== 7. keys and scalars
@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("pruners:\n  - target_sparsity: 0.5\n    1: x\n", "1"),
        ("pruners:\n  - target_sparsity: 0.5\n    null: x\n", "null"),
        ("pruners:\n  - target_sparsity: 0.5\n    yes: x\n", "yes"),
        ("1: x\npruners:\n  - target_sparsity: 0.5\n", "1"),
    ],
)
def test_non_string_yaml_keys_are_reported_as_such(text, shown):
    problem = _one(text)
    assert "keys must be strings" in problem.fix and shown in problem.what
    assert problem.line == text.splitlines().index(next(l for l in text.splitlines() if l.strip().startswith(shown))) + 1


def test_a_hex_looking_pattern_says_to_quote_it():
    problem = _one("pruners:\n  - target_sparsity: 0.5\n    pattern: 0x4\n")
    assert problem.line == 3 and "0x4" in problem.what and "quote" in problem.fix and "'0x4'" in problem.fix
    problem = _one("pruners:\n  - target_sparsity: 0.5\n    name: 1e3\n")
    assert "1e3" in problem.what and "'1e3'" in problem.fix


def test_an_unhashable_key_is_reported_as_a_key_problem():
    problem = _one("pruners:\n  - target_sparsity: 0.5\n    ? [a, b]\n    : c\n")
    assert problem.line == 3 and "tag" not in problem.what and "key" in problem.what and "list" in problem.what


@pytest.mark.parametrize(
    ("source", "path"),
    [
        ({"pruners": [{"target_sparsity": 0.5, 1: "x"}]}, "pruners[0]"),
        ({"pruners": [{"target_sparsity": 0.5, None: "x"}]}, "pruners[0]"),
        ({1: 2, "pruners": [{"target_sparsity": 0.5}]}, ""),
        ({"defaults": {1: "x"}, "pruners": [{"target_sparsity": 0.5}]}, "defaults"),
        ({"target_sparsity": 0.5, 3: "x"}, ""),
    ],
)
def test_a_dict_with_non_string_keys_is_reported_as_such(source, path):
    problems = _problems(source)
    assert any(p.path == path and "keys must be strings" in p.fix for p in problems), [str(p) for p in problems]
