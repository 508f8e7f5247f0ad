"""``type: pattern_lock``: fine-tune a sparse model keeping exactly its zeros.

At ``start_step`` (default 0: the first optimizer step) every weight of the selected layers that
is exactly zero becomes pruned, whatever its neighbours: the existing zero pattern (unstructured,
``4x1`` blocks, ``2:4``, channels, or none of them) is kept exactly, element by element, and
nothing else is ever pruned. From then on the pruned gradients and optimizer state are zeroed, so
the zeros stay zero under any optimizer, and ``report()`` shows the locked sparsity.

INC's version derived a block-level mask from the pattern instead: with ``N:M`` a group was kept
only when it had more than N non-zeros, so a model that already was exactly 2:4-sparse became 100%
zero after one step; with ``4x1`` only blocks whose (signed) sum was 0 were locked, so zeros in
partly zero blocks grew back. prunekit has no pattern key for this type: the zeros are the pattern.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator

from prunekit.config import PrunerConfig
from prunekit.pruner.group import PrunerGroup, PruningRecord
from prunekit.pruner.masks import apply_mask_, mask_optimizer_state_
from prunekit.registry import register_pruner
from prunekit.schedulers.base import PruningEvent
from prunekit.config.validation import rule_error

__all__ = ["PatternLockConfig", "PatternLockPruner"]


class PatternLockConfig(PrunerConfig):
    """``type: pattern_lock``: keep exactly the zeros the weights have at ``scheduler.start_step``."""

    type: str = "pattern_lock"
    target_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="Not used: the sparsity is the weights' own.")
    unused_keys: ClassVar[frozenset[str]] = frozenset(
        {"target_sparsity", "pattern", "criterion", "reduce", "scope", "min_sparsity_per_op", "max_sparsity_per_op", "lock_init_sparsity", "regularizer"}
    )

    @model_validator(mode="after")
    def _one_capture(self) -> "PatternLockConfig":
        sched = self.scheduler
        if sched.type != "oneshot" and sched.last_step != sched.start_step:
            raise rule_error(
                f"pattern_lock captures the zeros once, at scheduler.start_step; a {sched.type!r} schedule to "
                f"step {sched.last_step} has no meaning here",
                "write scheduler: {type: oneshot, start_step: <step>} (or leave the scheduler out: step 0)",
            )
        return self


@register_pruner("pattern_lock", config=PatternLockConfig)
class PatternLockPruner(PrunerGroup):
    """Keep exactly the zeros the weights have (fine-tune a sparse model without losing or adding zeros)."""

    config_model = PatternLockConfig

    @property
    def pattern_label(self) -> str:
        return "lock"

    @property
    def final_target(self) -> float:
        return self.ratio

    @torch.no_grad()
    def _prune(
        self, step: int, event: PruningEvent, ratio: float, optimizers: list[torch.optim.Optimizer], sync: bool, apply: bool = True
    ) -> PruningRecord:
        self.ratio = self.lock_zeros(whole_units=False)  # identical on every rank: the weights are
        for layer in self.layers:
            mask = self.mask8[layer.name]
            apply_mask_(layer.weight, mask)
            mask_optimizer_state_(optimizers, layer.weight, mask)
        self._floored_at = None
        layers = {name: 1.0 - int(torch.count_nonzero(m)) / m.numel() for name, m in self.mask8.items()}
        return PruningRecord(step, self.name, event.index, event.total, self.ratio, self.ratio, layers)

    def extra_state(self) -> dict[str, Any]:
        return {}
