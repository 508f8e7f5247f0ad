"""Intel Neural Compressor 3.7.1's pruning config: ``WeightPruningConfig`` and the flat key names.

:func:`translate_inc` turns the INC form (the keyword globals plus ``pruning_configs``, each entry
overriding the globals) into prunekit's canonical form, recording where every canonical key came
from so that errors point at the key the user wrote. INC's defaults apply; a group without an
explicit scheduler type gets INC's rule (``start_step == end_step`` is one-shot, else iterative).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Mapping

from prunekit.errors import ConfigError, ConfigProblem
from prunekit.registry import SCHEDULERS, suggest
from prunekit.config.validation import data_shape_problems, format_path, short_repr

__all__ = [
    "INC_KEYS",
    "INC_DEFAULTS",
    "INC_UNSUPPORTED_CRITERIA",
    "PRUNEKIT_TOP_KEYS",
    "WeightPruningConfig",
    "is_inc_form",
    "translate_inc",
]

Path_ = tuple[Any, ...]
#: top-level keys of prunekit's own form (a config that has one is not in INC's form)
PRUNEKIT_TOP_KEYS = ("version", "defaults", "pruners", "data_sparsity")

#: INC pruning types prunekit does not implement, with the reason shown to the user
INC_UNSUPPORTED_CRITERIA = {
    "retrain_free": "INC's retrain-free pruning (channel masks rearranged from mask gradients over a loss) is not implemented; "
    "for post-training pruning use pruning_type sparse_gpt, or type wanda / magnitude",
    "block_mask_progressive": "INC could not run it either (its progressive pruner has no block masks)",
    "retrain_free_progressive": "INC could not run it either (its progressive pruner has no block masks)",
}

#: INC ``pruning_type`` -> (prunekit pruner type, criterion; None: the type's own)
INC_PRUNING_TYPES: dict[str, tuple[str, str | None]] = {
    **{c: ("basic", c) for c in ("magnitude", "gradient", "snip", "snip_momentum")},
    **{f"{c}_progressive": ("progressive", c) for c in ("magnitude", "gradient", "snip", "snip_momentum")},
    "pattern_lock": ("pattern_lock", None),
    "block_mask": ("block_mask", None),
    "sparse_gpt": ("sparse_gpt", None),
}
#: canonical group keys a one-shot group does not read (INC's defaults fill them for every group)
_ONESHOT_DROPS = ("criterion", "reduce", "scope", "min_sparsity_per_op", "max_sparsity_per_op", "scheduler")
#: canonical group keys a pattern_lock group does not read (INC's defaults fill them for every group)
_PATTERN_LOCK_DROPS = ("target_sparsity", "pattern", "criterion", "reduce", "scope", "min_sparsity_per_op", "max_sparsity_per_op")


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
#: INC keys that prunekit accepts beyond INC's own: an explicit scheduler, a group name, the head rule
_INC_EXTRA_KEYS = ("scheduler", "name", "exclude_head")
#: INC's regularization keys and lock_init_sparsity (translated to ``regularizer`` / ``lock_init_sparsity``)
_INC_REG_KEYS = ("reg_type", "reg_coeff", "parameters", "lock_init_sparsity")
_INC_UNSUPPORTED_KEYS = {
    "resume_from_pruned_checkpoint": "resume with Pruning.load_state_dict() instead",
    "low_memory_usage": "prunekit always works in low memory; remove the key",
    "backend": "prunekit works on PyTorch models only; remove the key",
}


class WeightPruningConfig:
    """INC 3.7.1's ``WeightPruningConfig``: the same keywords, with the same meaning.

    ``pruning_configs`` is a list of dicts, one per pruner group, each overriding the keyword
    globals. Pass the object to :func:`load_config` or ``prepare_pruning``; mutable defaults are
    never shared between two objects. Arguments nested too deeply, holding too many values or
    containing themselves raise :class:`~prunekit.errors.ConfigError` here (before any copy).
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
        problems = data_shape_problems(
            {"pruning_configs": pruning_configs, "op_names": op_names, "excluded_op_names": excluded_op_names,
             "pruning_op_types": pruning_op_types, **kwargs}
        )
        if problems:
            raise ConfigError(problems)
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
    return not (keys & set(PRUNEKIT_TOP_KEYS)) and bool(keys & (set(INC_KEYS) | set(_INC_REG_KEYS) | {"pruning_configs"}))


def translate_inc(data: Mapping[str, Any], version: int) -> tuple[dict[str, Any], dict[Path_, Path_], list[ConfigProblem]]:
    """INC flat form -> canonical form, with the origin of every canonical key path.

    A group without a scheduler type gets INC's rule: ``start_step == end_step`` means ``oneshot``,
    otherwise ``iterative``; an explicit ``scheduler`` always wins.
    """
    problems: list[ConfigProblem] = []
    origin: dict[Path_, Path_] = {}
    allowed = sorted([*INC_KEYS, *_INC_EXTRA_KEYS, *_INC_REG_KEYS])

    def check_keys(mapping: Mapping[str, Any], where: Path_) -> None:
        for key in mapping:
            if not isinstance(key, str):
                kind = "a boolean" if isinstance(key, bool) else "null" if key is None else f"a {type(key).__name__}"
                problems.append(
                    ConfigProblem(
                        format_path(where),
                        f"the key {short_repr(key)} is {kind}, not a string",
                        "keys must be strings: write the key's name as text (e.g. 'target_sparsity')",
                    )
                )
                continue
            if key in INC_KEYS or key in _INC_EXTRA_KEYS or key in _INC_REG_KEYS or (key == "pruning_configs" and not where):
                continue
            path = format_path(where + (key,))
            if key in _INC_UNSUPPORTED_KEYS:
                problems.append(ConfigProblem(path, f"INC key '{key}' is not supported by prunekit", _INC_UNSUPPORTED_KEYS[key]))
                continue
            hint = suggest(str(key), allowed)
            did = f"did you mean '{hint}'? " if hint else ""
            shown = f"'{key}'" if len(key) <= 80 else short_repr(key)
            problems.append(ConfigProblem(path, f"unknown key {shown}", f"{did}INC-style keys are: {', '.join(allowed)}"))

    check_keys(data, ())
    globals_ = {k: v for k, v in data.items() if k != "pruning_configs"}
    local_list = data.get("pruning_configs", [{}])
    if local_list is None or local_list == []:
        local_list = [{}]
    if not isinstance(local_list, list) or not all(isinstance(x, Mapping) for x in local_list):
        problems.append(ConfigProblem("pruning_configs", "expected a list of mappings", "write pruning_configs: [{...}, ...]"))
        return {}, origin, problems

    pruners: list[dict[str, Any]] = []
    capped: list[str] = []
    for i, local in enumerate(local_list):
        check_keys(local, ("pruning_configs", i))
        merged = {**INC_DEFAULTS, **globals_, **local}
        group: dict[str, Any] = {"scheduler": {}}
        for inc_key, target in INC_KEYS.items():
            if inc_key not in merged:
                continue
            value = copy.deepcopy(merged[inc_key])
            # a value INC's defaults supplied is reported under its INC key name too
            source: Path_ = ("pruning_configs", i, inc_key) if inc_key in local else (inc_key,)
            if len(target) == 1:
                group[target[0]] = value
            else:
                group["scheduler"][target[1]] = value
            origin[("pruners", i) + target] = source
        if "name" in local:
            group["name"] = local["name"]
            origin[("pruners", i, "name")] = ("pruning_configs", i, "name")
        _choose_inc_scheduler(group, merged, local, globals_, i, origin)
        _inc_type(group, set(globals_) | set(local), local, i, origin)
        _inc_regularizer(group, merged, local, i, origin, problems)
        _inc_selection(group, merged, local, i, origin, capped)
        pruners.append(group)
    if capped:
        warnings.warn(
            "INC-form config: target_sparsity above max_sparsity_ratio_per_op in "
            + "; ".join(capped)
            + "; capped at max_sparsity_ratio_per_op, as INC capped every layer (prunekit-form configs refuse this)",
            UserWarning,
            stacklevel=4,
        )
    return {"version": version, "pruners": pruners}, origin, problems


def _source(key: str, local: Mapping[str, Any], index: int) -> Path_:
    return ("pruning_configs", index, key) if key in local else (key,)


def _inc_type(group: dict[str, Any], given: set[str], local: Mapping[str, Any], index: int, origin: dict[Path_, Path_]) -> None:
    """``pruning_type`` (in ``criterion`` so far) -> the pruner ``type`` and its criterion, as INC's get_pruner mapped it."""
    value = group.get("criterion")
    if not isinstance(value, str) or value not in INC_PRUNING_TYPES:
        return  # an unknown value is reported by the criterion check, under pruning_type
    kind, criterion = INC_PRUNING_TYPES[value]
    group["type"] = kind
    origin[("pruners", index, "type")] = origin.get(("pruners", index, "criterion"), ("pruning_type",))
    if criterion is not None:
        group["criterion"] = criterion
        return
    del group["criterion"]
    origin.pop(("pruners", index, "criterion"), None)
    if kind == "block_mask" and "criterion_reduce_type" not in given:
        group.pop("reduce", None)  # INC scored block masks by the gradient's sum, whatever its default reduce
        origin.pop(("pruners", index, "reduce"), None)
    if kind == "sparse_gpt":
        if "pattern" not in given:
            group["pattern"] = "1x1"  # INC's default 4x1 is a block pattern; its SparseGPT examples all prune 1x1
        for key in _ONESHOT_DROPS:
            group.pop(key, None)
            for path in [p for p in origin if p[:3] == ("pruners", index, key)]:
                origin.pop(path)
    if kind == "pattern_lock":
        if "pattern" in local:
            warnings.warn(
                f"pruning_configs[{index}]: pattern_lock keeps exactly the zeros the weights have; 'pattern' "
                f"({local['pattern']!r}) is not used (INC derived a block mask from it, which lost or added zeros)",
                UserWarning,
                stacklevel=5,
            )
        for key in _PATTERN_LOCK_DROPS:
            group.pop(key, None)
            origin.pop(("pruners", index, key), None)


def _inc_regularizer(group: dict[str, Any], merged: Mapping[str, Any], local: Mapping[str, Any], index: int, origin: dict[Path_, Path_], problems: list[ConfigProblem]) -> None:
    """``reg_type`` + ``parameters: {reg_coeff}`` (or a top-level ``reg_coeff``) -> ``regularizer``; ``lock_init_sparsity``."""
    if merged.get("lock_init_sparsity"):
        group["lock_init_sparsity"] = merged["lock_init_sparsity"]
        origin[("pruners", index, "lock_init_sparsity")] = _source("lock_init_sparsity", local, index)
    reg_type, parameters = merged.get("reg_type"), merged.get("parameters")
    coeff_key = "reg_coeff"
    coeff = merged.get("reg_coeff")
    if parameters is not None:
        if not isinstance(parameters, Mapping) or set(parameters) - {"reg_coeff"}:
            where = format_path(_source("parameters", local, index))
            problems.append(ConfigProblem(where, f"parameters {short_repr(parameters)} is not {{reg_coeff: <number>}}", "INC's parameters key holds reg_coeff only"))
            return
        if "reg_coeff" in parameters:
            coeff, coeff_key = parameters["reg_coeff"], "parameters"
    if reg_type is None:
        if coeff not in (None, 0, 0.0):
            where = format_path(_source(coeff_key, local, index))
            problems.append(ConfigProblem(where, "reg_coeff is given without reg_type, so it has no effect", "add reg_type: group_lasso, or remove reg_coeff"))
        return
    group["regularizer"] = {"type": reg_type, "reg_coeff": 0.0 if coeff is None else coeff}
    origin[("pruners", index, "regularizer", "type")] = _source("reg_type", local, index)
    origin[("pruners", index, "regularizer", "reg_coeff")] = _source(coeff_key, local, index)


def _inc_selection(group: dict[str, Any], merged: Mapping[str, Any], local: Mapping[str, Any], index: int, origin: dict[Path_, Path_], capped: list[str]) -> None:
    """INC's selection rules: the classifier head left dense (``exclude_head``, default on), selectors that
    match nothing a warning, a single op type given as a string, target capped at the per-op maximum."""
    group["exclude_head"] = merged.get("exclude_head", True)
    if "exclude_head" in merged:
        origin[("pruners", index, "exclude_head")] = _source("exclude_head", local, index)
    group["unmatched_selectors"] = "warn"
    if isinstance(group.get("op_types"), str):
        group["op_types"] = [group["op_types"]]  # INC iterated the string's letters: 'Linear' selected LayerNorm
    target, high = group.get("target_sparsity"), group.get("max_sparsity_per_op")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (target, high))
    if numbers and target > high:  # type: ignore[operator]
        capped.append(f"pruning_configs[{index}] ({target} > {high})")
        group["target_sparsity"] = high


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
