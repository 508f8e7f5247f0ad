"""Structured pruning: coupled heads and channels (:mod:`~prunekit.structure.discover`), pruned during
training by ``pattern: head`` / ``pattern: channel`` groups (:mod:`~prunekit.structure.pruner`), and
physically removed by :func:`slim` (:mod:`~prunekit.structure.slim`)."""

from prunekit.structure.discover import discover
from prunekit.structure.slim import SlimMultiheadAttention, SlimPlan, SlimReport, load_slimmed, plan_slim, slim
from prunekit.structure.units import Member, UnitGroup

__all__ = ["Member", "SlimMultiheadAttention", "SlimPlan", "SlimReport", "UnitGroup", "discover", "load_slimmed", "plan_slim", "slim"]
