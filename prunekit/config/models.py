"""The pruning configuration: pydantic v2 models, ``load_config`` and INC-style configs.

INC's flat form is translated by :mod:`prunekit.config.inc`. A config has one or more pruner groups (layer selection, pattern, criterion, scope, target,
per-op bounds, scheduler) with shared ``defaults`` and a ``version``::

    version: 1
    defaults: {criterion: magnitude, scope: local}
    pruners:
      - op_names: ['encoder\\..*']
        pattern: 4x1
        target_sparsity: 0.9
        scheduler: {type: iterative, start_step: 0, end_step: 1000, frequency: 100, decay: exp}

``load_config`` takes a path, YAML text, a dict (canonical or Intel Neural Compressor 3.7.1 flat
form), a :class:`WeightPruningConfig` or a :class:`PruningConfig`. Every problem is reported at
once in one :class:`~prunekit.errors.ConfigError`, located by file, line and key path.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core.core_schema import ValidationInfo

from prunekit.data.config import DataSparsityConfig, data_sparsity_model_at
from prunekit.errors import ConfigError, ConfigProblem, RegistryError
from prunekit.config.inc import (
    INC_KEYS,
    INC_PRUNING_TYPES,
    INC_UNSUPPORTED_CRITERIA,
    PRUNEKIT_TOP_KEYS,
    WeightPruningConfig,
    is_inc_form,
    translate_inc,
)
from prunekit.config.pattern_syntax import PATTERN_SYNTAX_HELP, PatternSpec, parse_pattern
from prunekit.regularization import RegularizerConfig
from prunekit.registry import CRITERIA, PRUNERS, REGULARIZERS, SCHEDULERS, suggest
from prunekit.schedulers.base import SchedulerConfig, WeightSchedulerConfig, crashed_validator_message
from prunekit.schedulers.oneshot import OneshotConfig
from prunekit.config.validation import (
    StrictNumbersModel,
    check_class_names,
    check_regexes,
    data_shape_problems,
    problems_from_validation_error,
    rule_error,
    short_repr,
)
from prunekit.config.yaml_source import YamlSource, read_yaml

__all__ = [
    "CONFIG_VERSION",
    "PrunerConfig",
    "PruningConfig",
    "validate_pruner_config",
    "WeightPruningConfig",
    "INC_KEYS",
    "load_config",
    "config_json_schema",
]

CONFIG_VERSION = 1
Path_ = tuple[Any, ...]


# ---------------------------------------------------------------------------- scheduler field
def _validate_scheduler(value: Any, handler: ValidatorFunctionWrapHandler) -> SchedulerConfig:
    """Dispatch a scheduler mapping on its ``type`` to the config model that type registered.

    A third-party config model whose validators raise anything but a validation error (a
    ``TypeError`` in a field validator escapes pydantic) is reported at the scheduler key.
    """
    if isinstance(value, SchedulerConfig):
        value = value.model_dump()
    if isinstance(value, str):  # shorthand: `scheduler: oneshot`
        value = {"type": value}
    if not isinstance(value, Mapping):
        raise rule_error(f"expected a scheduler mapping, got {short_repr(value)}", "write e.g. {type: iterative, end_step: 100}")
    type_name = value.get("type")
    if type_name is None:
        raise rule_error("the scheduler has no 'type'", f"add 'type:' with one of {', '.join(SCHEDULERS.names())}")
    if not isinstance(type_name, str) or type_name not in SCHEDULERS:
        raise rule_error(f"unknown scheduler type {short_repr(type_name)}", SCHEDULERS.unknown_hint(type_name))
    model = SCHEDULERS.config_of(type_name)
    if model is None or not issubclass(model, WeightSchedulerConfig):
        raise rule_error(
            f"scheduler {type_name!r} is not a weight-pruning scheduler",
            "name a weight scheduler here (data schedulers belong in the data_sparsity section)",
        )
    try:
        return model.model_validate(dict(value))
    except ValidationError:
        raise
    except Exception as err:  # a third-party validator that crashed: located, never a traceback
        what, fix = crashed_validator_message(model, type_name, err)
        raise rule_error(what, fix) from None


SchedulerField = Annotated[SerializeAsAny[WeightSchedulerConfig], WrapValidator(_validate_scheduler)]


def _validate_regularizer(value: Any, handler: ValidatorFunctionWrapHandler) -> RegularizerConfig | None:
    """Dispatch a regularizer mapping on its ``type`` to the config model that type registered."""
    if value is None or isinstance(value, RegularizerConfig) and type(value) is REGULARIZERS.config_of(value.type):
        return value
    if isinstance(value, RegularizerConfig):
        value = value.model_dump()
    if isinstance(value, str):  # shorthand: `regularizer: group_lasso`
        value = {"type": value}
    if not isinstance(value, Mapping):
        raise rule_error(f"expected a regularizer mapping, got {short_repr(value)}", "write e.g. {type: group_lasso, reg_coeff: 0.1}")
    type_name = value.get("type")
    if not isinstance(type_name, str) or type_name not in REGULARIZERS:
        raise rule_error(f"unknown regularizer type {short_repr(type_name)}", REGULARIZERS.unknown_hint(type_name))
    model = REGULARIZERS.config_of(type_name)
    assert model is not None
    return model.model_validate(dict(value))


RegularizerField = Annotated[SerializeAsAny[RegularizerConfig] | None, WrapValidator(_validate_regularizer)]


# ---------------------------------------------------------------------------- pruner group
def _criterion_names() -> list[str]:
    import prunekit.pruner.criteria  # noqa: F401  (registers the built-in criteria)
    import prunekit.pruner.types  # noqa: F401  (and the criteria of the pruner types)

    return CRITERIA.names()


class DeclaredUnits(StrictNumbersModel):
    """A coupled group declared by name (``units:`` of a head/channel group): unit ``u`` is indices
    ``u·size .. (u+1)·size`` of the outputs of ``outputs``, the entries of ``norms`` and the inputs of ``inputs``."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="Name of the group in reports (default: declared<i>).")
    kind: Literal["head", "channel"] = Field("channel", description="What a unit is called (the group's pattern).")
    outputs: list[str] = Field(..., min_length=1, description="Regexes of the layers whose outputs (rows) the units are.")
    inputs: list[str] = Field(..., min_length=1, description="Regexes of the layers that read the units (their input columns).")
    norms: list[str] = Field(default_factory=list, description="Regexes of per-channel norms (BatchNorm) between them.")
    size: int = Field(1, ge=1, description="Indices per unit (a head's dimension; 1 for channels).")

    @field_validator("outputs", "inputs", "norms")
    @classmethod
    def _regexes(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return check_regexes(value, str(info.field_name))


class PrunerConfig(StrictNumbersModel):
    """One pruner group: which layers, which pattern and criterion, how sparse, and when.

    ``type`` names the pruner type (``basic``, the default: score, select and mask at the
    scheduler's events); every registered type validates the group with its own subclass of this
    model (see ``prunekit pruners``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    #: keys of the base model a type does not use: ``defaults`` never give them to its groups, and
    #: setting one in the group is an error that says so
    unused_keys: ClassVar[frozenset[str]] = frozenset()

    type: str = Field("basic", description="Pruner type (see `prunekit pruners`): basic, pattern_lock, progressive, block_mask.")
    name: str | None = Field(None, description="Group name (default: pruner<index>); unique.")
    op_names: list[str] = Field(
        default_factory=list,
        description="Regular expressions over module names (re.search); empty selects every layer of op_types.",
    )
    excluded_op_names: list[str] = Field(
        default_factory=list, description="Regular expressions of module names to leave dense."
    )
    op_types: list[str] = Field(
        default_factory=lambda: ["Linear", "Conv"],
        description="Module class names; an entry matches a class whose name starts with it ('Conv' matches Conv2d).",
    )
    pattern: str = Field(
        "1x1",
        description="NxM blocks (1x1, 4x1), N:M (2:4), channelxM (channelx1), Nxchannel (1xchannel), "
        "or head / channel (coupled attention heads / FFN and conv channels across layers, see docs/structured.md).",
    )
    criterion: str = Field("magnitude", description="magnitude, gradient, snip or snip_momentum.")
    reduce: Literal["mean", "sum", "max"] = Field("mean", description="How scores are reduced over a block.")
    scope: Literal["local", "global"] = Field(
        "local", description="local: every layer at the scheduled ratio; global: one threshold for the group."
    )
    min_sparsity_per_op: float = Field(0.0, ge=0.0, lt=1.0, description="Lowest sparsity of any layer (global scope).")
    max_sparsity_per_op: float = Field(0.98, gt=0.0, le=1.0, description="Highest sparsity of any layer.")
    target_sparsity: float = Field(..., ge=0.0, lt=1.0, description="Element-wise sparsity reached at the end.")
    scheduler: SchedulerField = Field(
        default_factory=lambda: OneshotConfig(), description="When to prune (see `prunekit schedulers`)."
    )
    lock_init_sparsity: bool = Field(
        False,
        description="Keep the zeros the weights have at start_step and start the schedule from their fraction "
        "(continue pruning a pruned checkpoint; INC's lock_init_sparsity).",
    )
    regularizer: RegularizerField = Field(
        None, description="Regularization during the pruning window, e.g. {type: group_lasso, reg_coeff: 0.1}."
    )
    exclude_head: bool = Field(
        False,
        description="Leave the model's classifier head dense (its last Linear/Conv2d, tied weights included), "
        "as INC did; on by default for INC-form configs.",
    )
    unmatched_selectors: Literal["error", "warn"] = Field(
        "error", description="An op_names/excluded_op_names entry that matches nothing: an error, or a warning (INC-form configs)."
    )
    units: list[DeclaredUnits] = Field(
        default_factory=list,
        description="pattern head/channel: coupled groups declared by name, for structures prunekit does not discover.",
    )

    @model_validator(mode="after")
    def _unit_pattern_fits(self) -> "PrunerConfig":
        spec = parse_pattern(self.pattern)
        if spec.kind != "unit":
            if self.units:
                raise rule_error("units: declares coupled groups, which only pattern head or channel prunes", "set pattern: channel (or head), or remove units")
            return self
        if self.type != "basic":
            raise rule_error(
                f"pattern {self.pattern} (coupled {self.pattern}s across layers) is pruned by type basic, not {self.type}",
                "set type: basic (the default) for this group",
            )
        if self.lock_init_sparsity:
            raise rule_error(f"lock_init_sparsity is not supported with pattern {self.pattern}", "remove lock_init_sparsity from this group")
        if self.regularizer is not None:
            raise rule_error(f"a regularizer is not supported with pattern {self.pattern}", "remove the regularizer from this group")
        wrong = [i for i, u in enumerate(self.units) if u.kind != self.pattern]
        if wrong:
            raise rule_error(f"units[{wrong[0]}] is of kind {self.units[wrong[0]].kind}, the group prunes {self.pattern}s", f"set kind: {self.pattern}")
        return self

    @model_validator(mode="after")
    def _unused_keys_unset(self) -> "PrunerConfig":
        fields = type(self).model_fields
        # a value equal to the type's default is what a dump of the config holds: it loads back
        used = sorted(k for k in self.unused_keys & self.model_fields_set if getattr(self, k) != fields[k].get_default(call_default_factory=True))
        if used:
            raise rule_error(
                f"pruner type {self.type!r} does not use {', '.join(used)}",
                f"remove {', '.join(used)} from this group (see `prunekit pruners` for what {self.type} reads)",
            )
        return self

    @model_validator(mode="after")
    def _criterion_fits(self) -> "PrunerConfig":
        if self.criterion not in CRITERIA:
            return self
        problem = CRITERIA.get(self.criterion).config_problem(parse_pattern(self.pattern).kind, self.reduce, self.pattern)
        if problem is not None:
            raise rule_error(*problem)
        return self

    @model_validator(mode="after")
    def _regularizer_fits_pattern(self) -> "PrunerConfig":
        if self.regularizer is not None and self.regularizer.type == "group_lasso" and parse_pattern(self.pattern).kind == "nm":
            raise rule_error(
                f"group_lasso shrinks blocks, and pattern {self.pattern} has none",
                "use a block pattern (NxM, channelxM, Nxchannel) with group_lasso, or remove the regularizer",
            )
        return self

    @field_validator("type")
    @classmethod
    def _registered_type(cls, value: str) -> str:
        _pruner_types()
        if value not in PRUNERS:
            raise rule_error(f"unknown pruner type {short_repr(value)}", PRUNERS.unknown_hint(value))
        return value

    @field_validator("op_names")
    @classmethod
    def _op_names_regex(cls, value: list[str]) -> list[str]:
        return check_regexes(value, "op_names")

    @field_validator("excluded_op_names")
    @classmethod
    def _excluded_regex(cls, value: list[str]) -> list[str]:
        return check_regexes(value, "excluded_op_names")

    @field_validator("op_types")
    @classmethod
    def _op_types_named(cls, value: list[str]) -> list[str]:
        return check_class_names(value, "op_types", "Linear or Conv2d")

    @field_validator("pattern")
    @classmethod
    def _pattern_syntax(cls, value: str) -> str:
        try:
            return parse_pattern(value).text
        except ValueError as err:
            raise rule_error(str(err), PATTERN_SYNTAX_HELP) from None

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, value: str) -> str:
        names = _criterion_names()
        if value in names:
            return value
        as_type = INC_PRUNING_TYPES.get(value)
        if as_type is not None:
            kind, criterion = as_type
            fix = f"write type: {kind}" + (f" with criterion: {criterion}" if criterion else "") + " (INC's pruning_type mapped this way)"
            raise rule_error(f"{value!r} is a pruner type, not a criterion", fix)
        inc = INC_UNSUPPORTED_CRITERIA.get(value)
        if inc is not None:
            raise rule_error(f"criterion {value!r} is not supported by prunekit ({inc})", f"use one of {', '.join(names)}")
        raise rule_error(f"unknown criterion {short_repr(value)}", CRITERIA.unknown_hint(value))

    @field_validator("max_sparsity_per_op")
    @classmethod
    def _min_not_above_max(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("min_sparsity_per_op")
        if low is not None and low > value:
            raise rule_error(
                f"min_sparsity_per_op ({low}) is above max_sparsity_per_op ({value})",
                "make min_sparsity_per_op <= max_sparsity_per_op",
            )
        return value

    @field_validator("target_sparsity")
    @classmethod
    def _target_reachable(cls, value: float, info: ValidationInfo) -> float:
        pattern = info.data.get("pattern")
        if pattern is not None:
            spec = parse_pattern(pattern)
            if value > spec.max_sparsity + 1e-12:
                raise rule_error(
                    f"target_sparsity {value} exceeds what pattern {pattern} can express ({spec.n}/{spec.m} = {spec.max_sparsity:g})",
                    f"lower target_sparsity to at most {spec.max_sparsity:g}, or choose another pattern",
                )
        high = info.data.get("max_sparsity_per_op")
        if high is not None and value > high:
            raise rule_error(
                f"target_sparsity {value} exceeds max_sparsity_per_op {high}: no layer may go that sparse",
                f"raise max_sparsity_per_op to at least {value}, or lower target_sparsity",
            )
        low = info.data.get("min_sparsity_per_op")
        if low is not None and high is not None and value < low:  # high is absent when min > max failed
            raise rule_error(
                f"target_sparsity {value} is below min_sparsity_per_op {low}",
                f"lower min_sparsity_per_op to at most {value}, or raise target_sparsity",
            )
        return value

    @field_validator("scheduler")
    @classmethod
    def _init_below_target(cls, value: WeightSchedulerConfig, info: ValidationInfo) -> WeightSchedulerConfig:
        init = getattr(value, "init_sparsity", None)
        target = info.data.get("target_sparsity")
        if init is not None and target is not None and init > target:
            raise rule_error(
                f"scheduler.init_sparsity ({init}) is above target_sparsity ({target})",
                "make init_sparsity <= target_sparsity",
            )
        return value

    @property
    def pattern_spec(self) -> PatternSpec:
        """The parsed pattern."""
        return parse_pattern(self.pattern)


def _pruner_types() -> list[str]:
    import prunekit.pruner.types  # noqa: F401  (registers the built-in pruner types)

    return PRUNERS.names()


def _pruner_model(type_name: Any) -> type[PrunerConfig]:
    """The config model registered for pruner type ``type_name`` (``PrunerConfig`` when unknown: its own
    ``type`` check reports it)."""
    _pruner_types()
    if isinstance(type_name, str) and type_name in PRUNERS:
        model = PRUNERS.config_of(type_name)
        if model is not None and issubclass(model, PrunerConfig):
            return model
    return PrunerConfig


def _validate_pruner(value: Any, handler: ValidatorFunctionWrapHandler) -> PrunerConfig:
    """Dispatch a pruner group mapping on its ``type`` to the config model that type registered."""
    if isinstance(value, PrunerConfig):
        if type(value) is _pruner_model(value.type):
            return value
        value = value.model_dump(exclude_unset=True)
    if not isinstance(value, Mapping):
        raise rule_error(f"expected a pruner group mapping, got {short_repr(value)}", "write e.g. {target_sparsity: 0.5}")
    model = _pruner_model(value.get("type", "basic"))
    try:
        return model.model_validate(dict(value))
    except ValidationError:
        raise
    except Exception as err:  # a third-party validator that crashed: located, never a traceback
        raise rule_error(
            f"the config validator of pruner type {value.get('type')!r} raised {type(err).__name__}: {short_repr(str(err))}",
            "fix the pruner type's config model",
        ) from None


PrunerField = Annotated[SerializeAsAny[PrunerConfig], WrapValidator(_validate_pruner)]


def validate_pruner_config(config: Mapping[str, Any] | PrunerConfig, *, path: str = "pruner") -> PrunerConfig:
    """One pruner group validated by the model its ``type`` registered; ConfigError lists every problem."""
    try:
        return PruningConfig.model_validate({"pruners": [config]}).pruners[0]
    except ValidationError as err:
        problems = problems_from_validation_error(err, model_at=lambda p: _pruner_model(config.get("type") if isinstance(config, Mapping) else getattr(config, "type", None)))
        raise ConfigError([ConfigProblem(p.path.replace("pruners[0]", path, 1), p.what, p.fix) for p in problems]) from None


def _group_keys() -> tuple[str, ...]:
    """Keys ``defaults`` may set: every field of every registered pruner type but ``name``."""
    _pruner_types()
    keys: dict[str, None] = {}
    for entry in PRUNERS.entries():
        model = entry.config if entry.config is not None else PrunerConfig
        keys.update((k, None) for k in model.model_fields if k != "name")
    return tuple(keys)


# ---------------------------------------------------------------------------- defaults merging
def _scheduler_mapping(value: Any) -> Any:
    """The shorthand ``scheduler: oneshot`` as the mapping ``{type: oneshot}``."""
    return {"type": value} if isinstance(value, str) else value


def _merge_group(defaults: Mapping[str, Any], group: Mapping[str, Any]) -> dict[str, Any]:
    """``group`` over ``defaults``; scheduler mappings merge key by key when their types agree.

    A group scheduler without ``type`` takes the default's type (and its other keys). Defaults the
    group's pruner type does not read (``target_sparsity`` for ``pattern_lock``, a key only another
    type has) are not given to it.
    """
    model = _pruner_model(group.get("type", defaults.get("type", "basic")))
    usable = {k: v for k, v in defaults.items() if k in model.model_fields and k not in model.unused_keys}
    merged = {k: copy.deepcopy(_scheduler_mapping(v) if k == "scheduler" else v) for k, v in usable.items()}
    for key, value in group.items():
        if key == "scheduler":
            value = _scheduler_mapping(value)
        base = merged.get(key)
        if key == "scheduler" and isinstance(base, Mapping) and isinstance(value, Mapping):
            if value.get("type", base.get("type")) == base.get("type"):
                merged[key] = {**base, **value}
                continue
        merged[key] = copy.deepcopy(value)
    return merged


def _apply_defaults(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[Path_, Path_]]:
    """Merge ``defaults`` into each pruner; returns the result and where merged keys came from."""
    out = dict(data)
    origin: dict[Path_, Path_] = {}
    defaults = data.get("defaults")
    pruners = data.get("pruners")
    if not isinstance(defaults, Mapping) or not isinstance(pruners, list):
        return out, origin
    merged_groups = []
    for i, group in enumerate(pruners):
        if isinstance(group, PrunerConfig):  # built in code: the keys it was given win over the defaults
            group = group.model_dump(exclude_unset=True)
        if not isinstance(group, Mapping):
            merged_groups.append(group)
            continue
        merged = _merge_group(defaults, group)
        merged_groups.append(merged)
        for key, value in defaults.items():
            if key not in group and key in merged:
                origin[("pruners", i, key)] = ("defaults", key)
            elif key == "scheduler" and isinstance(value, Mapping) and isinstance(group[key], Mapping):
                for sub in value:
                    if sub not in group[key]:
                        origin[("pruners", i, key, sub)] = ("defaults", key, sub)
    out["pruners"] = merged_groups
    return out, origin


# ---------------------------------------------------------------------------- the whole config
class PruningConfig(StrictNumbersModel):
    """The whole pruning configuration: a version, shared defaults and the pruner groups."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    version: int = Field(CONFIG_VERSION, description="Config format version (1).")
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="Keys applied to every pruner group that does not set them."
    )
    pruners: list[PrunerField] = Field(
        default_factory=list, description="The pruner groups (at least one unless data_sparsity is given)."
    )
    data_sparsity: DataSparsityConfig | None = Field(
        None, description="Data sparsity: which tensors a data sparsifier holds and how a data scheduler varies it."
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return _apply_defaults(data)[0]
        return data

    @field_validator("version")
    @classmethod
    def _supported_version(cls, value: int) -> int:
        if value != CONFIG_VERSION:
            raise rule_error(f"config version {value} is not supported", f"write version: {CONFIG_VERSION}")
        return value

    @field_validator("defaults")
    @classmethod
    def _defaults_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        keys = _group_keys()
        for key in value:
            if key not in keys:
                hint = suggest(key, list(keys))
                did = f"did you mean '{hint}'? " if hint else ""
                raise rule_error(f"unknown key {short_repr(key)} in defaults", f"{did}defaults may set: {', '.join(keys)}")
        return value

    @field_validator("pruners")
    @classmethod
    def _name_groups(cls, value: list[PrunerConfig]) -> list[PrunerConfig]:
        seen: dict[str, int] = {}
        for i, group in enumerate(value):
            if group.name is None:
                group.name = f"pruner{i}"
            if group.name in seen:
                raise rule_error(
                    f"pruners[{i}] and pruners[{seen[group.name]}] are both named {short_repr(group.name)}",
                    "give every pruner group a unique name",
                )
            seen[group.name] = i
        return value

    @model_validator(mode="after")
    def _something_to_do(self) -> "PruningConfig":
        if not self.pruners and self.data_sparsity is None:
            raise rule_error(
                "the config declares no pruner group and no data_sparsity section",
                "add 'pruners:' with at least one group (or a 'data_sparsity:' section)",
            )
        return self

    def group(self, name: str) -> PrunerConfig:
        """The pruner group called ``name``."""
        for group in self.pruners:
            if group.name == name:
                return group
        raise KeyError(f"no pruner group {name!r}; groups: {', '.join(str(g.name) for g in self.pruners)}")

    def to_yaml(self) -> str:
        """The config as YAML text that ``load_config`` reads back to an equal config."""
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------- load_config
def load_config(source: Any) -> PruningConfig:
    """Load and validate a pruning config.

    ``source`` is a path (``str`` naming an existing file, or ``pathlib.Path``), YAML text, a dict
    (canonical or INC flat form), a :class:`WeightPruningConfig` or a :class:`PruningConfig`
    (returned as is). Raises :class:`ConfigError` listing every problem with file, line and key path.
    """
    if isinstance(source, PruningConfig):
        return source
    yaml_source: YamlSource | None = None
    if isinstance(source, WeightPruningConfig):
        _check_shape({**source.weight_compression, "pruning_configs": source.pruning_configs})
        data: Any = source.to_dict()
    elif isinstance(source, Path) or (isinstance(source, str) and _looks_like_path(source)):
        yaml_source = read_yaml(Path(source))
        data = yaml_source.data
    elif isinstance(source, str):
        yaml_source = read_yaml(source)
        data = yaml_source.data
    elif isinstance(source, Mapping):
        _check_shape(source)
        data = source
    else:
        raise ConfigError([ConfigProblem("", f"cannot load a config from {type(source).__name__}", "pass a path, YAML text, a dict or a PruningConfig")])
    try:
        return _validate(data, yaml_source)
    except RecursionError:  # the shape checks make this unreachable; never a traceback all the same
        source_name, line = yaml_source.locate(()) if yaml_source is not None else (None, None)
        raise ConfigError([ConfigProblem("", "the config is nested too deeply to validate", "configs are shallow: flatten it", source_name, line)]) from None


def _check_shape(data: Any) -> None:
    """ConfigError when Python data nests too deeply, holds too many values or contains itself."""
    problems = data_shape_problems(data)
    if problems:
        raise ConfigError(problems)


def _looks_like_path(text: str) -> bool:
    if "\n" in text or ":" in text.split("/")[-1] and not text.endswith((".yaml", ".yml")):
        return False
    if text.endswith((".yaml", ".yml", ".json")):
        return True
    try:
        return len(text) < 4096 and Path(text).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL character
        return False


def _validate(data: Any, yaml_source: YamlSource | None) -> PruningConfig:
    locate_in_file = yaml_source.locate if yaml_source is not None else (lambda _p: (None, None))
    if not isinstance(data, Mapping):
        source, line = locate_in_file(())
        raise ConfigError([ConfigProblem("", f"the config must be a mapping, got {type(data).__name__}", "start with 'pruners:' (see configs/)", source, line)])
    if any(isinstance(k, str) and k in PRUNEKIT_TOP_KEYS for k in data) and any(k in INC_KEYS or k == "pruning_configs" for k in data):
        mixed = sorted(k for k in data if k in INC_KEYS or k == "pruning_configs")
        source, line = locate_in_file((mixed[0],))
        raise ConfigError([ConfigProblem(mixed[0], f"the config mixes prunekit keys (pruners) with INC-style keys ({', '.join(mixed)})", "use one form: move these keys into the pruner groups, or drop 'pruners'", source, line)])

    origin: dict[Path_, Path_] = {}
    problems: list[ConfigProblem] = []
    if is_inc_form(data):
        data, origin, problems = translate_inc(data, CONFIG_VERSION)
        problems = [_locate_problem(p, locate_in_file) for p in problems]
    merged, defaults_origin = _apply_defaults(data)
    origin.update(defaults_origin)
    written = yaml_source.written_text if yaml_source is not None else None
    try:
        config = PruningConfig.model_validate(merged)
    except ValidationError as err:
        problems += problems_from_validation_error(
            err,
            model_at=lambda path: _model_at(merged, path),
            user_path=lambda path: _user_path(path, origin),
            locate=locate_in_file,
            written=written,
        )
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line is None, p.line or 0)))
    return config


def _locate_problem(problem: ConfigProblem, locate: Any) -> ConfigProblem:
    path = _parse_path(problem.path)
    source, line = locate(path)
    return ConfigProblem(problem.path, problem.what, problem.fix, source, line)


def _user_path(path: Path_, origin: Mapping[Path_, Path_]) -> Path_:
    """The key path the user wrote (a default, an INC key) for a path of the canonical config."""
    for cut in range(len(path), 0, -1):
        if path[:cut] in origin:
            return origin[path[:cut]] + path[cut:]
    return path


_PATH_PART = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")


def _parse_path(text: str) -> Path_:
    return tuple(int(m[1]) if m[1] is not None else m[2] for m in _PATH_PART.finditer(text))


def _model_at(data: Any, path: Path_) -> type[BaseModel] | None:
    """The model that owns the keys at ``path`` of the canonical config (for allowed-key lists)."""
    if path == ():
        return PruningConfig
    if path and path[0] == "data_sparsity":
        return data_sparsity_model_at(data.get("data_sparsity") if isinstance(data, Mapping) else None, path[1:])
    if len(path) == 2 and path[0] == "pruners":
        try:
            return _pruner_model(data["pruners"][path[1]].get("type", "basic"))
        except (KeyError, IndexError, TypeError, AttributeError):
            return PrunerConfig
    if len(path) == 3 and path[0] == "pruners" and path[2] == "regularizer":
        try:
            return REGULARIZERS.config_of(data["pruners"][path[1]]["regularizer"]["type"])
        except (KeyError, IndexError, TypeError, RegistryError):
            return None
    if len(path) == 3 and path[0] == "pruners" and path[2] == "scheduler":
        try:
            type_name = data["pruners"][path[1]]["scheduler"]["type"]
            return SCHEDULERS.config_of(type_name)
        except (KeyError, IndexError, TypeError, RegistryError):
            return None
    return None


# ---------------------------------------------------------------------------- JSON Schema
def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the config: ``scheduler`` is one of the registered weight schedulers' configs."""
    schema = PruningConfig.model_json_schema()
    defs = schema.setdefault("$defs", {})
    variants = []
    for entry in SCHEDULERS.entries():
        model = entry.config
        if model is None or not issubclass(model, WeightSchedulerConfig):
            continue
        sub = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        names = [entry.name, *entry.aliases]
        sub.setdefault("properties", {})["type"] = {"enum": names, "description": entry.description}
        sub["required"] = sorted(set(sub.get("required", [])) | {"type"})
        defs[model.__name__] = sub
        variants.append({"$ref": f"#/$defs/{model.__name__}"})
    regularizers = []
    for entry in REGULARIZERS.entries():
        if entry.config is None:
            continue
        sub = entry.config.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        sub.setdefault("properties", {})["type"] = {"enum": [entry.name, *entry.aliases], "description": entry.description}
        sub["required"] = sorted(set(sub.get("required", [])) | {"type"})
        defs[entry.config.__name__] = sub
        regularizers.append({"$ref": f"#/$defs/{entry.config.__name__}"})
    _pruner_types()
    groups = []
    for entry in PRUNERS.entries():
        model = entry.config if entry.config is not None else PrunerConfig
        sub = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        props = sub.setdefault("properties", {})
        for key in model.unused_keys:
            props.pop(key, None)
        props["type"] = {"enum": [entry.name, *entry.aliases], "description": entry.description}
        props["scheduler"] = {"description": props.get("scheduler", {}).get("description", ""), "anyOf": variants}
        props["regularizer"] = {"description": props.get("regularizer", {}).get("description", ""), "anyOf": [*regularizers, {"type": "null"}]}
        if entry.name != "basic":
            sub["required"] = sorted(set(sub.get("required", [])) | {"type"})
        defs[model.__name__] = sub
        groups.append({"$ref": f"#/$defs/{model.__name__}"})
    schema["properties"]["pruners"]["items"] = {"anyOf": groups}
    return schema
