"""Pieces shared by the framework callbacks."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from prunekit.errors import PruningError
from prunekit.pruner.session import Pruning

__all__ = ["group_sparsity_metrics", "unwrap_optimizer", "warn_if_too_short"]


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


def warn_if_too_short(pruning: Any, planned_steps: float | int | None, what: str) -> None:
    """Warn when training stops before the schedule's last event can run (it needs
    ``pruning.steps_to_complete`` optimizer steps: event steps count from 0)."""
    needed = pruning.steps_to_complete
    if planned_steps is None or planned_steps <= 0 or planned_steps == float("inf") or planned_steps >= needed:
        return
    warnings.warn(
        f"{what} is {int(planned_steps)} optimizer steps, but the pruning schedule needs {needed}: its last event runs in "
        f"step {needed - 1}, counted from 0 (the Trainer logs it from global_step {needed}); the target would not be "
        f"reached. Train for at least {needed} steps or move end_step earlier",
        UserWarning,
        stacklevel=3,
    )
