"""prunekit: registry-driven, config-driven pruning for PyTorch."""

from prunekit.errors import ConfigError, ConfigProblem, PruningError, PrunekitError, RegistryError
from prunekit.registry import CRITERIA, PATTERNS, SCHEDULERS, Registry, get_scheduler, list_schedulers, register_scheduler
from prunekit.schedulers import (
    IterativeScheduler,
    OneshotScheduler,
    Scheduler,
    SchedulerConfig,
    WeightSchedulerConfig,
)

__version__ = "0.1.0"

__all__ = [
    "CRITERIA",
    "ConfigError",
    "ConfigProblem",
    "IterativeScheduler",
    "OneshotScheduler",
    "PATTERNS",
    "PruningError",
    "PrunekitError",
    "Registry",
    "RegistryError",
    "SCHEDULERS",
    "Scheduler",
    "SchedulerConfig",
    "WeightSchedulerConfig",
    "get_scheduler",
    "list_schedulers",
    "register_scheduler",
]
