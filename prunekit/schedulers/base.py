"""The weight-pruning scheduler base: config models, the INC-compatible event grid, state.

A scheduler answers two questions from its validated config:

* **which optimizer steps are pruning events.** With ``s = start_step``, ``e = end_step`` and
  ``f = frequency``: events at ``g_j = s + j·f`` for ``j = 0..T`` with ``T = floor((e - s) / f)``;
  when ``T = 0`` (one-shot, or ``e - s < f``) the single event at ``s`` is asked for step 1 of 1, so
  it reaches the full target.
* **what ratio each event targets**: :meth:`Scheduler.update_sparsity_ratio` (INC's signature),
  the extension point of every subclass.

``step()`` is the thin stateful part (in the style of ``torch.optim.lr_scheduler``): it records
which events have fired, so ``state_dict()``/``load_state_dict()`` resume a schedule exactly.

Third-party code is checked where it meets prunekit: a config model's defaults are validated and
the window invariants hold however a subclass redeclares the fields; a validator that crashes is
a :class:`~prunekit.errors.ConfigError` at the scheduler key; a ratio outside [0, 1] (or not a
finite number) from ``update_sparsity_ratio`` is a :class:`~prunekit.errors.PruningError` naming
the scheduler, the step and the value, raised before the step is recorded.
"""

from __future__ import annotations

import abc
import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails
from pydantic_core.core_schema import ValidationInfo

from prunekit.errors import ConfigError, ConfigProblem, PruningError, RegistryError
from prunekit.registry import SCHEDULERS
from prunekit.config.validation import StrictNumbersModel, problems_from_validation_error, rule_error, short_repr, short_text

__all__ = [
    "MAX_STEP",
    "SchedulerConfig",
    "WeightSchedulerConfig",
    "PruningEvent",
    "Scheduler",
    "validate_scheduler_config",
    "scheduler_config_model",
    "window_problems",
    "crashed_validator_message",
]

#: the largest step number a config may name (bounds every step field)
MAX_STEP = 10**9


class SchedulerConfig(StrictNumbersModel):
    """Base of every scheduler config: ``type`` names the registered scheduler.

    Defaults are validated like given values (a subclass's invalid default is an error wherever
    the scheduler is named), and a boolean is never taken for a number (see
    :class:`~prunekit.config.validation.StrictNumbersModel`).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)

    type: str = Field(description="Registered scheduler name (see `prunekit schedulers`).")


class WeightSchedulerConfig(SchedulerConfig):
    """A weight-pruning schedule's window: events at ``start_step + j·frequency`` up to ``end_step``."""

    start_step: int = Field(0, ge=0, le=MAX_STEP, description="Optimizer step of the first pruning event.")
    end_step: int | None = Field(
        None, ge=0, le=MAX_STEP, description="Last step an event may fall on (defaults to start_step)."
    )
    frequency: int = Field(1, ge=1, le=MAX_STEP, description="Optimizer steps between two pruning events.")

    @field_validator("end_step")
    @classmethod
    def _end_not_before_start(cls, end: int | None, info: ValidationInfo) -> int | None:
        start = info.data.get("start_step")
        if end is not None and start is not None and end < start:
            raise rule_error(
                f"end_step ({end}) is before start_step ({start})",
                f"set end_step >= {start}, or lower start_step",
            )
        return end

    @model_validator(mode="after")
    def _window_invariants(self) -> "WeightSchedulerConfig":
        """0 <= start_step <= end_step <= MAX_STEP and 1 <= frequency <= MAX_STEP, even when a
        subclass redeclares these fields without the bounds declared here."""
        problems = window_problems(self)
        if problems:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [InitErrorDetails(type=rule_error(what, fix), loc=(key,), input=value) for key, what, fix, value in problems],
            )
        return self

    @property
    def last_step(self) -> int:
        """``end_step``, or ``start_step`` when it was left out."""
        return self.start_step if self.end_step is None else self.end_step


def window_problems(config: BaseModel) -> list[tuple[str, str, str, Any]]:
    """``(key, what, fix, value)`` for each broken window invariant of a weight scheduler config.

    Checked on every validated config and on config instances handed to a scheduler (which may
    have been built with ``model_construct``), so no schedule ever divides by a zero frequency.
    """
    out: list[tuple[str, str, str, Any]] = []
    given = config.model_fields_set

    def integer(key: str, low: int, optional: bool = False) -> bool:
        value = getattr(config, key, None)
        if value is None and optional:
            return False
        note = "" if key in given else f" (the default of {type(config).__name__})"
        if isinstance(value, bool) or not isinstance(value, int):
            out.append((key, f"expected an integer, got {short_repr(value)}{note}", f"write an integer here, e.g. {key}: {low}", value))
            return False
        if value < low:
            out.append((key, f"must be >= {low}, got {value}{note}", f"use a value of at least {low}", value))
            return False
        if value > MAX_STEP:
            out.append((key, f"must be <= {MAX_STEP}, got {value}{note}", f"use a value of at most {MAX_STEP}", value))
            return False
        return True

    start_ok = integer("start_step", 0)
    integer("frequency", 1)
    if integer("end_step", 0, optional=True) and start_ok:
        start, end = getattr(config, "start_step"), getattr(config, "end_step")
        if end < start:
            out.append(("end_step", f"end_step ({end}) is before start_step ({start})", f"set end_step >= {start}, or lower start_step", end))
    return out


def crashed_validator_message(model: type[BaseModel], type_name: Any, err: BaseException) -> tuple[str, str]:
    """``(what, fix)`` when the config model of scheduler ``type_name`` raised ``err`` while validating."""
    return (
        f"the config model {model.__qualname__} of scheduler {short_repr(type_name)} crashed while validating: "
        f"{type(err).__name__}: {short_text(str(err), 200)}",
        f"fix {model.__module__}.{model.__qualname__} (a validator must raise ValueError with a message), "
        f"or change the values it fails on",
    )


@dataclass(frozen=True)
class PruningEvent:
    """One pruning event: at optimizer step ``step``, prune step ``index`` of ``total``."""

    step: int
    index: int
    total: int


def scheduler_config_model(type_name: str) -> type[SchedulerConfig]:
    """The config model registered for scheduler ``type_name`` (RegistryError when unknown)."""
    model = SCHEDULERS.config_of(type_name)
    if model is None:
        raise RegistryError(f"scheduler {type_name!r} was registered without a config model; pass config=...")
    return model


def validate_scheduler_config(config: Mapping[str, Any] | BaseModel, *, path: str = "scheduler") -> SchedulerConfig:
    """Validate ``config`` with the model its ``type`` registered; ConfigError lists every problem."""
    prefix = tuple(path.split("."))
    if isinstance(config, SchedulerConfig):
        model = scheduler_config_model(config.type)
        if isinstance(config, model):
            problems = window_problems(config) if isinstance(config, WeightSchedulerConfig) else []
            if problems:
                raise ConfigError([ConfigProblem(f"{path}.{key}", what, fix) for key, what, fix, _ in problems])
            return config
        config = config.model_dump()
    elif isinstance(config, BaseModel):
        config = config.model_dump()
    if not isinstance(config, Mapping):
        raise ConfigError([ConfigProblem(path, f"expected a mapping, got {short_repr(config)}", "write e.g. {type: oneshot}")])
    type_name = config.get("type")
    if type_name is None:
        raise ConfigError([ConfigProblem(f"{path}.type", "the scheduler has no 'type'", f"add one of: {', '.join(SCHEDULERS.names())}")])
    if type_name not in SCHEDULERS:
        raise ConfigError([ConfigProblem(f"{path}.type", f"unknown scheduler {short_repr(type_name)}", SCHEDULERS.unknown_hint(type_name))])
    model = scheduler_config_model(type_name)
    try:
        return model.model_validate(dict(config))
    except ValidationError as err:
        raise ConfigError(problems_from_validation_error(err, prefix=prefix, model_at=lambda _p: model)) from None
    except Exception as err:  # a third-party validator that crashed: located, never a traceback
        what, fix = crashed_validator_message(model, type_name, err)
        raise ConfigError([ConfigProblem(path, what, fix)]) from err


class Scheduler(abc.ABC):
    """Weight-pruning scheduler: the event grid, a closed-form target, and the stateful ``step``.

    Subclasses implement :meth:`update_sparsity_ratio` and declare ``config_model`` (a subclass
    of :class:`WeightSchedulerConfig`); they are registered with ``@register_scheduler``.
    ``max_sparsity_per_op`` caps the ratio a curve aims for: ``a = min(target, max_sparsity_per_op)``.
    """

    config_model: ClassVar[type[WeightSchedulerConfig]] = WeightSchedulerConfig
    #: True when every event aims for the full target at once (no gradual curve)
    single_event: ClassVar[bool] = False

    def __init__(
        self,
        config: WeightSchedulerConfig | Mapping[str, Any] | None = None,
        *,
        max_sparsity_per_op: float = 1.0,
        **params: Any,
    ) -> None:
        if config is None:
            config = {"type": self._registered_name(), **params}
        elif params:
            raise TypeError(f"{type(self).__name__}: pass either a config or keyword parameters, not both")
        if isinstance(config, Mapping) and "type" not in config:
            config = {"type": self._registered_name(), **config}
        validated = validate_scheduler_config(config)
        if not isinstance(validated, WeightSchedulerConfig):
            raise TypeError(f"{type(self).__name__} needs a WeightSchedulerConfig, got {type(validated).__name__}")
        if (
            isinstance(max_sparsity_per_op, bool)
            or not isinstance(max_sparsity_per_op, numbers.Real)
            or not 0.0 <= max_sparsity_per_op <= 1.0
        ):
            kind = "a boolean " if isinstance(max_sparsity_per_op, bool) else ""
            raise ConfigError(
                [
                    ConfigProblem(
                        "max_sparsity_per_op",
                        f"must be a number within [0, 1], got {kind}{short_repr(max_sparsity_per_op)}",
                        "pass a number, e.g. max_sparsity_per_op=0.98",
                    )
                ]
            )
        self.config: WeightSchedulerConfig = validated
        self.max_sparsity_per_op = float(max_sparsity_per_op)
        self.last_step: int | None = None
        self.last_ratio: float | None = None
        self.num_events = 0

    @classmethod
    def from_config(cls, config: WeightSchedulerConfig, **context: Any) -> "Scheduler":
        """Build from a validated config; ``context`` may hold ``max_sparsity_per_op``."""
        return cls(config, **context)

    @classmethod
    def _registered_name(cls) -> str:
        for entry in SCHEDULERS.entries():
            if entry.obj is cls:
                return entry.name
        raise RegistryError(f"{cls.__name__} is not registered; decorate it with @register_scheduler(name)")

    # ------------------------------------------------------------------ the extension point
    @abc.abstractmethod
    def update_sparsity_ratio(
        self,
        target_ratio: float,
        current_prune_step: int,
        total_prune_steps: int,
        masks: Mapping[str, Any] | None = None,
        init_ratio: float = 0.0,
    ) -> float:
        """The sparsity ratio to reach at prune step ``current_prune_step`` of ``total_prune_steps``.

        ``masks`` (layer name -> mask) is passed for schedulers that adapt to the current state;
        ``init_ratio`` is the sparsity at prune step 0.
        """

    # ------------------------------------------------------------------ the event grid
    @property
    def start_step(self) -> int:
        return self.config.start_step

    @property
    def end_step(self) -> int:
        return self.config.last_step

    @property
    def total_prune_steps(self) -> int:
        """``T``: the index of the last event (1 when there is a single event)."""
        if self.single_event:
            return 1
        return max((self.end_step - self.start_step) // self.config.frequency, 1)

    @property
    def has_single_event(self) -> bool:
        return self.single_event or (self.end_step - self.start_step) // self.config.frequency == 0

    def events(self) -> tuple[PruningEvent, ...]:
        """Every pruning event of the schedule, in order."""
        total = self.total_prune_steps
        if self.has_single_event:
            return (PruningEvent(self.start_step, 1, 1),)
        f = self.config.frequency
        return tuple(PruningEvent(self.start_step + j * f, j, total) for j in range(total + 1))

    @property
    def last_event_step(self) -> int:
        """The optimizer step of the final event (the target is in force from then on)."""
        return self.events()[-1].step

    def event_at(self, step: int) -> PruningEvent | None:
        """The event at optimizer step ``step``, or None (O(1))."""
        s = self.start_step
        if self.has_single_event:
            return PruningEvent(s, 1, 1) if step == s else None
        f = self.config.frequency
        offset = step - s
        if offset < 0 or offset % f:
            return None
        index = offset // f
        return PruningEvent(step, index, self.total_prune_steps) if index <= self.total_prune_steps else None

    def ratio_at_event(
        self, event: PruningEvent, target_ratio: float, masks: Mapping[str, Any] | None = None, init_ratio: float = 0.0
    ) -> float:
        """The ratio event ``event`` aims for: :meth:`update_sparsity_ratio`, checked.

        Every ratio passes here (``step``, ``target_at``, ``prunekit plan``): a value that is not a
        finite number within [0, 1] raises :class:`PruningError` naming the scheduler (registered
        name and class), the event and the value.
        """
        value = self.update_sparsity_ratio(target_ratio, event.index, event.total, masks, init_ratio)
        problem = None
        ratio = math.nan
        if value is None or isinstance(value, (bool, str, bytes)):
            problem = "is not a number"
        else:
            try:
                ratio = float(value)
            except (TypeError, ValueError, RuntimeError):
                problem = "is not a number"
            else:
                if not math.isfinite(ratio):
                    problem = "is not a finite number"
                elif not 0.0 <= ratio <= 1.0:
                    problem = "lies outside [0, 1]"
        if problem is None:
            return ratio
        cls = type(self)
        raise PruningError(
            f"scheduler {self.config.type!r} ({cls.__module__}.{cls.__qualname__}) returned {short_repr(value)} from "
            f"update_sparsity_ratio at prune step {event.index} of {event.total} (optimizer step {event.step}, "
            f"target {target_ratio}): the value {problem}; a sparsity ratio must be a finite number within [0, 1]: "
            f"fix {cls.__qualname__}.update_sparsity_ratio"
        )

    def target_at(self, step: int, target_ratio: float, init_ratio: float = 0.0) -> float:
        """Closed form: the ratio in force once optimizer step ``step`` has been taken.

        ``init_ratio`` before the first event, the last event's ratio after the schedule.
        """
        events = self.events()
        if step < events[0].step:
            return float(init_ratio)
        if step >= events[-1].step:
            return self.ratio_at_event(events[-1], target_ratio, None, init_ratio)
        if self.has_single_event:
            return self.ratio_at_event(events[0], target_ratio, None, init_ratio)
        index = (step - self.start_step) // self.config.frequency
        return self.ratio_at_event(events[index], target_ratio, None, init_ratio)

    def step(
        self, global_step: int, target_ratio: float, masks: Mapping[str, Any] | None = None, init_ratio: float = 0.0
    ) -> float | None:
        """Record the event at ``global_step`` (if any) and return its ratio; None between events.

        Steps must increase: asking twice for the same step is a bug in the caller and raises.
        """
        if self.last_step is not None and global_step <= self.last_step:
            raise PruningError(
                f"{type(self).__name__}.step({global_step}) after step {self.last_step}: steps must increase; "
                f"call step() once per optimizer step"
            )
        event = self.event_at(global_step)
        if event is None:
            return None
        ratio = self.ratio_at_event(event, target_ratio, masks, init_ratio)
        self.last_step, self.last_ratio = global_step, ratio
        self.num_events += 1
        return ratio

    def is_done(self, global_step: int) -> bool:
        """True once every event has fired (``global_step`` past the last event step)."""
        return global_step > self.last_event_step

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The config and which events have fired: plain JSON-like values (an Enum field of a
        custom config is saved as its value), so the state loads with ``torch.load(weights_only=True)``."""
        return {
            "config": self.config.model_dump(mode="json"),
            "max_sparsity_per_op": self.max_sparsity_per_op,
            "last_step": self.last_step,
            "last_ratio": self.last_ratio,
            "num_events": self.num_events,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; the schedule's config must be the same.

        The configs are compared in the same form: the saved one is validated by this scheduler's
        config model and both are dumped as JSON-like values.
        """
        saved = state_dict.get("config")
        mine = self.config.model_dump(mode="json")
        if saved is not None:
            saved = self._comparable(saved)
        if saved is not None and saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            details = ", ".join(f"{k}: saved {saved.get(k)!r}, now {mine.get(k)!r}" for k in diff)
            raise PruningError(
                f"{type(self).__name__}.load_state_dict: the saved schedule differs ({details}); "
                f"resume with the config the state was saved with"
            )
        self.last_step = state_dict.get("last_step")
        last_ratio = state_dict.get("last_ratio")
        self.last_ratio = None if last_ratio is None else float(last_ratio)
        self.num_events = int(state_dict.get("num_events", 0))

    def _comparable(self, saved: Any) -> dict[str, Any]:
        if not isinstance(saved, Mapping):
            return {"config": saved}
        try:
            return type(self.config).model_validate(dict(saved)).model_dump(mode="json")
        except Exception:  # another schedule altogether: compare as saved
            return dict(saved)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items() if k != "type")
        return f"{type(self).__name__}({params})"


