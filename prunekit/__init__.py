"""prunekit: registry-driven, config-driven pruning for PyTorch.

Declare pruning in YAML or a dict (:func:`load_config`), build schedulers from the
``SCHEDULERS`` registry (:func:`get_scheduler`), and prune a model inside an existing training loop.
"""

from prunekit.config import PrunerConfig, PruningConfig, WeightPruningConfig, config_json_schema, load_config
from prunekit.data import (
    DATA_SPARSIFIERS,
    BaseDataSparsifier,
    DataConfigError,
    DataLoadResult,
    DataNormSparsifier,
    DataSparsityConfig,
    SquashedDataError,
    UnknownDataError,
    build_data_sparsity,
)
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
from prunekit.schedulers.data import (
    AGPDataScheduler,
    BaseDataScheduler,
    DataSchedulerConfig,
    GammaDataScheduler,
    LambdaDataScheduler,
    LinearDataScheduler,
    StepDataScheduler,
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
    "AGPDataScheduler",
    "BaseDataScheduler",
    "BaseDataSparsifier",
    "build_data_sparsity",
    "config_json_schema",
    "ConfigError",
    "ConfigProblem",
    "CRITERIA",
    "Criterion",
    "DATA_SPARSIFIERS",
    "DataConfigError",
    "DataLoadResult",
    "DataNormSparsifier",
    "DataSchedulerConfig",
    "DataSparsityConfig",
    "DECAY_CURVES",
    "GammaDataScheduler",
    "get_scheduler",
    "GradientCriterion",
    "IterativeConfig",
    "IterativeScheduler",
    "LambdaDataScheduler",
    "LayerReport",
    "LinearDataScheduler",
    "list_schedulers",
    "load_config",
    "MagnitudeCriterion",
    "OneshotConfig",
    "OneshotScheduler",
    "PATTERNS",
    "prepare_pruning",
    "PrunekitError",
    "PrunerConfig",
    "Pruning",
    "PruningConfig",
    "PruningError",
    "PruningEvent",
    "PruningRecord",
    "PruningReport",
    "register_decay_curve",
    "register_scheduler",
    "Registry",
    "RegistryError",
    "Scheduler",
    "SchedulerConfig",
    "SCHEDULERS",
    "SnipCriterion",
    "SnipMomentumCriterion",
    "StepDataScheduler",
    "SquashedDataError",
    "UnknownDataError",
    "WeightPruningConfig",
    "WeightSchedulerConfig",
]
