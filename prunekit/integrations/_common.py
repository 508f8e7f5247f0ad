"""Pieces shared by the framework callbacks."""

from __future__ import annotations

from prunekit.pruner.session import Pruning

__all__ = ["group_sparsity_metrics"]


def group_sparsity_metrics(pruning: Pruning, prefix: str = "sparsity/") -> dict[str, float]:
    """``{prefix + group: element-wise sparsity of the group's live weights}``."""
    per_group: dict[str, list[int]] = {}
    for row in pruning.report():
        zeros_total = per_group.setdefault(prefix + row.pruner, [0, 0])
        zeros_total[0] += round(row.sparsity * row.numel)
        zeros_total[1] += row.numel
    return {name: zeros / total for name, (zeros, total) in per_group.items()}
