"""The YAML data_sparsity section: selection, sparsifier and scheduler building, errors."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from prunekit.data import DataNormSparsifier, DataSparsityConfig, build_data_sparsity
from prunekit.data.config import data_sparsity_model_at, select_data
from prunekit.errors import ConfigError
from prunekit.schedulers.data import AGPDataScheduler, GammaDataScheduler

YAML = r"""
data_sparsity:
  module_types: [Embedding]
  excluded_data_names: ['^tags$']
  sparsifier:
    type: data_norm
    norm: L2
    sparsity_level: 0.25
    sparse_block_shape: [1, 4]
    zeros_per_block: 2
  scheduler:
    type: gamma
    gamma: 2.0
    threshold_sl: 0.8
"""


class Recommender(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.users = nn.Embedding(40, 8)
        self.items = nn.EmbeddingBag(30, 8)
        self.tags = nn.Embedding(10, 8)
        self.head = nn.Sequential(nn.Linear(16, 4), nn.LayerNorm(4), nn.Linear(4, 1))


def test_yaml_builds_the_sparsifier_and_the_scheduler() -> None:
    model = Recommender()
    section = yaml.safe_load(YAML)["data_sparsity"]
    sparsifier, scheduler = build_data_sparsity(section, model)
    assert isinstance(sparsifier, DataNormSparsifier) and sparsifier.norm == "L2"
    assert list(sparsifier.data_groups) == ["users.weight", "items.weight"]
    assert sparsifier.get_data("users.weight") is model.users.weight, "held by reference"
    assert sparsifier.data_groups["items.weight"] == {"sparsity_level": 0.25, "sparse_block_shape": (1, 4), "zeros_per_block": 2}
    assert isinstance(scheduler, GammaDataScheduler) and scheduler.gamma == 2.0 and scheduler.threshold_sl == 0.8
    assert scheduler.data_sparsifier is sparsifier
    for _ in range(3):
        sparsifier.step()
        scheduler.step()
    assert sparsifier.data_groups["users.weight"]["sparsity_level"] == pytest.approx(0.8)
    sparsifier.squash_mask()
    zeros = (model.users.weight == 0).float().mean().item()
    assert zeros == pytest.approx(0.4, abs=1e-6)  # the last masks: level 0.8, 2 of every 4 entries
    assert bool((model.tags.weight != 0).all())


def test_a_whole_config_object_with_a_data_sparsity_attribute() -> None:
    config = types.SimpleNamespace(data_sparsity=DataSparsityConfig.model_validate(yaml.safe_load(YAML)["data_sparsity"]))
    sparsifier, _ = build_data_sparsity(config, Recommender())
    assert len(sparsifier.data_groups) == 2
    with pytest.raises(ConfigError, match="the config has no data_sparsity section"):
        build_data_sparsity(types.SimpleNamespace(data_sparsity=None), Recommender())


@pytest.mark.parametrize(
    "section, names",
    [
        ({"data_names": ["^users$"]}, ["users.weight"]),  # a module name selects its parameters
        ({"data_names": [r"head\.0\."]}, ["head.0.weight", "head.0.bias"]),
        ({"data_names": ["^head"], "excluded_data_names": ["bias$"]}, ["head.0.weight", "head.1.weight", "head.2.weight"]),
        ({"module_types": ["LayerNorm"]}, ["head.1.weight", "head.1.bias"]),
        ({"module_types": ["Embedding"], "data_names": ["items"]}, ["items.weight"]),
    ],
)
def test_selection(section: dict[str, Any], names: list[str]) -> None:
    config = DataSparsityConfig.model_validate(section)
    assert [n for n, _ in select_data(config, Recommender())] == names


def test_selection_unwraps_data_parallel() -> None:
    model = Recommender()
    config = DataSparsityConfig.model_validate({"data_names": ["^users$"]})
    selected = select_data(config, nn.DataParallel(model))
    assert [n for n, _ in selected] == ["users.weight"] and selected[0][1] is model.users.weight


def test_all_problems_are_reported_at_once_with_locations_and_fixes() -> None:
    section = {
        "data_names": ["users(", "ok"],
        "module_types": ["Embed ding"],
        "sparsifier": {"sparsity_level": 1.5, "sparse_block_shpe": [1, 4]},
        "scheduler": {"type": "gamma", "gamma": -2},
        "extra": 1,
    }
    with pytest.raises(ConfigError) as info:
        build_data_sparsity(section, Recommender())
    text = str(info.value)
    for expected in [
        "data_sparsity.data_names: data_names[0] 'users(' is not a valid regular expression",
        "data_sparsity.module_types: module_types[0] 'Embed ding' is not a class name",
        "data_sparsity.sparsifier.sparsity_level: must be <= 1.0, got 1.5",
        "data_sparsity.sparsifier.sparse_block_shpe: unknown key 'sparse_block_shpe'; did you mean 'sparse_block_shape'?",
        "data_sparsity.scheduler.gamma: must be > 0.0, got -2",
        "data_sparsity.extra: unknown key 'extra'",
    ]:
        assert expected in text, expected


@pytest.mark.parametrize(
    "scheduler, text",
    [
        ({"type": "lambda"}, "the lambda data scheduler takes a Python function, which a config cannot hold"),
        ({"type": "oneshot"}, "scheduler 'oneshot' is not a data scheduler; use one of agp, gamma, linear, step"),
        ({"type": "gama", "gamma": 2}, "unknown data scheduler type 'gama'; did you mean 'gamma'?"),
        ({"gamma": 2}, "the data scheduler has no 'type'"),
        ({"type": "agp", "target": 0.5, "end_step": 3, "bogus": 1}, "data_sparsity.scheduler.bogus: unknown key 'bogus'; allowed keys here: end_step"),
    ],
)
def test_scheduler_section_errors(scheduler: dict[str, Any], text: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_data_sparsity({"module_types": ["Embedding"], "scheduler": scheduler}, Recommender())
    assert text in str(info.value)


def test_unknown_sparsifier_type() -> None:
    with pytest.raises(ConfigError, match="unknown data sparsifier type 'data_nrom'; did you mean 'data_norm'"):
        build_data_sparsity({"module_types": ["Embedding"], "sparsifier": {"type": "data_nrom"}}, Recommender())


def test_selectors_that_match_nothing_list_close_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_data_sparsity({"data_names": ["^user$", "^items$"]}, Recommender())
    text = str(info.value)
    assert "data_sparsity.data_names[0]: '^user$' matches no parameter" in text and "users.weight" in text
    assert "data_names[1]" not in text
    with pytest.raises(ConfigError, match="the selection matches no parameter"):
        build_data_sparsity({"data_names": ["users"], "excluded_data_names": ["users"]}, Recommender())
    with pytest.raises(ConfigError, match="no data selected: data_names and module_types are both empty"):
        build_data_sparsity({}, Recommender())


def test_defaults_and_round_trip() -> None:
    config = DataSparsityConfig.model_validate({"module_types": ["Embedding"], "scheduler": {"type": "agp", "target": 0.6, "end_step": 5}})
    assert config.sparsifier.type == "data_norm" and config.sparsifier.sparsity_level == 0.5
    dumped = config.model_dump()
    assert dumped["scheduler"]["target"] == 0.6 and dumped["sparsifier"]["norm"] == "L1"
    assert DataSparsityConfig.model_validate(dumped) == config
    _, scheduler = build_data_sparsity(config, Recommender())
    assert isinstance(scheduler, AGPDataScheduler)


def test_model_at_gives_the_owner_of_keys() -> None:
    data = {"sparsifier": {"type": "data_norm"}, "scheduler": {"type": "step"}}
    assert data_sparsity_model_at(data, ()) is DataSparsityConfig
    assert "sparsity_level" in data_sparsity_model_at(data, ("sparsifier",)).model_fields
    assert "step_size" in data_sparsity_model_at(data, ("scheduler",)).model_fields
    assert data_sparsity_model_at({"scheduler": {"type": "nope"}}, ("scheduler",)) is None


def test_built_sparsifier_handles_every_parameter_kind_of_a_model() -> None:
    model = Recommender()
    sparsifier, _ = build_data_sparsity({"data_names": [".*"], "sparsifier": {"sparsity_level": 0.5, "sparse_block_shape": [1, 2]}}, model)
    sparsifier.step()
    sparsifier.squash_mask()
    out = model.head(torch.cat([model.users(torch.tensor([1, 2])), model.items(torch.tensor([[1, 2], [3, 4]]))], 1))
    assert out.shape == (2, 1)
    assert (model.head[0].bias == 0).float().mean().item() == 0.5
