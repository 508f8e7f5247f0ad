"""Schedulers: when to prune and how much. One family per module; all registered in ``SCHEDULERS``."""

from prunekit.schedulers import data  # noqa: F401  (registers the data schedulers)
from prunekit.schedulers.base import PruningEvent, Scheduler, SchedulerConfig, WeightSchedulerConfig
from prunekit.schedulers.curves import DECAY_CURVES, register_decay_curve
from prunekit.schedulers.iterative import IterativeConfig, IterativeScheduler
from prunekit.schedulers.oneshot import OneshotConfig, OneshotScheduler

__all__ = [
    "DECAY_CURVES",
    "IterativeConfig",
    "IterativeScheduler",
    "OneshotConfig",
    "OneshotScheduler",
    "PruningEvent",
    "Scheduler",
    "SchedulerConfig",
    "WeightSchedulerConfig",
    "register_decay_curve",
]
