"""``type: basic`` (the default): score, select and mask at the scheduler's events.

At every event the criterion scores the blocks of the pattern, the scope chooses the lowest to
reach the scheduled ratio (never reviving a pruned block), and the new masks are applied to the
weights and the optimizer state at once. INC's ``pruning_type`` values ``magnitude``,
``gradient``, ``snip`` and ``snip_momentum`` are this type with that criterion.
"""

from __future__ import annotations

from prunekit.config import PrunerConfig
from prunekit.pruner.group import PrunerGroup
from prunekit.registry import register_pruner

__all__ = ["BasicPruner"]


@register_pruner("basic", config=PrunerConfig)
class BasicPruner(PrunerGroup):
    """Score, select and mask at the scheduler's events (INC's magnitude, gradient, snip, snip_momentum)."""

    config_model = PrunerConfig
