"""The pruning configuration: pydantic v2 models, ``load_config`` and INC-style configs.

A config has one or more pruner groups (layer selection, pattern, criterion, scope, target,
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
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

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
from prunekit.pattern_syntax import PATTERN_SYNTAX_HELP, PatternSpec, parse_pattern
from prunekit.registry import CRITERIA, SCHEDULERS, suggest
from prunekit.schedulers.base import SchedulerConfig, WeightSchedulerConfig
from prunekit.schedulers.oneshot import OneshotConfig
from prunekit.validation import check_regexes, format_path, problems_from_validation_error, rule_error
from prunekit.yaml_source import YamlSource, read_yaml

__all__ = [
    "CONFIG_VERSION",
    "PrunerConfig",
    "PruningConfig",
    "WeightPruningConfig",
    "INC_KEYS",
    "load_config",
    "config_json_schema",
]

CONFIG_VERSION = 1
Path_ = tuple[Any, ...]


# ---------------------------------------------------------------------------- scheduler field
def _validate_scheduler(value: Any, handler: ValidatorFunctionWrapHandler) -> SchedulerConfig:
    """Dispatch a scheduler mapping on its ``type`` to the config model that type registered."""
    if isinstance(value, SchedulerConfig):
        value = value.model_dump()
    if isinstance(value, str):  # shorthand: `scheduler: oneshot`
        value = {"type": value}
    if not isinstance(value, Mapping):
        raise rule_error(f"expected a scheduler mapping, got {value!r}", "write e.g. {type: iterative, end_step: 100}")
    type_name = value.get("type")
    if type_name is None:
        raise rule_error("the scheduler has no 'type'", f"add 'type:' with one of {', '.join(SCHEDULERS.names())}")
    if not isinstance(type_name, str) or type_name not in SCHEDULERS:
        raise rule_error(f"unknown scheduler type {type_name!r}", SCHEDULERS.unknown_hint(type_name))
    model = SCHEDULERS.config_of(type_name)
    if model is None or not issubclass(model, WeightSchedulerConfig):
        raise rule_error(
            f"scheduler {type_name!r} is not a weight-pruning scheduler",
            "name a weight scheduler here (data schedulers belong in the data_sparsity section)",
        )
    return model.model_validate(dict(value))


SchedulerField = Annotated[SerializeAsAny[WeightSchedulerConfig], WrapValidator(_validate_scheduler)]


# ---------------------------------------------------------------------------- pruner group
def _criterion_names() -> list[str]:
    import prunekit.pruner.criteria  # noqa: F401  (registers the built-in criteria)

    return CRITERIA.names()


class PrunerConfig(BaseModel):
    """One pruner group: which layers, which pattern and criterion, how sparse, and when."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

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
    pattern: str = Field("1x1", description="NxM blocks (1x1, 4x1), N:M (2:4), channelx1 or 1xchannel.")
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
        for i, name in enumerate(value):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise rule_error(f"op_types[{i}] {name!r} is not a class name", "write a class name such as Linear or Conv2d")
        return value

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
        inc = _INC_UNSUPPORTED_CRITERIA.get(value)
        if inc is not None:
            raise rule_error(f"criterion {value!r} is not supported by prunekit ({inc})", f"use one of {', '.join(names)}")
        raise rule_error(f"unknown criterion {value!r}", CRITERIA.unknown_hint(value))

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


#: INC pruning types prunekit does not implement, with the reason shown to the user
_INC_UNSUPPORTED_CRITERIA = {
    "pattern_lock": "it only keeps an existing sparsity pattern; load the pruned weights and use finalize() instead",
    "magnitude_progressive": "progressive pruning is not implemented",
    "snip_progressive": "progressive pruning is not implemented",
    "snip_momentum_progressive": "progressive pruning is not implemented",
    "retrain_free": "retrain-free pruning is not implemented",
    "sparse_gpt": "SparseGPT is not implemented",
}

_GROUP_KEYS = tuple(k for k in PrunerConfig.model_fields if k != "name")


# ---------------------------------------------------------------------------- defaults merging
def _scheduler_mapping(value: Any) -> Any:
    """The shorthand ``scheduler: oneshot`` as the mapping ``{type: oneshot}``."""
    return {"type": value} if isinstance(value, str) else value


def _merge_group(defaults: Mapping[str, Any], group: Mapping[str, Any]) -> dict[str, Any]:
    """``group`` over ``defaults``; scheduler mappings merge key by key when their types agree.

    A group scheduler without ``type`` takes the default's type (and its other keys).
    """
    merged = {k: copy.deepcopy(_scheduler_mapping(v) if k == "scheduler" else v) for k, v in defaults.items()}
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
        merged_groups.append(_merge_group(defaults, group))
        for key, value in defaults.items():
            if key not in group:
                origin[("pruners", i, key)] = ("defaults", key)
            elif key == "scheduler" and isinstance(value, Mapping) and isinstance(group[key], Mapping):
                for sub in value:
                    if sub not in group[key]:
                        origin[("pruners", i, key, sub)] = ("defaults", key, sub)
    out["pruners"] = merged_groups
    return out, origin


# ---------------------------------------------------------------------------- the whole config
class PruningConfig(BaseModel):
    """The whole pruning configuration: a version, shared defaults and the pruner groups."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    version: int = Field(CONFIG_VERSION, description="Config format version (1).")
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="Keys applied to every pruner group that does not set them."
    )
    pruners: list[PrunerConfig] = Field(
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
        for key in value:
            if key not in _GROUP_KEYS:
                hint = suggest(key, list(_GROUP_KEYS))
                did = f"did you mean '{hint}'? " if hint else ""
                raise rule_error(f"unknown key '{key}' in defaults", f"{did}defaults may set: {', '.join(_GROUP_KEYS)}")
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
                    f"pruners[{i}] and pruners[{seen[group.name]}] are both named {group.name!r}",
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


# ---------------------------------------------------------------------------- INC 3.7.1 form
#: INC WeightPruningConfig key -> canonical path inside a pruner group
INC_KEYS: dict[str, tuple[str, ...]] = {
    "target_sparsity": ("target_sparsity",),
    "pruning_type": ("criterion",),
    "pattern": ("pattern",),
    "op_names": ("op_names",),
    "excluded_op_names": ("excluded_op_names",),
    "start_step": ("scheduler", "start_step"),
    "end_step": ("scheduler", "end_step"),
    "pruning_scope": ("scope",),
    "pruning_frequency": ("scheduler", "frequency"),
    "min_sparsity_ratio_per_op": ("min_sparsity_per_op",),
    "max_sparsity_ratio_per_op": ("max_sparsity_per_op",),
    "sparsity_decay_type": ("scheduler", "decay"),
    "pruning_op_types": ("op_types",),
    "criterion_reduce_type": ("reduce",),
}
#: INC's WeightPruningConfig defaults (they apply to INC-form configs only)
INC_DEFAULTS: dict[str, Any] = {
    "target_sparsity": 0.9,
    "pruning_type": "snip_momentum",
    "pattern": "4x1",
    "op_names": [],
    "excluded_op_names": [],
    "start_step": 0,
    "end_step": 0,
    "pruning_scope": "global",
    "pruning_frequency": 1,
    "min_sparsity_ratio_per_op": 0.0,
    "max_sparsity_ratio_per_op": 0.98,
    "sparsity_decay_type": "exp",
    "pruning_op_types": ["Conv", "Linear"],
    "criterion_reduce_type": "mean",
}
#: INC keys that prunekit accepts beyond INC's own: an explicit scheduler and a group name
_INC_EXTRA_KEYS = ("scheduler", "name")
_INC_UNSUPPORTED_KEYS = {
    "reg_type": "regularization during pruning is not implemented",
    "reg_coeff": "regularization during pruning is not implemented",
    "parameters": "per-pruner free-form parameters are not used",
    "resume_from_pruned_checkpoint": "resume with Pruning.load_state_dict() instead",
    "low_memory_usage": "prunekit always works in low memory; remove the key",
    "backend": "prunekit works on PyTorch models only; remove the key",
}
_CANONICAL_TOP = ("version", "defaults", "pruners", "data_sparsity")


class WeightPruningConfig:
    """INC 3.7.1's ``WeightPruningConfig``: the same keywords, with the same meaning.

    ``pruning_configs`` is a list of dicts, one per pruner group, each overriding the keyword
    globals. Pass the object to :func:`load_config` or ``prepare_pruning``; mutable defaults are
    never shared between two objects.
    """

    def __init__(
        self,
        pruning_configs: list[dict[str, Any]] | None = None,
        target_sparsity: float = 0.9,
        pruning_type: str = "snip_momentum",
        pattern: str = "4x1",
        op_names: list[str] | None = None,
        excluded_op_names: list[str] | None = None,
        start_step: int = 0,
        end_step: int = 0,
        pruning_scope: str = "global",
        pruning_frequency: int = 1,
        min_sparsity_ratio_per_op: float = 0.0,
        max_sparsity_ratio_per_op: float = 0.98,
        sparsity_decay_type: str = "exp",
        pruning_op_types: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.pruning_configs: list[dict[str, Any]] = copy.deepcopy(pruning_configs) if pruning_configs else [{}]
        self.weight_compression: dict[str, Any] = {
            "target_sparsity": target_sparsity,
            "pruning_type": pruning_type,
            "pattern": pattern,
            "op_names": list(op_names or []),
            "excluded_op_names": list(excluded_op_names or []),
            "start_step": start_step,
            "end_step": end_step,
            "pruning_scope": pruning_scope,
            "pruning_frequency": pruning_frequency,
            "min_sparsity_ratio_per_op": min_sparsity_ratio_per_op,
            "max_sparsity_ratio_per_op": max_sparsity_ratio_per_op,
            "sparsity_decay_type": sparsity_decay_type,
            "pruning_op_types": list(pruning_op_types) if pruning_op_types is not None else ["Conv", "Linear"],
            **copy.deepcopy(kwargs),
        }

    def to_dict(self) -> dict[str, Any]:
        """The INC flat form: the globals plus ``pruning_configs``."""
        return {**copy.deepcopy(self.weight_compression), "pruning_configs": copy.deepcopy(self.pruning_configs)}

    def __repr__(self) -> str:
        return f"WeightPruningConfig({self.to_dict()!r})"


def is_inc_form(data: Mapping[str, Any]) -> bool:
    """True for a flat INC-style mapping (INC keys or ``pruning_configs``, no ``pruners``)."""
    keys = set(data)
    return not (keys & set(_CANONICAL_TOP)) and bool(keys & (set(INC_KEYS) | {"pruning_configs"}))


def _translate_inc(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[Path_, Path_], list[ConfigProblem]]:
    """INC flat form -> canonical form, with the origin of every canonical key path.

    A group without a scheduler type gets INC's rule: ``start_step == end_step`` means ``oneshot``,
    otherwise ``iterative``; an explicit ``scheduler`` always wins.
    """
    problems: list[ConfigProblem] = []
    origin: dict[Path_, Path_] = {}
    allowed = sorted([*INC_KEYS, *_INC_EXTRA_KEYS])

    def check_keys(mapping: Mapping[str, Any], where: Path_) -> None:
        for key in mapping:
            if key in INC_KEYS or key in _INC_EXTRA_KEYS or (key == "pruning_configs" and not where):
                continue
            path = format_path(where + (key,))
            if key in _INC_UNSUPPORTED_KEYS:
                problems.append(ConfigProblem(path, f"INC key '{key}' is not supported by prunekit", _INC_UNSUPPORTED_KEYS[key]))
                continue
            hint = suggest(str(key), allowed)
            did = f"did you mean '{hint}'? " if hint else ""
            problems.append(ConfigProblem(path, f"unknown key '{key}'", f"{did}INC-style keys are: {', '.join(allowed)}"))

    check_keys(data, ())
    globals_ = {k: v for k, v in data.items() if k != "pruning_configs"}
    local_list = data.get("pruning_configs", [{}])
    if local_list is None or local_list == []:
        local_list = [{}]
    if not isinstance(local_list, list) or not all(isinstance(x, Mapping) for x in local_list):
        problems.append(ConfigProblem("pruning_configs", "expected a list of mappings", "write pruning_configs: [{...}, ...]"))
        return {}, origin, problems

    pruners: list[dict[str, Any]] = []
    for i, local in enumerate(local_list):
        check_keys(local, ("pruning_configs", i))
        merged = {**INC_DEFAULTS, **globals_, **local}
        group: dict[str, Any] = {"scheduler": {}}
        for inc_key, target in INC_KEYS.items():
            if inc_key not in merged:
                continue
            value = copy.deepcopy(merged[inc_key])
            source: Path_ = ("pruning_configs", i, inc_key) if inc_key in local else ((inc_key,) if inc_key in globals_ else ())
            if len(target) == 1:
                group[target[0]] = value
            else:
                group["scheduler"][target[1]] = value
            if source:
                origin[("pruners", i) + target] = source
        if "name" in local:
            group["name"] = local["name"]
            origin[("pruners", i, "name")] = ("pruning_configs", i, "name")
        _choose_inc_scheduler(group, merged, local, globals_, i, origin)
        pruners.append(group)
    return {"version": CONFIG_VERSION, "pruners": pruners}, origin, problems


def _choose_inc_scheduler(
    group: dict[str, Any],
    merged: Mapping[str, Any],
    local: Mapping[str, Any],
    globals_: Mapping[str, Any],
    index: int,
    origin: dict[Path_, Path_],
) -> None:
    sched: dict[str, Any] = group["scheduler"]
    explicit = merged.get("scheduler")
    where: Path_ = ("pruning_configs", index, "scheduler") if "scheduler" in local else ("scheduler",)
    if isinstance(explicit, Mapping):
        sched.update(copy.deepcopy(dict(explicit)))
        for key in explicit:
            origin[("pruners", index, "scheduler", key)] = where + (key,)
    elif explicit is not None:
        sched["type"] = explicit
        origin[("pruners", index, "scheduler", "type")] = where
    if "type" not in sched:  # INC's rule, unless a type was given
        sched["type"] = "oneshot" if sched.get("start_step") == sched.get("end_step") else "iterative"
    model = SCHEDULERS.config_of(sched["type"]) if isinstance(sched["type"], str) and sched["type"] in SCHEDULERS else None
    if model is None:
        return
    single = bool(getattr(SCHEDULERS.get(sched["type"]), "single_event", False))
    for key in ("decay", "frequency"):
        if key not in sched or (key in model.model_fields and not single):
            continue
        inc_key = _inc_name(key)
        value = sched.pop(key)
        if (inc_key in local or inc_key in globals_) and value != INC_DEFAULTS[inc_key]:
            kind = "one-shot schedule (start_step == end_step)" if single else f"{sched['type']} schedule"
            warnings.warn(
                f"pruning_configs[{index}]: '{inc_key}' has no effect on a {kind} and is ignored, as INC ignored it",
                UserWarning,
                stacklevel=5,
            )


def _inc_name(canonical_key: str) -> str:
    for inc_key, target in INC_KEYS.items():
        if target == ("scheduler", canonical_key):
            return inc_key
    return canonical_key


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
        data: Any = source.to_dict()
    elif isinstance(source, Path) or (isinstance(source, str) and _looks_like_path(source)):
        yaml_source = read_yaml(Path(source))
        data = yaml_source.data
    elif isinstance(source, str):
        yaml_source = read_yaml(source)
        data = yaml_source.data
    elif isinstance(source, Mapping):
        data = source
    else:
        raise ConfigError([ConfigProblem("", f"cannot load a config from {type(source).__name__}", "pass a path, YAML text, a dict or a PruningConfig")])
    return _validate(data, yaml_source)


def _looks_like_path(text: str) -> bool:
    if "\n" in text or ":" in text.split("/")[-1] and not text.endswith((".yaml", ".yml")):
        return False
    if text.endswith((".yaml", ".yml", ".json")):
        return True
    return Path(text).is_file()


def _validate(data: Any, yaml_source: YamlSource | None) -> PruningConfig:
    locate_in_file = yaml_source.locate if yaml_source is not None else (lambda _p: (None, None))
    if not isinstance(data, Mapping):
        source, line = locate_in_file(())
        raise ConfigError([ConfigProblem("", f"the config must be a mapping, got {type(data).__name__}", "start with 'pruners:' (see configs/)", source, line)])
    if any(isinstance(k, str) and k in _CANONICAL_TOP for k in data) and any(k in INC_KEYS or k == "pruning_configs" for k in data):
        mixed = sorted(k for k in data if k in INC_KEYS or k == "pruning_configs")
        source, line = locate_in_file((mixed[0],))
        raise ConfigError([ConfigProblem(mixed[0], f"the config mixes prunekit keys (pruners) with INC-style keys ({', '.join(mixed)})", "use one form: move these keys into the pruner groups, or drop 'pruners'", source, line)])

    origin: dict[Path_, Path_] = {}
    problems: list[ConfigProblem] = []
    if is_inc_form(data):
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            data, origin, problems = _translate_inc(data)
        problems = [_locate_problem(p, locate_in_file) for p in problems]
    merged, defaults_origin = _apply_defaults(data)
    origin.update(defaults_origin)
    try:
        config = PruningConfig.model_validate(merged)
    except ValidationError as err:
        found = problems_from_validation_error(err, model_at=lambda path: _model_at(merged, path))
        problems += _relocate(found, origin, locate_in_file)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line is None, p.line or 0)))
    return config


def _locate_problem(problem: ConfigProblem, locate: Any) -> ConfigProblem:
    path = _parse_path(problem.path)
    source, line = locate(path)
    return ConfigProblem(problem.path, problem.what, problem.fix, source, line)


def _relocate(problems: list[ConfigProblem], origin: Mapping[Path_, Path_], locate: Any) -> list[ConfigProblem]:
    """Point each problem at the key the user wrote (defaults, INC keys) and its file line."""
    out: list[ConfigProblem] = []
    seen: set[tuple[str, str]] = set()
    for problem in problems:
        path = _parse_path(problem.path)
        for cut in range(len(path), 0, -1):
            if path[:cut] in origin:
                path = origin[path[:cut]] + path[cut:]
                break
        where = format_path(path)
        if (where, problem.what) in seen:
            continue
        seen.add((where, problem.what))
        source, line = locate(path)
        out.append(ConfigProblem(where, problem.what, problem.fix, source, line))
    return out


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
        return PrunerConfig
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
    pruner = defs["PrunerConfig"]
    pruner["properties"]["scheduler"] = {
        "description": pruner["properties"]["scheduler"].get("description", ""),
        "anyOf": variants,
    }
    return schema
