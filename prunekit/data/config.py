"""The YAML ``data_sparsity`` section and ``build_data_sparsity``.

::

    data_sparsity:
      data_names: ['^embedding$']        # regexes (re.search) over parameter names and module names
      excluded_data_names: []
      module_types: [Embedding]          # class-name prefixes of the owning modules ([] = any)
      sparsifier: {type: data_norm, sparsity_level: 0.1, sparse_block_shape: [1, 4], norm: L1}
      scheduler: {type: gamma, gamma: 2.0, threshold_sl: 0.8}

A parameter is selected when its owning module's class matches ``module_types`` (if given) and its
full name (``encoder.embed.weight``) or its module's name (``encoder.embed``) matches one of
``data_names`` (if given) and none of ``excluded_data_names``. Entries are named by the full
parameter name. ``build_data_sparsity(config, model)`` returns ``(sparsifier, scheduler or None)``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Mapping

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
from torch import nn

from prunekit.data.base import DATA_SPARSIFIERS, BaseDataSparsifier
from prunekit.data.norm import DataNormConfig
from prunekit.errors import ConfigError, ConfigProblem, RegistryError
from prunekit.registry import SCHEDULERS, get_scheduler, suggest
from prunekit.schedulers.data import BaseDataScheduler, DataSchedulerConfig, LambdaDataScheduler
from prunekit.config.validation import (
    StrictNumbersModel,
    check_class_names,
    check_regexes,
    problems_from_validation_error,
    rule_error,
)

__all__ = [
    "DataSparsifierConfig",
    "DataSparsityConfig",
    "build_data_sparsity",
    "data_sparsity_model_at",
    "select_data",
]


class DataSparsifierConfig(StrictNumbersModel):
    """Base of every data sparsifier config: ``type`` names the entry in ``DATA_SPARSIFIERS``.

    A boolean is refused wherever a field takes a number, for subclasses' fields too.
    """

    model_config = ConfigDict(extra="forbid")

    type: str = Field("data_norm", description="Registered data sparsifier name.")


def _validate_sparsifier(value: Any, handler: ValidatorFunctionWrapHandler) -> BaseModel:
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise rule_error(f"expected a sparsifier mapping, got {value!r}", "write e.g. {type: data_norm, sparsity_level: 0.5}")
    type_name = value.get("type", "data_norm")
    if not isinstance(type_name, str) or type_name not in DATA_SPARSIFIERS:
        raise rule_error(f"unknown data sparsifier type {type_name!r}", DATA_SPARSIFIERS.unknown_hint(type_name))
    model = DATA_SPARSIFIERS.config_of(type_name) or DataSparsifierConfig
    return model.model_validate({**value, "type": type_name})


def _validate_scheduler(value: Any, handler: ValidatorFunctionWrapHandler) -> DataSchedulerConfig | None:
    if value is None:
        return None
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, Mapping):
        raise rule_error(f"expected a scheduler mapping, got {value!r}", "write e.g. {type: gamma, gamma: 2.0}")
    type_name = value.get("type")
    if type_name is None:
        raise rule_error("the data scheduler has no 'type'", f"add 'type:' with one of {', '.join(_data_scheduler_names())}")
    if not isinstance(type_name, str) or type_name not in SCHEDULERS:
        names = _data_scheduler_names()
        close = suggest(type_name, names) if isinstance(type_name, str) else None
        did = f"did you mean {close!r}? " if close else ""
        raise rule_error(f"unknown data scheduler type {type_name!r}", f"{did}data schedulers: {', '.join(names)}")
    cls, model = SCHEDULERS.get(type_name), SCHEDULERS.config_of(type_name)
    if not (isinstance(cls, type) and issubclass(cls, BaseDataScheduler)) or model is None or not issubclass(model, DataSchedulerConfig):
        raise rule_error(
            f"scheduler {type_name!r} is not a data scheduler",
            f"use one of {', '.join(_data_scheduler_names())} (weight schedulers belong in the pruners section)",
        )
    if issubclass(cls, LambdaDataScheduler):
        raise rule_error(
            "the lambda data scheduler takes a Python function, which a config cannot hold",
            "build prunekit.schedulers.data.LambdaDataScheduler(sparsifier, param_lambda=...) in code, "
            "or use gamma, step, linear or agp here",
        )
    return model.model_validate(dict(value))


def _data_scheduler_names() -> list[str]:
    return [
        e.name for e in SCHEDULERS.entries()
        if isinstance(e.obj, type) and issubclass(e.obj, BaseDataScheduler) and not issubclass(e.obj, LambdaDataScheduler)
    ]


SparsifierField = Annotated[SerializeAsAny[DataSparsifierConfig], WrapValidator(_validate_sparsifier)]
SchedulerField = Annotated[SerializeAsAny[DataSchedulerConfig] | None, WrapValidator(_validate_scheduler)]


class DataSparsityConfig(BaseModel):
    """Which data of a model to sparsify, with which sparsifier and which data scheduler."""

    model_config = ConfigDict(extra="forbid")

    data_names: list[str] = Field(
        default_factory=list,
        description="Regexes (re.search) over parameter and module names; empty: every parameter of module_types.",
    )
    excluded_data_names: list[str] = Field(default_factory=list, description="Regexes of names to leave alone.")
    module_types: list[str] = Field(
        default_factory=list,
        description="Class-name prefixes of the owning modules ('Embedding' matches EmbeddingBag too); empty: any.",
    )
    sparsifier: SparsifierField = Field(default_factory=DataNormConfig, description="The data sparsifier and its defaults.")
    scheduler: SchedulerField = Field(None, description="The data scheduler (optional).")

    @field_validator("data_names")
    @classmethod
    def _names_regex(cls, value: list[str]) -> list[str]:
        return check_regexes(value, "data_names")

    @field_validator("excluded_data_names")
    @classmethod
    def _excluded_regex(cls, value: list[str]) -> list[str]:
        return check_regexes(value, "excluded_data_names")

    @field_validator("module_types")
    @classmethod
    def _type_names(cls, value: list[str]) -> list[str]:
        return check_class_names(value, "module_types", "Embedding")

    @model_validator(mode="after")
    def _selects_something(self) -> "DataSparsityConfig":
        if not self.data_names and not self.module_types:
            raise rule_error(
                "no data selected: data_names and module_types are both empty",
                "list regexes of parameter names in data_names (e.g. ['^embedding\\.weight$']) or module types (e.g. [Embedding])",
            )
        return self


def data_sparsity_model_at(data: Any, path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model owning the keys at ``path`` inside a ``data_sparsity`` mapping (for error hints)."""
    if path == ():
        return DataSparsityConfig
    if len(path) == 1 and isinstance(data, Mapping):
        section = data.get(path[0])
        type_name = section.get("type") if isinstance(section, Mapping) else None
        try:
            if path[0] == "sparsifier":
                return DATA_SPARSIFIERS.config_of(type_name or "data_norm")
            if path[0] == "scheduler" and isinstance(type_name, str):
                return SCHEDULERS.config_of(type_name)
        except RegistryError:
            return None
    return None


def _validate(config: Any) -> DataSparsityConfig:
    if isinstance(config, DataSparsityConfig):
        return config
    section = getattr(config, "data_sparsity", config)
    if isinstance(section, DataSparsityConfig):
        return section
    if section is None:
        raise ConfigError([ConfigProblem("data_sparsity", "the config has no data_sparsity section", "add one")])
    try:
        return DataSparsityConfig.model_validate(section)
    except ValidationError as err:
        problems = problems_from_validation_error(
            err, prefix=("data_sparsity",), model_at=lambda p: data_sparsity_model_at(section, p[1:])
        )
        raise ConfigError(problems) from None


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def select_data(config: DataSparsityConfig, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The ``(parameter name, parameter)`` pairs ``config`` selects in ``model``, in model order.

    Raises :class:`~prunekit.errors.ConfigError` when nothing matches, or when an entry of
    ``data_names`` matches nothing (listing close names).
    """
    model = _unwrap(model)
    names = [re.compile(p) for p in config.data_names]
    excluded = [re.compile(p) for p in config.excluded_data_names]
    used = [False] * len(names)
    chosen: list[tuple[str, nn.Parameter]] = []
    candidates: list[str] = []
    for module_name, module in model.named_modules():
        if config.module_types and not any(type(module).__name__.startswith(t) for t in config.module_types):
            continue
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            candidates.append(full)
            keys = (full, module_name) if module_name else (full,)
            hits = [i for i, rx in enumerate(names) if any(rx.search(k) for k in keys)]
            for i in hits:
                used[i] = True
            if names and not hits:
                continue
            if any(rx.search(k) for rx in excluded for k in keys):
                continue
            chosen.append((full, param))
    problems = []
    scope = f" among parameters of module_types {config.module_types}" if config.module_types else ""
    for i, hit in enumerate(used):
        if not hit:
            close = suggest(config.data_names[i], candidates)
            did = f"did you mean {close!r}? " if close else ""
            listing = ", ".join(candidates[:12]) + (", ..." if len(candidates) > 12 else "")
            problems.append(ConfigProblem(
                f"data_sparsity.data_names[{i}]",
                f"{config.data_names[i]!r} matches no parameter{scope}",
                f"{did}names here: {listing or '(none)'}",
            ))
    if not problems and not chosen:
        problems.append(ConfigProblem(
            "data_sparsity", f"the selection matches no parameter{scope}", "widen data_names or module_types, or shorten excluded_data_names"
        ))
    if problems:
        raise ConfigError(problems)
    return chosen


def build_data_sparsity(config: Any, model: nn.Module) -> tuple[BaseDataSparsifier, BaseDataScheduler | None]:
    """The data sparsifier (holding the selected parameters, by reference) and the data scheduler.

    ``config``: a :class:`DataSparsityConfig`, the ``data_sparsity`` mapping, or a whole config
    object with a ``data_sparsity`` attribute (such as ``prunekit.load_config(...)``'s result).
    """
    checked = _validate(config)
    data = select_data(checked, model)
    sparsifier_cls = DATA_SPARSIFIERS.get(checked.sparsifier.type)
    from_config = getattr(sparsifier_cls, "from_config", None)
    if from_config is not None:
        sparsifier = from_config(checked.sparsifier, data_list=data)
    else:
        params = checked.sparsifier.model_dump(exclude={"type"})
        sparsifier = sparsifier_cls(data_list=data, **params)
    scheduler = None
    if checked.scheduler is not None:
        scheduler = get_scheduler(checked.scheduler, data_sparsifier=sparsifier)
    return sparsifier, scheduler
