"""Pieces shared by the framework callbacks."""

from __future__ import annotations

from typing import Any

import torch

from prunekit.errors import PruningError
from prunekit.pruner.session import Pruning

__all__ = ["group_sparsity_metrics", "unwrap_optimizer"]


def group_sparsity_metrics(pruning: Pruning, prefix: str = "sparsity/") -> dict[str, float]:
    """``{prefix + group: element-wise sparsity of the group's live weights}``."""
    per_group: dict[str, list[int]] = {}
    for row in pruning.report():
        zeros_total = per_group.setdefault(prefix + row.pruner, [0, 0])
        zeros_total[0] += round(row.sparsity * row.numel)
        zeros_total[1] += row.numel
    return {name: zeros / total for name, (zeros, total) in per_group.items()}


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The ``torch.optim.Optimizer`` inside wrappers (Lightning's ``LightningOptimizer``,
    accelerate's ``AcceleratedOptimizer``), or the optimizer itself."""
    seen = 0
    while not type(optimizer).__module__.startswith("torch.optim") and hasattr(optimizer, "optimizer") and seen < 8:
        optimizer = optimizer.optimizer
        seen += 1
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise PruningError(f"cannot find the torch optimizer inside {type(optimizer).__name__}")
    return optimizer
