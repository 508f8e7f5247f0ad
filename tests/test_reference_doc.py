"""docs/configuration.md is generated from the config models and must be current."""

from __future__ import annotations

from repo_paths import ROOT
from prunekit.config.reference import render_config_reference


def test_configuration_reference_is_up_to_date():
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render_config_reference(), (
        "docs/configuration.md is out of date: run `.venv/bin/python -m prunekit.config.reference > docs/configuration.md`"
    )


def test_reference_covers_every_group_key_and_builtin_scheduler():
    text = render_config_reference()
    for key in ("target_sparsity", "pattern", "criterion", "scope", "min_sparsity_per_op", "scheduler"):
        assert f"| `{key}` |" in text
    assert "### `type: iterative`" in text and "### `type: oneshot`" in text
    assert "| `sparsity_decay_type` | `scheduler.decay` |" in text
