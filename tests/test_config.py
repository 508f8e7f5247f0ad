"""Config loading and validation: every rule reports what, where (file, line, key path) and how to fix."""

from __future__ import annotations

import json
import textwrap
from typing import Any, Mapping

import pytest
from pydantic import Field

import prunekit as pk
from prunekit.config import PruningConfig, WeightPruningConfig, config_json_schema, load_config
from prunekit.errors import ConfigError
from prunekit.schedulers import WeightSchedulerConfig


def _yaml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


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


# --------------------------------------------------------------------------- one rule, one test
RULES = [
    # (group overrides, path, message fragment, fix fragment)
    (
        {"scheduler": {"type": "iterative", "start_step": 10, "end_step": 5}},
        "pruners[0].scheduler.end_step",
        "end_step (5) is before start_step (10)",
        "set end_step >= 10",
    ),
    ({"target_sparsity": 1.0}, "pruners[0].target_sparsity", "must be < 1", "below 1"),
    ({"target_sparsity": -0.1}, "pruners[0].target_sparsity", "must be >= 0", "at least 0"),
    ({"pattern": "2:4", "target_sparsity": 0.6}, "pruners[0].target_sparsity", "exceeds what pattern 2:4 can express", "at most 0.5"),
    (
        {"min_sparsity_per_op": 0.6, "max_sparsity_per_op": 0.4, "target_sparsity": 0.5},
        "pruners[0].max_sparsity_per_op",
        "min_sparsity_per_op (0.6) is above max_sparsity_per_op (0.4)",
        "min_sparsity_per_op <= max_sparsity_per_op",
    ),
    ({"max_sparsity_per_op": 0.3}, "pruners[0].target_sparsity", "exceeds max_sparsity_per_op 0.3", "raise max_sparsity_per_op"),
    ({"scheduler": {"type": "iterative", "end_step": 9, "frequency": 0}}, "pruners[0].scheduler.frequency", "must be >= 1", "at least 1"),
    ({"scheduler": {"type": "iterative", "end_step": 9, "decay": "sigmoid"}}, "pruners[0].scheduler.decay", "unknown decay curve 'sigmoid'", "exp"),
    ({"scheduler": {"type": "iterative", "end_step": 9, "decay": "cubic"}}, "pruners[0].scheduler.decay", "'cubic' is ambiguous", "'agp'"),
    ({"criterion": "magnitud"}, "pruners[0].criterion", "unknown criterion 'magnitud'", "did you mean 'magnitude'?"),
    ({"criterion": "pattern_lock"}, "pruners[0].criterion", "'pattern_lock' is a pruner type, not a criterion", "type: pattern_lock"),
    ({"criterion": "sparse_gpt"}, "pruners[0].criterion", "is a pruner type, not a criterion", "type: sparse_gpt"),
    ({"pattern": "4y1"}, "pruners[0].pattern", "'4y1' is not a pattern", "'NxM'"),
    ({"pattern": "4:2"}, "pruners[0].pattern", "N must be at least 1 and below M", "'N:M'"),
    ({"scope": "globel"}, "pruners[0].scope", "'globel' is not allowed", "did you mean 'global'?"),
    ({"op_names": ["fc(1"]}, "pruners[0].op_names", "not a valid regular expression", "escape special characters"),
    ({"op_types": ["torch.nn.Linear"]}, "pruners[0].op_types", "is not a class name", "Linear"),
    ({"scheduler": {"type": "iterativ"}}, "pruners[0].scheduler", "unknown scheduler type 'iterativ'", "did you mean 'iterative'?"),
    ({"patern": "4x1"}, "pruners[0].patern", "unknown key 'patern'", "did you mean 'pattern'?"),
    ({"scheduler": {"type": "iterative", "end_step": 9, "frequncy": 2}}, "pruners[0].scheduler.frequncy", "unknown key 'frequncy'", "did you mean 'frequency'?"),
    (
        {"target_sparsity": 0.2, "scheduler": {"type": "iterative", "end_step": 9, "init_sparsity": 0.3}},
        "pruners[0].scheduler",
        "init_sparsity (0.3) is above target_sparsity (0.2)",
        "init_sparsity <= target_sparsity",
    ),
]


@pytest.mark.parametrize(("overrides", "path", "what", "fix"), RULES, ids=[r[1] + ":" + r[2][:24] for r in RULES])
def test_each_rule_reports_message_and_location(overrides, path, what, fix):
    problem = _one(_group(**overrides))
    assert problem.path == path
    assert what in problem.what
    assert fix in problem.fix
    assert str(problem).startswith(f"{path}: ")


@pytest.mark.parametrize(("overrides", "path", "what", "fix"), RULES, ids=[r[1] + ":" + r[2][:24] for r in RULES])
def test_each_rule_reports_the_yaml_line(tmp_path, overrides, path, what, fix):
    import yaml

    text = yaml.safe_dump(_group(**overrides), sort_keys=False, default_flow_style=False)
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    problem = _one(file)
    assert problem.source == str(file)
    lines = text.splitlines()
    key = path.rsplit(".", 1)[-1]
    assert problem.line is not None and key in lines[problem.line - 1], (problem, text)
    assert str(problem).startswith(f"{file}:{problem.line} {path}: ")


def test_missing_target_and_empty_pruners():
    assert _one({"pruners": [{}]}).path == "pruners[0].target_sparsity"
    problem = _one({"pruners": []})
    assert problem.path == "" and "no pruner group and no data_sparsity section" in problem.what
    problem = _one({"version": 2, "pruners": [{"target_sparsity": 0.5}]})
    assert problem.path == "version" and "write version: 1" in problem.fix


def test_duplicate_group_names_are_an_error():
    problem = _one({"pruners": [{"name": "a", "target_sparsity": 0.5}, {"name": "a", "target_sparsity": 0.5}]})
    assert problem.path == "pruners" and "both named 'a'" in problem.what


def test_several_errors_reported_at_once_with_lines():
    text = _yaml(
        """
        version: 1
        defaults:
          criterion: magnitud
        pruners:
          - op_names: ['fc1']
            pattern: 2:4
            target_sparsity: 0.6
            scheduler:
              type: iterative
              start_step: 10
              end_step: 5
          - pattern: 4x1
            target_sparsity: 0.9
            patern: 1x1
            scheduler: {type: iterative, end_step: 10, decay: cubic}
        """
    )
    problems = _problems(text)
    by_path = {p.path: p for p in problems}
    assert set(by_path) == {
        "defaults.criterion",
        "pruners[0].target_sparsity",
        "pruners[0].scheduler.end_step",
        "pruners[1].patern",
        "pruners[1].scheduler.decay",
    }
    assert by_path["defaults.criterion"].line == 3  # a default's error points at the default, once
    assert by_path["pruners[0].target_sparsity"].line == 7
    assert by_path["pruners[0].scheduler.end_step"].line == 11
    assert by_path["pruners[1].patern"].line == 14
    assert by_path["pruners[1].scheduler.decay"].line == 15
    assert [p.line for p in problems] == sorted(p.line for p in problems)
    rendered = str(ConfigError(problems))
    assert rendered.startswith("5 problems in the pruning config:")


def test_yaml_python_tags_are_refused():
    problem = _one("pruners:\n  - target_sparsity: !!python/object/apply:os.system ['echo hi']\n")
    assert "tag not allowed" in problem.what and problem.line == 2


def test_yaml_duplicate_keys_are_reported():
    problem = _one("pruners:\n  - target_sparsity: 0.5\n    pattern: 4x1\n    pattern: 1x1\n")
    assert problem.path == "pruners[0].pattern" and "appears twice (lines 3 and 4)" in problem.what


def test_yaml_syntax_error_has_a_line():
    problem = _one("pruners:\n  - target_sparsity: 0.5\n   pattern: [4x1\n")
    assert problem.what.startswith("invalid YAML") and problem.line is not None


def test_missing_file_is_a_clear_error(tmp_path):
    problem = _one(tmp_path / "nope.yaml")
    assert "does not exist" in problem.what


def test_two_of_four_in_yaml_is_a_pattern_not_a_base60_number():
    config = load_config("pruners:\n  - pattern: 2:4\n    target_sparsity: 0.5\n")
    assert config.pruners[0].pattern == "2:4"


# --------------------------------------------------------------------------- sources and round trips
def test_sources_path_text_dict_object(tmp_path):
    data = _group(pattern="4x1", scheduler={"type": "iterative", "end_step": 10, "decay": "cos"})
    from_dict = load_config(data)
    file = tmp_path / "c.yaml"
    file.write_text(from_dict.to_yaml())
    assert load_config(file) == from_dict
    assert load_config(str(file)) == from_dict
    assert load_config(from_dict.to_yaml()) == from_dict
    assert load_config(from_dict) is from_dict


def test_dump_and_load_again_is_identical_including_subclass_fields():
    config = load_config(_group(scheduler={"type": "iterative", "end_step": 20, "frequency": 5, "decay": "agp", "init_sparsity": 0.1}))
    dumped = config.model_dump()
    assert dumped["pruners"][0]["scheduler"] == {
        "type": "iterative",
        "start_step": 0,
        "end_step": 20,
        "frequency": 5,
        "decay": "agp",
        "init_sparsity": 0.1,
    }
    assert load_config(dumped) == config
    assert load_config(json.loads(config.model_dump_json())) == config


def test_defaults_apply_and_groups_override():
    config = load_config(
        {
            "defaults": {"pattern": "4x1", "scheduler": {"type": "iterative", "end_step": 40, "frequency": 10}},
            "pruners": [
                {"target_sparsity": 0.5},
                {"target_sparsity": 0.7, "pattern": "1x1", "scheduler": {"decay": "linear"}},
                {"target_sparsity": 0.7, "scheduler": {"type": "oneshot", "start_step": 3}},
            ],
        }
    )
    a, b, c = config.pruners
    assert (a.pattern, b.pattern) == ("4x1", "1x1")
    assert (b.scheduler.end_step, b.scheduler.frequency, b.scheduler.decay) == (40, 10, "linear")
    assert c.scheduler.type == "oneshot" and c.scheduler.start_step == 3
    assert [g.name for g in config.pruners] == ["pruner0", "pruner1", "pruner2"]


def test_no_mutable_default_is_shared():
    first, second = load_config(_group()), load_config(_group())
    first.pruners[0].op_types.append("Embedding")
    first.pruners[0].op_names.append("x")
    assert second.pruners[0].op_types == ["Linear", "Conv"] and second.pruners[0].op_names == []
    w1, w2 = WeightPruningConfig(), WeightPruningConfig()
    w1.weight_compression["op_names"].append("x")
    w1.pruning_configs[0]["pattern"] = "1x1"
    assert w2.weight_compression["op_names"] == [] and w2.pruning_configs == [{}]


def test_shorthand_scheduler_name():
    assert load_config(_group(scheduler="oneshot")).pruners[0].scheduler.type == "oneshot"


# --------------------------------------------------------------------------- INC 3.7.1 form
def test_inc_flat_dict_means_what_it_meant_in_inc():
    config = load_config(
        {
            "target_sparsity": 0.8,
            "pruning_type": "magnitude",
            "pattern": "4x1",
            "op_names": ["fc"],
            "excluded_op_names": ["head"],
            "start_step": 2,
            "end_step": 20,
            "pruning_scope": "local",
            "pruning_frequency": 4,
            "min_sparsity_ratio_per_op": 0.1,
            "max_sparsity_ratio_per_op": 0.9,
            "sparsity_decay_type": "cos",
            "pruning_op_types": ["Linear"],
        }
    )
    (group,) = config.pruners
    assert (group.target_sparsity, group.criterion, group.pattern, group.scope) == (0.8, "magnitude", "4x1", "local")
    assert (group.op_names, group.excluded_op_names, group.op_types) == (["fc"], ["head"], ["Linear"])
    assert (group.min_sparsity_per_op, group.max_sparsity_per_op) == (0.1, 0.9)
    sched = group.scheduler
    assert (sched.type, sched.start_step, sched.end_step, sched.frequency, sched.decay) == ("iterative", 2, 20, 4, "cos")


def test_inc_defaults_and_oneshot_inference():
    (group,) = load_config({"pruning_configs": [{"op_names": ["fc"]}]}).pruners
    # INC's WeightPruningConfig defaults: 0.9, snip_momentum, 4x1, global, [Conv, Linear], start == end
    assert (group.target_sparsity, group.criterion, group.pattern, group.scope) == (0.9, "snip_momentum", "4x1", "global")
    assert group.op_types == ["Conv", "Linear"] and group.scheduler.type == "oneshot"


def test_inc_explicit_scheduler_type_wins():
    import custom_scheduler  # noqa: F401

    (group,) = load_config({"target_sparsity": 0.5, "start_step": 0, "end_step": 10, "scheduler": "polynomial"}).pruners
    assert group.scheduler.type == "polynomial" and group.scheduler.end_step == 10


def test_weight_pruning_config_object_with_local_overrides():
    config = load_config(
        WeightPruningConfig(
            pruning_configs=[{"op_names": ["fc1"], "pattern": "2:4", "target_sparsity": 0.5}, {"op_names": ["fc2"]}],
            target_sparsity=0.7,
            pruning_type="magnitude",
            start_step=1,
            end_step=10,
            pruning_frequency=3,
        )
    )
    a, b = config.pruners
    assert (a.pattern, a.target_sparsity, b.pattern, b.target_sparsity) == ("2:4", 0.5, "4x1", 0.7)
    assert (a.scheduler.start_step, a.scheduler.end_step, a.scheduler.frequency) == (1, 10, 3)


def test_inc_errors_point_at_the_inc_keys(tmp_path):
    file = tmp_path / "inc.yaml"
    file.write_text(
        _yaml(
            """
            target_sparsity: 0.8
            start_step: 6
            end_step: 5
            pruning_configs:
              - op_names: [fc]
                resume_from_pruned_checkpoint: true
                patern: 2:4
                pattern: 2:4
            """
        )
    )
    problems = {p.path: p for p in _problems(file)}
    assert set(problems) == {
        "end_step",
        "pruning_configs[0].resume_from_pruned_checkpoint",
        "pruning_configs[0].patern",
        "target_sparsity",
    }
    assert problems["end_step"].line == 3
    unsupported = problems["pruning_configs[0].resume_from_pruned_checkpoint"]
    assert unsupported.line == 6 and "not supported" in unsupported.what
    assert "did you mean 'pattern'?" in problems["pruning_configs[0].patern"].fix
    assert problems["target_sparsity"].line == 1 and "2:4" in problems["target_sparsity"].what


def test_inc_decay_on_a_oneshot_schedule_warns_instead_of_vanishing():
    with pytest.warns(UserWarning, match="sparsity_decay_type' has no effect on a one-shot schedule"):
        load_config({"target_sparsity": 0.5, "start_step": 3, "end_step": 3, "sparsity_decay_type": "cos"})


def test_mixing_forms_is_an_error():
    problem = _one({"pruners": [{"target_sparsity": 0.5}], "target_sparsity": 0.5})
    assert "mixes prunekit keys" in problem.what


# --------------------------------------------------------------------------- custom schedulers
class _StaircaseConfig(WeightSchedulerConfig):
    type: str = "staircase_test"
    stair: float = Field(..., gt=0.0, le=1.0)
    repeat: int = Field(1, ge=1)


def _register_staircase():
    @pk.register_scheduler("staircase_test", config=_StaircaseConfig)
    class StaircaseScheduler(pk.Scheduler):
        """Adds `stair` at every event up to the target."""

        config_model = _StaircaseConfig

        def update_sparsity_ratio(self, target_ratio: float, current_prune_step: int, total_prune_steps: int,
                                  masks: Mapping[str, Any] | None = None, init_ratio: float = 0.0) -> float:
            if current_prune_step >= total_prune_steps:
                return target_ratio
            return min(target_ratio, init_ratio + self.config.stair * current_prune_step)

    return StaircaseScheduler


def test_custom_scheduler_selected_from_yaml_and_built(scratch_scheduler_names):
    cls = _register_staircase()
    config = load_config(
        _yaml(
            """
            pruners:
              - target_sparsity: 0.6
                scheduler: {type: staircase_test, end_step: 10, frequency: 2, stair: 0.25}
            """
        )
    )
    sched_config = config.pruners[0].scheduler
    assert isinstance(sched_config, _StaircaseConfig) and sched_config.stair == 0.25
    sched = pk.get_scheduler(sched_config)
    assert isinstance(sched, cls)
    assert [sched.ratio_at_event(e, 0.6) for e in sched.events()] == [0.0, 0.25, 0.5, 0.6, 0.6, 0.6]
    assert load_config(config.model_dump()) == config


def test_custom_scheduler_parameters_are_validated(scratch_scheduler_names):
    _register_staircase()
    text = _yaml(
        """
        pruners:
          - target_sparsity: 0.6
            scheduler:
              type: staircase_test
              end_step: 10
              repeat: lots
        """
    )
    problems = {p.path: p for p in _problems(text)}
    assert set(problems) == {"pruners[0].scheduler.stair", "pruners[0].scheduler.repeat"}
    assert "required key 'stair' is missing" in problems["pruners[0].scheduler.stair"].what
    assert problems["pruners[0].scheduler.stair"].line == 3  # the scheduler mapping that lacks it
    assert "expected an integer, got 'lots'" in problems["pruners[0].scheduler.repeat"].what
    assert problems["pruners[0].scheduler.repeat"].line == 6


def test_json_schema_lists_registered_schedulers():
    schema = config_json_schema()
    scheduler = schema["$defs"]["PrunerConfig"]["properties"]["scheduler"]
    refs = {v["$ref"].rsplit("/", 1)[-1] for v in scheduler["anyOf"]}
    assert {"OneshotConfig", "IterativeConfig"} <= refs
    iterative = schema["$defs"]["IterativeConfig"]
    assert iterative["properties"]["type"]["enum"] == ["iterative", "gradual"]
    assert schema["$defs"]["PrunerConfig"]["properties"]["target_sparsity"]["exclusiveMaximum"] == 1.0
    json.dumps(schema)


def test_pruning_config_is_a_plain_pydantic_model():
    config = PruningConfig(pruners=[{"target_sparsity": 0.3}])
    assert config.pruners[0].name == "pruner0" and config.pruners[0].pattern_spec.is_unstructured


# --------------------------------------------------------------------------- data sparsity section
def test_data_sparsity_section_loads_round_trips_and_builds_both_objects():
    import torch
    from torch import nn

    from repo_paths import CONFIGS

    config = load_config(CONFIGS / "data_sparsity_embedding.yaml")
    assert config.data_sparsity is not None and config.data_sparsity.scheduler.type == "gamma"
    assert load_config(config.model_dump()) == config and load_config(config.to_yaml()) == config

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(40, 8)
            self.head = nn.Linear(8, 4)

    model = Model()
    sparsifier, scheduler = pk.build_data_sparsity(config, model)
    assert isinstance(sparsifier, pk.DataNormSparsifier) and isinstance(scheduler, pk.GammaDataScheduler)
    sparsifier.step()
    sparsifier.squash_mask()
    zeros = (model.embedding.weight == 0).float().mean().item()
    assert zeros == pytest.approx(0.1, abs=0.05)
    assert torch.equal(model.head.weight, model.head.weight)  # the Linear layer is untouched by data sparsity


def test_data_sparsity_errors_are_located_with_their_yaml_lines():
    text = _yaml(
        """
        data_sparsity:
          data_namez: [emb]
          sparsifier: {type: data_norm, sparsity_levl: 0.5}
        """
    )
    problems = {p.path: p for p in _problems(text)}
    assert set(problems) == {"data_sparsity.data_namez", "data_sparsity.sparsifier.sparsity_levl"}
    assert problems["data_sparsity.data_namez"].line == 2 and "did you mean 'data_names'?" in problems["data_sparsity.data_namez"].fix
    assert problems["data_sparsity.sparsifier.sparsity_levl"].line == 3


def test_a_data_scheduler_is_refused_as_a_weight_scheduler():
    problem = _one(_group(scheduler={"type": "gamma", "gamma": 2.0}))
    assert problem.path == "pruners[0].scheduler" and "not a weight-pruning scheduler" in problem.what


def test_inc_explicit_scheduler_mapping_without_type_follows_the_inc_rule():
    (one,) = load_config({"target_sparsity": 0.5, "scheduler": {"start_step": 2, "end_step": 2}}).pruners
    assert one.scheduler.type == "oneshot" and one.scheduler.start_step == 2
    (grad,) = load_config({"target_sparsity": 0.5, "start_step": 0, "end_step": 10, "scheduler": {"frequency": 5}}).pruners
    assert (grad.scheduler.type, grad.scheduler.frequency) == ("iterative", 5)


def test_inc_explicit_scheduler_errors_point_at_the_users_keys():
    problem = _one("target_sparsity: 0.5\nstart_step: 0\nend_step: 10\nscheduler: {type: iterative, frequency: 0}\n")
    assert (problem.path, problem.line) == ("scheduler.frequency", 4)


def test_a_shorthand_scheduler_default_merges_with_group_keys():
    config = load_config({"defaults": {"scheduler": "iterative"}, "pruners": [{"target_sparsity": 0.5, "scheduler": {"end_step": 10}}]})
    assert (config.pruners[0].scheduler.type, config.pruners[0].scheduler.end_step) == ("iterative", 10)


def test_defaults_apply_to_groups_built_in_code_too():
    config = PruningConfig(defaults={"scope": "global", "pattern": "4x1"}, pruners=[pk.PrunerConfig(target_sparsity=0.5, pattern="1x1")])
    assert (config.pruners[0].scope, config.pruners[0].pattern) == ("global", "1x1")


def test_an_inc_default_that_conflicts_is_reported_under_its_inc_key():
    problem = _one("pattern: '2:4'\nstart_step: 0\n")  # INC's default target_sparsity is 0.9
    assert problem.path == "target_sparsity" and "0.9 exceeds what pattern 2:4 can express" in problem.what
