"""The pruner: layer selection, patterns, criteria, scopes, masks and the pruning session."""

from prunekit.pruner.criteria import (
    Criterion,
    GradientCriterion,
    MagnitudeCriterion,
    SnipCriterion,
    SnipMomentumCriterion,
)
from prunekit.pruner.group import PrunerGroup, PruningRecord
from prunekit.pruner.patterns import BlockPattern, NMPattern, make_pattern
from prunekit.pruner.report import LayerReport, PruningReport
from prunekit.pruner.selection import Layer, Layout, select_layers, unwrap_model
from prunekit.pruner.session import Pruning, prepare_pruning
from prunekit.pruner import types  # noqa: E402,F401  (registers the built-in pruner types)

__all__ = [
    "BlockPattern",
    "Criterion",
    "GradientCriterion",
    "Layer",
    "LayerReport",
    "Layout",
    "MagnitudeCriterion",
    "NMPattern",
    "PrunerGroup",
    "Pruning",
    "PruningRecord",
    "PruningReport",
    "SnipCriterion",
    "SnipMomentumCriterion",
    "make_pattern",
    "prepare_pruning",
    "select_layers",
    "unwrap_model",
]
