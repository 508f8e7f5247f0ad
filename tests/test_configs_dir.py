"""Every example config in configs/ loads (the custom-scheduler one after its module is imported)."""

from __future__ import annotations

import pytest

from prunekit.config import load_config
from repo_paths import CONFIGS

FILES = sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("recipes/*.yaml"))


def test_the_examples_the_issue_asks_for_exist():
    names = {f.stem for f in FILES}
    assert {"oneshot_magnitude", "iterative_4x1_snip_momentum", "semi_structured_2of4", "multi_group", "inc_style_flat", "custom_scheduler"} <= names


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_config_file_loads_and_round_trips(path):
    import custom_scheduler  # noqa: F401  (what a user script does before loading custom_scheduler.yaml)

    config = load_config(path)
    assert config.pruners
    assert load_config(config.to_yaml()) == config
