"""Configuration: the pydantic models and :func:`load_config` (:mod:`.models`), where YAML values came
from (:mod:`.yaml_source`), validation messages and limits (:mod:`.validation`, :mod:`.regex_safety`),
the pattern syntax (:mod:`.pattern_syntax`), INC's flat form (:mod:`.inc`) and the generated
reference page (:mod:`.reference`: ``python -m prunekit.config.reference > docs/configuration.md``)."""

from prunekit.config.models import (
    CONFIG_VERSION,
    INC_KEYS,
    PrunerConfig,
    PruningConfig,
    WeightPruningConfig,
    config_json_schema,
    load_config,
    validate_pruner_config,
)

__all__ = [
    "CONFIG_VERSION", "PrunerConfig", "PruningConfig", "validate_pruner_config", "WeightPruningConfig", "INC_KEYS",
    "load_config", "config_json_schema",
]
