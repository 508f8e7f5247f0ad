"""Data schedulers: vary one config parameter of a data sparsifier's entries, step by step.

``BaseDataScheduler(data_sparsifier, schedule_param, last_epoch=-1, verbose=False)`` follows
torch.ao's experimental data scheduler: it captures each entry's starting value (``base_param``),
takes step 0 in the constructor, and on each ``step()`` writes ``get_schedule_param()`` (name ->
value) into ``data_sparsifier.data_groups[name][schedule_param]`` and re-enables mask updates.
Call ``data_sparsifier.step()`` before ``data_scheduler.step()``; the other order is detected and
explained once (a ``UserWarning``).

Built-ins are closed forms of ``t``, the number of scheduler steps since an entry's base was
captured: at construction, or, for data added later, by the first step that sees it (as in the
torch.ao README loop, where ``add_data`` runs inside the loop, so such data count from the step
before). With ``u = clamp((t - start_step) / (end_step - start_step), 0, 1)``:

* ``gamma``: ``min(threshold_sl, base · gamma^t)`` (the torch.ao README's example);
* ``step``: ``min(threshold_sl, base · gamma^floor(t / step_size))``;
* ``lambda``: ``base · param_lambda(t)``, a Python callable (in code only, not from YAML);
* ``linear``: ``base + (target - base) · u``;
* ``agp``: ``base + (target - base) · (1 - (1 - u)³)`` (Zhu & Gupta: fast start).
"""

from __future__ import annotations

import abc
import copy
import inspect
import warnings
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from pydantic import Field, ValidationError, model_validator

from prunekit.errors import ConfigError, PruningError
from prunekit.registry import register_scheduler, suggest
from prunekit.schedulers.base import MAX_STEP, SchedulerConfig
from prunekit.schedulers.curves import decay_value
from prunekit.config.validation import problems_from_validation_error, rule_error

if TYPE_CHECKING:  # imported lazily at run time: prunekit.data imports this module
    from prunekit.data.base import BaseDataSparsifier

__all__ = [
    "BaseDataScheduler",
    "ClosedFormDataScheduler",
    "DataSchedulerConfig",
    "GammaConfig",
    "GammaDataScheduler",
    "StepConfig",
    "StepDataScheduler",
    "LambdaConfig",
    "LambdaDataScheduler",
    "RampConfig",
    "LinearDataScheduler",
    "AGPConfig",
    "AGPDataScheduler",
]

_BASE_FIELDS = ("schedule_param", "last_epoch", "verbose")
#: attributes that only mean something during a call: never saved, ignored when loaded
_TRANSIENT = ("_get_sp_called_within_step",)


class BaseDataScheduler(abc.ABC):
    """Schedules ``schedule_param`` of every entry of a :class:`~prunekit.data.BaseDataSparsifier`.

    Args:
        data_sparsifier: the sparsifier whose ``data_groups`` configs are scheduled.
        schedule_param: the config key to vary (every entry held now must have it).
        last_epoch: the step to resume after (-1: start); the constructor takes one step, so
            ``last_epoch`` is ``last_epoch + 1`` afterwards. With ``last_epoch >= 0`` the entries'
            current values are taken as the bases; to resume exactly, prefer
            :meth:`load_state_dict`, which restores the saved bases.
        verbose: print each value written.

    Subclasses implement :meth:`get_schedule_param`.
    """

    #: attributes left out of :meth:`state_dict` (besides the sparsifier): e.g. Python callables
    _not_state: ClassVar[tuple[str, ...]] = ()

    #: True only while :meth:`step` is calling :meth:`get_schedule_param` (torch.ao's flag, with its
    #: meaning: subclasses written for torch.ao read it to warn when called from outside ``step()``)
    _get_sp_called_within_step: bool = False

    def __init__(
        self, data_sparsifier: "BaseDataSparsifier", schedule_param: str, last_epoch: int = -1, verbose: bool = False
    ) -> None:
        from prunekit.data.base import BaseDataSparsifier

        if not isinstance(data_sparsifier, BaseDataSparsifier):
            raise TypeError(
                f"{type(self).__name__}: {type(data_sparsifier).__name__} is not a data sparsifier; pass an instance "
                f"of a BaseDataSparsifier subclass, e.g. prunekit.DataNormSparsifier(...)"
            )
        if not isinstance(schedule_param, str) or not schedule_param:
            raise TypeError(f"{type(self).__name__}: schedule_param must be a config key (a string), got {schedule_param!r}")
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, int) or last_epoch < -1:
            raise ValueError(f"{type(self).__name__}: last_epoch must be an integer >= -1, got {last_epoch!r}")
        self.data_sparsifier = data_sparsifier
        self.schedule_param = schedule_param
        self.base_param: dict[str, Any] = {}
        self.base_epoch: dict[str, int] = {}
        self.last_epoch = last_epoch
        self.verbose = bool(verbose)
        self._step_count = 0
        self._sparsifier_steps_at_start = int(getattr(data_sparsifier, "_step_count", 0))
        self._order_warned = False
        self._last_param: dict[str, Any] = {}
        self._get_sp_called_within_step = False
        self._capture_bases(epoch=0)
        self.step()

    # ------------------------------------------------------------------ the extension point
    @abc.abstractmethod
    def get_schedule_param(self) -> Mapping[str, Any]:
        """The value of ``schedule_param`` for the step ``self.last_epoch``: data name -> value.

        Called by :meth:`step` after ``last_epoch`` has advanced, with
        ``self._get_sp_called_within_step`` True (False at any other time). Names the sparsifier
        does not hold are an error; names left out keep their current value.
        """

    # ------------------------------------------------------------------ stepping
    def step(self) -> None:
        """Advance one step and write the new values into the sparsifier's configs."""
        sparsifier = self.data_sparsifier
        if self._step_count > 0 and not self._order_warned:
            if int(getattr(sparsifier, "_step_count", 0)) == self._sparsifier_steps_at_start:
                self._order_warned = True
                warnings.warn(
                    f"{type(self).__name__}.step() was called before data_sparsifier.step(), so the first "
                    f"scheduled {self.schedule_param} was never used to compute masks. Call "
                    f"data_sparsifier.step() first and data_scheduler.step() after it (e.g. once per epoch).",
                    UserWarning,
                    stacklevel=2,
                )
        self._capture_bases(epoch=max(self.last_epoch, 0))
        self._step_count += 1
        self.last_epoch += 1
        self._get_sp_called_within_step = True
        try:
            values = self.get_schedule_param()
        finally:
            self._get_sp_called_within_step = False
        if not isinstance(values, Mapping):
            raise TypeError(
                f"{type(self).__name__}.get_schedule_param() must return a mapping of data name to value, "
                f"got {type(values).__name__}"
            )
        groups = sparsifier.data_groups
        unknown = [name for name in values if name not in groups]
        if unknown:
            hints = [h for h in (suggest(str(n), list(groups)) for n in unknown) if h]
            did = f" (did you mean {', '.join(map(repr, hints))}?)" if hints else ""
            raise PruningError(
                f"{type(self).__name__}.get_schedule_param() returned values for {', '.join(map(repr, unknown))}, "
                f"which the data sparsifier does not hold{did}; return values only for names in data_sparsifier.data_groups"
            )
        for name, value in values.items():
            groups[name][self.schedule_param] = value
            if self.verbose:
                print(f"Adjusting {self.schedule_param} for group {name} to {value}")
        self._last_param = {name: config.get(self.schedule_param) for name, config in groups.items()}
        sparsifier.enable_mask_update = True

    def _capture_bases(self, epoch: int) -> None:
        """Record the current value of entries not seen before as their base, at ``epoch``."""
        for name, config in self.data_sparsifier.data_groups.items():
            if name in self.base_param:
                continue
            if self.schedule_param not in config:
                raise KeyError(
                    f"{type(self).__name__}: data {name!r} has no config key {self.schedule_param!r} "
                    f"(it has: {', '.join(sorted(config)) or 'none'}); schedule one of those keys"
                )
            value = copy.deepcopy(config[self.schedule_param])
            self.check_base(name, value)
            self.base_param[name] = value
            self.base_epoch[name] = epoch

    def check_base(self, name: str, value: Any) -> None:
        """Reject a starting value this schedule cannot work from (default: accept anything)."""

    def get_last_param(self) -> dict[str, Any]:
        """The value of ``schedule_param`` of each entry after the last :meth:`step`."""
        return dict(self._last_param)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Every attribute except the sparsifier, Python callables and transient flags: copies.

        Tensors are cloned, other values deep-copied, enum members and NumPy scalars converted
        (:mod:`prunekit.data.plain`), so the result loads with ``torch.load(..., weights_only=True)``.
        The sparsifier's own state is not included: save ``data_sparsifier.state_dict()`` too,
        and restore the sparsifier before the scheduler.
        """
        from prunekit.data.plain import to_plain

        skip = {"data_sparsifier", *self._not_state, *_TRANSIENT}
        return {k: to_plain(v) for k, v in self.__dict__.items() if k not in skip}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (the input is copied, never modified).

        Transient flags in the input (torch.ao saves ``_get_sp_called_within_step``) are ignored.
        Every problem is reported before anything changes.
        """
        from prunekit.data.plain import from_plain

        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected a mapping, got {type(state_dict).__name__}")
        bad = [k for k in state_dict if k == "data_sparsifier" or k in self._not_state or not isinstance(k, str)]
        if bad:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: {', '.join(map(repr, bad))} cannot be loaded; "
                f"pass what state_dict() returned (the sparsifier is restored with its own load_state_dict)"
            )
        loaded, problems = {}, []
        for key, value in state_dict.items():
            if key in _TRANSIENT:
                continue
            try:
                loaded[key] = from_plain(value, key)
            except ValueError as err:
                problems.append(str(err))
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        self.__dict__.update(loaded)

    # ------------------------------------------------------------------ building from a config
    @classmethod
    def from_config(
        cls, config: "DataSchedulerConfig", *, data_sparsifier: "BaseDataSparsifier | None" = None, **context: Any
    ) -> "BaseDataScheduler":
        """Build from a validated config: ``get_scheduler(config, data_sparsifier=sparsifier)``.

        The config's fields become constructor keywords; the base fields (``schedule_param``,
        ``last_epoch``, ``verbose``) are left out for constructors that do not take them, as long
        as they hold their defaults.
        """
        if data_sparsifier is None:
            raise TypeError(
                f"{cls.__name__} is a data scheduler: build it with get_scheduler(config, data_sparsifier=sparsifier)"
            )
        params = {k: v for k, v in config.model_dump().items() if k != "type"}
        signature = inspect.signature(cls.__init__)
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
        if not takes_any:
            defaults = DataSchedulerConfig.model_fields
            for key in _BASE_FIELDS:
                if key in params and key not in signature.parameters:
                    if params[key] != defaults[key].default:
                        raise TypeError(f"{cls.__name__}.__init__ takes no {key!r}; remove it from the config")
                    del params[key]
            unknown = [k for k in context if k not in signature.parameters]
            if unknown:
                raise TypeError(f"{cls.__name__}.__init__ takes no {', '.join(map(repr, unknown))}")
        return cls(data_sparsifier, **params, **context)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(schedule_param={self.schedule_param!r}, last_epoch={self.last_epoch}, "
            f"base_param={self.base_param!r})"
        )


class ClosedFormDataScheduler(BaseDataScheduler):
    """A data scheduler whose value is a pure function of the base and ``t`` (:meth:`value_at`)."""

    @abc.abstractmethod
    def value_at(self, name: str, base: Any, t: int) -> Any:
        """The value of entry ``name`` (starting from ``base``) ``t`` steps after its base."""

    def progress(self, name: str) -> int:
        """``t`` of entry ``name``: scheduler steps since its base was captured."""
        return self.last_epoch - self.base_epoch[name]

    def get_schedule_param(self) -> dict[str, Any]:
        return {
            name: self.value_at(name, self.base_param[name], self.progress(name))
            for name in self.data_sparsifier.data_groups
        }

    def check_base(self, name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"{type(self).__name__}: data {name!r} has {self.schedule_param}={value!r}; this schedule needs a number"
            )


# ---------------------------------------------------------------------------- configs
class DataSchedulerConfig(SchedulerConfig):
    """Fields every data scheduler config has."""

    schedule_param: str = Field("sparsity_level", min_length=1, description="The sparsifier config key to schedule.")
    last_epoch: int = Field(-1, ge=-1, le=MAX_STEP, description="Step to resume after (-1: start).")
    verbose: bool = Field(False, description="Print every value written.")


def _validated(model: type[DataSchedulerConfig], owner: str, **values: Any) -> Any:
    try:
        return model(**values)
    except ValidationError as err:
        raise ConfigError(problems_from_validation_error(err, prefix=(owner,), model_at=lambda _p: model)) from None


def _level_bound(config: DataSchedulerConfig, field: str) -> None:
    value = getattr(config, field)
    if config.schedule_param == "sparsity_level" and not 0.0 <= value <= 1.0:
        raise rule_error(f"{field} {value} is not a sparsity level", f"set {field} within [0, 1]")


class GammaConfig(DataSchedulerConfig):
    """``type: gamma``: ``min(threshold_sl, base · gamma^t)``."""

    type: str = "gamma"
    gamma: float = Field(..., gt=0.0, le=1e6, allow_inf_nan=False, description="Factor applied each step.")
    threshold_sl: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="Cap on the scheduled value.")

    @model_validator(mode="after")
    def _threshold_is_level(self) -> "GammaConfig":
        _level_bound(self, "threshold_sl")
        return self


class StepConfig(GammaConfig):
    """``type: step``: ``min(threshold_sl, base · gamma^floor(t / step_size))``."""

    type: str = "step"
    step_size: int = Field(..., ge=1, le=MAX_STEP, description="Steps between two multiplications.")


class LambdaConfig(DataSchedulerConfig):
    """``type: lambda``: ``base · param_lambda(t)``; the function is passed in code."""

    type: str = "lambda"


class RampConfig(DataSchedulerConfig):
    """``type: linear`` / ``agp``: from the base to ``target`` between ``start_step`` and ``end_step``."""

    type: str = "linear"
    target: float = Field(..., ge=0.0, allow_inf_nan=False, description="Value reached at end_step.")
    start_step: int = Field(0, ge=0, le=MAX_STEP, description="Step at which the ramp starts.")
    end_step: int = Field(..., ge=1, le=MAX_STEP, description="Step at which the target is reached.")

    @model_validator(mode="after")
    def _window(self) -> "RampConfig":
        _level_bound(self, "target")
        if self.end_step <= self.start_step:
            raise rule_error(
                f"end_step ({self.end_step}) must come after start_step ({self.start_step})",
                f"set end_step > {self.start_step}",
            )
        return self


class AGPConfig(RampConfig):
    """``type: agp``: ``base + (target - base) · (1 - (1 - u)³)``."""

    type: str = "agp"


# ---------------------------------------------------------------------------- built-in schedulers
@register_scheduler("gamma", config=GammaConfig)
class GammaDataScheduler(ClosedFormDataScheduler):
    """Data: multiply by gamma every step, capped at threshold_sl (torch.ao README's example)."""

    def __init__(
        self,
        data_sparsifier: "BaseDataSparsifier",
        gamma: float,
        threshold_sl: float = 1.0,
        schedule_param: str = "sparsity_level",
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        cfg = _validated(GammaConfig, type(self).__name__, gamma=gamma, threshold_sl=threshold_sl,
                         schedule_param=schedule_param, last_epoch=last_epoch, verbose=verbose)
        self.gamma: float = cfg.gamma
        self.threshold_sl: float = cfg.threshold_sl
        super().__init__(data_sparsifier, cfg.schedule_param, cfg.last_epoch, cfg.verbose)

    def check_base(self, name: str, value: Any) -> None:
        super().check_base(name, value)
        if value == 0 and self.gamma != 1.0:
            raise ValueError(
                f"{type(self).__name__}: data {name!r} starts at {self.schedule_param}=0, and 0 · gamma^t stays 0; "
                f"start from a positive value (e.g. 0.1), or ramp up from 0 with the linear or agp scheduler"
            )

    def value_at(self, name: str, base: Any, t: int) -> float:
        """``min(threshold_sl, base · gamma^t)``."""
        return min(self.threshold_sl, base * self.gamma**t)


@register_scheduler("step", config=StepConfig)
class StepDataScheduler(GammaDataScheduler):
    """Data: multiply by gamma every step_size steps, capped at threshold_sl."""

    def __init__(
        self,
        data_sparsifier: "BaseDataSparsifier",
        step_size: int,
        gamma: float,
        threshold_sl: float = 1.0,
        schedule_param: str = "sparsity_level",
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        cfg = _validated(StepConfig, type(self).__name__, step_size=step_size, gamma=gamma, threshold_sl=threshold_sl,
                         schedule_param=schedule_param, last_epoch=last_epoch, verbose=verbose)
        self.step_size: int = cfg.step_size
        super().__init__(data_sparsifier, cfg.gamma, cfg.threshold_sl, cfg.schedule_param, cfg.last_epoch, cfg.verbose)

    def value_at(self, name: str, base: Any, t: int) -> float:
        """``min(threshold_sl, base · gamma^floor(t / step_size))``."""
        return min(self.threshold_sl, base * self.gamma ** (t // self.step_size))


@register_scheduler("lambda", config=LambdaConfig)
class LambdaDataScheduler(ClosedFormDataScheduler):
    """Data: base times a Python function of the step (in code only, not from YAML)."""

    _not_state = ("param_lambda",)

    def __init__(
        self,
        data_sparsifier: "BaseDataSparsifier",
        param_lambda: Callable[[int], float] | Mapping[str, Callable[[int], float]],
        schedule_param: str = "sparsity_level",
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        if isinstance(param_lambda, Mapping):
            bad = [k for k, f in param_lambda.items() if not callable(f)]
        else:
            bad = [] if callable(param_lambda) else ["param_lambda"]
        if bad:
            raise TypeError(
                f"{type(self).__name__}: param_lambda must be a function of the step (or a mapping of data name to "
                f"one); not callable: {', '.join(map(repr, bad))}"
            )
        self.param_lambda = param_lambda
        cfg = _validated(LambdaConfig, type(self).__name__, schedule_param=schedule_param, last_epoch=last_epoch, verbose=verbose)
        super().__init__(data_sparsifier, cfg.schedule_param, cfg.last_epoch, cfg.verbose)

    @classmethod
    def from_config(
        cls, config: "DataSchedulerConfig", *, data_sparsifier: "BaseDataSparsifier | None" = None, **context: Any
    ) -> "LambdaDataScheduler":
        if "param_lambda" not in context:
            raise TypeError(
                "the lambda data scheduler needs a Python function: "
                "get_scheduler({'type': 'lambda'}, data_sparsifier=sparsifier, param_lambda=lambda t: 0.9 ** t)"
            )
        return super().from_config(config, data_sparsifier=data_sparsifier, **context)  # type: ignore[return-value]

    def _function(self, name: str) -> Callable[[int], float]:
        if not isinstance(self.param_lambda, Mapping):
            return self.param_lambda
        if name not in self.param_lambda:
            raise KeyError(f"{type(self).__name__}: param_lambda has no function for data {name!r}; add one")
        return self.param_lambda[name]

    def check_base(self, name: str, value: Any) -> None:
        super().check_base(name, value)
        self._function(name)

    def value_at(self, name: str, base: Any, t: int) -> float:
        """``base · param_lambda(t)``."""
        return base * self._function(name)(t)


class _RampDataScheduler(ClosedFormDataScheduler):
    curve: ClassVar[str] = "linear"
    config_model: ClassVar[type[RampConfig]] = RampConfig

    def __init__(
        self,
        data_sparsifier: "BaseDataSparsifier",
        target: float,
        end_step: int,
        start_step: int = 0,
        schedule_param: str = "sparsity_level",
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        cfg = _validated(self.config_model, type(self).__name__, target=target, end_step=end_step,
                         start_step=start_step, schedule_param=schedule_param, last_epoch=last_epoch, verbose=verbose)
        self.target: float = cfg.target
        self.start_step: int = cfg.start_step
        self.end_step: int = cfg.end_step
        super().__init__(data_sparsifier, cfg.schedule_param, cfg.last_epoch, cfg.verbose)

    def value_at(self, name: str, base: Any, t: int) -> float:
        u = (t - self.start_step) / (self.end_step - self.start_step)
        return decay_value(self.curve, u, float(base), self.target)


@register_scheduler("linear", config=RampConfig)
class LinearDataScheduler(_RampDataScheduler):
    """Data: straight line from the base to target between start_step and end_step."""

    curve = "linear"


@register_scheduler("agp", config=AGPConfig)
class AGPDataScheduler(_RampDataScheduler):
    """Data: cubic ramp from the base to target, fast start (Zhu & Gupta's AGP)."""

    curve = "agp"
    config_model = AGPConfig

