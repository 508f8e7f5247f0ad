"""prunekit: registry-driven, config-driven pruning for PyTorch.

Declare pruning in YAML or a dict (:func:`load_config`), build schedulers from the
``SCHEDULERS`` registry (:func:`get_scheduler`), and prune a model inside an existing training loop.
"""

from prunekit.config import PrunerConfig, PruningConfig, WeightPruningConfig, config_json_schema, load_config
from prunekit.errors import ConfigError, ConfigProblem, PruningError, PrunekitError, RegistryError
from prunekit.pruner import (
    Criterion,
    GradientCriterion,
    LayerReport,
    MagnitudeCriterion,
    Pruning,
    PruningRecord,
    PruningReport,
    SnipCriterion,
    SnipMomentumCriterion,
    prepare_pruning,
)
from prunekit.registry import (
    CRITERIA,
    PATTERNS,
    SCHEDULERS,
    Registry,
    get_scheduler,
    list_schedulers,
    register_scheduler,
)
from prunekit.schedulers import (
    DECAY_CURVES,
    IterativeConfig,
    IterativeScheduler,
    OneshotConfig,
    OneshotScheduler,
    PruningEvent,
    Scheduler,
    SchedulerConfig,
    WeightSchedulerConfig,
    register_decay_curve,
)

__version__ = "0.1.0"

__all__ = [
    "CRITERIA",
    "Criterion",
    "GradientCriterion",
    "LayerReport",
    "MagnitudeCriterion",
    "Pruning",
    "PruningRecord",
    "PruningReport",
    "SnipCriterion",
    "SnipMomentumCriterion",
    "prepare_pruning",
    "ConfigError",
    "ConfigProblem",
    "DECAY_CURVES",
    "IterativeConfig",
    "IterativeScheduler",
    "OneshotConfig",
    "OneshotScheduler",
    "PATTERNS",
    "PrunerConfig",
    "PruningConfig",
    "PruningError",
    "PruningEvent",
    "PrunekitError",
    "Registry",
    "RegistryError",
    "SCHEDULERS",
    "Scheduler",
    "SchedulerConfig",
    "WeightPruningConfig",
    "WeightSchedulerConfig",
    "config_json_schema",
    "get_scheduler",
    "list_schedulers",
    "load_config",
    "register_decay_curve",
    "register_scheduler",
]
