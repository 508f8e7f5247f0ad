"""Iterative (gradual) scheduler: from ``init_sparsity`` to the target along a decay curve.

At prune step ``k`` of ``T`` (``u = k / T``) the ratio is ``curve(u, s0, a)`` with
``a = min(target, max_sparsity_per_op)``, then ``min(r, target)``. Curves: see
:mod:`prunekit.schedulers.curves`. Step 0 returns ``s0``: nothing is pruned at ``start_step``.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import Field, field_validator

from prunekit.errors import PruningError
from prunekit.registry import register_scheduler
from prunekit.schedulers.base import Scheduler, WeightSchedulerConfig
from prunekit.schedulers.curves import AMBIGUOUS_CURVES, AMBIGUOUS_CURVES_FIX, DECAY_CURVES, decay_value
from prunekit.registry import suggest
from prunekit.config.validation import rule_error, short_repr

__all__ = ["IterativeConfig", "IterativeScheduler"]


class IterativeConfig(WeightSchedulerConfig):
    """``type: iterative``: events every ``frequency`` steps from ``start_step`` to ``end_step``."""

    type: str = "iterative"
    decay: str = Field("exp", description="Decay curve: exp, cos, cube, linear or agp.")
    init_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="Sparsity ratio at prune step 0 (s0).")

    @field_validator("decay")
    @classmethod
    def _known_curve(cls, name: str) -> str:
        if name in AMBIGUOUS_CURVES:
            raise rule_error(AMBIGUOUS_CURVES[name], AMBIGUOUS_CURVES_FIX[name])
        if name not in DECAY_CURVES:
            hint = suggest(name, DECAY_CURVES.names())
            did = f"did you mean '{hint}'? " if hint else ""
            raise rule_error(f"unknown decay curve {short_repr(name)}", f"{did}use one of {', '.join(DECAY_CURVES.names())}")
        return name


@register_scheduler("iterative", config=IterativeConfig, aliases=("gradual",))
class IterativeScheduler(Scheduler):
    """Gradual pruning from init_sparsity to the target along a decay curve (exp, cos, cube, linear, agp)."""

    config_model = IterativeConfig
    config: IterativeConfig

    def update_sparsity_ratio(
        self,
        target_ratio: float,
        current_prune_step: int,
        total_prune_steps: int,
        masks: Mapping[str, Any] | None = None,
        init_ratio: float | None = 0.0,
    ) -> float:
        """Formula: r_k = min(curve(k / T, s0, min(target, max_sparsity_per_op)), target).

        ``s0`` is ``init_ratio`` when given (non-zero), else the config's ``init_sparsity``; ``k``
        beyond ``T`` stays at the final ratio.
        """
        if total_prune_steps < 1:
            raise PruningError(f"total_prune_steps must be >= 1, got {total_prune_steps}")
        if current_prune_step < 0:
            raise PruningError(f"current_prune_step must be >= 0, got {current_prune_step}")
        s0 = float(init_ratio) if init_ratio else self.config.init_sparsity
        reachable = min(float(target_ratio), self.max_sparsity_per_op)
        u = min(current_prune_step, total_prune_steps) / total_prune_steps
        ratio = decay_value(self.config.decay, u, s0, reachable)
        return min(ratio, float(target_ratio))
