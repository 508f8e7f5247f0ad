"""A custom scheduler registered in user code: a polynomial ramp with a configurable power.

Import this module before loading ``configs/custom_scheduler.yaml``; the YAML then selects the
scheduler by name (``type: polynomial``) and its parameters are validated by ``PolynomialConfig``.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import Field

import prunekit as pk
from prunekit.schedulers import WeightSchedulerConfig


class PolynomialConfig(WeightSchedulerConfig):
    """``type: polynomial``: r = s0 + (a - s0)·(1 - (1 - u)^power)."""

    type: str = "polynomial"
    power: float = Field(3.0, gt=0.0, le=10.0, description="Exponent of the ramp; 3 is AGP.")


@pk.register_scheduler("polynomial", config=PolynomialConfig, force=True)
class PolynomialScheduler(pk.Scheduler):
    """Polynomial ramp to the target: fast start for power > 1, linear for power = 1."""

    config_model = PolynomialConfig
    config: PolynomialConfig

    def update_sparsity_ratio(
        self,
        target_ratio: float,
        current_prune_step: int,
        total_prune_steps: int,
        masks: Mapping[str, Any] | None = None,
        init_ratio: float = 0.0,
    ) -> float:
        """Formula: r_k = s0 + (a - s0)·(1 - (1 - k/T)^power), a = min(target, max_sparsity_per_op)."""
        u = min(current_prune_step, total_prune_steps) / total_prune_steps
        reachable = min(target_ratio, self.max_sparsity_per_op)
        return min(init_ratio + (reachable - init_ratio) * (1.0 - (1.0 - u) ** self.config.power), target_ratio)
