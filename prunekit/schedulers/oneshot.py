"""One-shot scheduler: a single pruning event at ``start_step`` reaches the full target."""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import Field, field_validator
from pydantic_core.core_schema import ValidationInfo

from prunekit.registry import register_scheduler
from prunekit.schedulers.base import Scheduler, WeightSchedulerConfig
from prunekit.config.validation import rule_error

__all__ = ["OneshotConfig", "OneshotScheduler"]


class OneshotConfig(WeightSchedulerConfig):
    """``type: oneshot``: prune once, at ``start_step``, straight to the target."""

    type: str = "oneshot"
    frequency: int = Field(1, ge=1, le=1, description="Always 1: a one-shot schedule has a single event.")

    @field_validator("end_step")
    @classmethod
    def _single_event(cls, end: int | None, info: ValidationInfo) -> int | None:
        start = info.data.get("start_step")
        if end is not None and start is not None and end != start:
            raise rule_error(
                f"a one-shot schedule prunes once, at start_step ({start}), but end_step is {end}",
                "remove end_step (or set it equal to start_step), or use type: iterative for a gradual schedule",
            )
        return end


@register_scheduler("oneshot", config=OneshotConfig, aliases=("one_shot",))
class OneshotScheduler(Scheduler):
    """Prune once at start_step, straight to the target sparsity."""

    config_model = OneshotConfig
    single_event = True

    def update_sparsity_ratio(
        self,
        target_ratio: float,
        current_prune_step: int,
        total_prune_steps: int,
        masks: Mapping[str, Any] | None = None,
        init_ratio: float = 0.0,
    ) -> float:
        """Formula: r_k = target for every k."""
        return float(target_ratio)
