"""``type: block_mask``: blocks scored by the momentum of the gradient of a block mask (INC's block_mask).

INC multiplied each selected ``Linear``'s weight by a mask with one entry per block inside a
replaced ``forward`` and scored a block by ``S_b <- 0.9·S_b + |dL/dm_b|``. At ``m = 1`` (a kept
block) the chain rule gives ``dL/dm_b = sum_{i in b} w_i · dL/dw_i``, and a pruned block (``m = 0``,
its weights zero) gives 0; so prunekit computes the same score from the weights and their
gradients, with no mask in the forward pass and no module changed:

    S_b <- 0.9·S_b + |sum_{i in b} w_i·g_i|        (``reduce: sum``, the default here; ``mean`` divides by the block size)

The signed sum is what distinguishes it from ``snip_momentum`` (which adds ``|w_i·g_i|``): weights
whose contributions cancel make a block unimportant. Otherwise it is the ``basic`` type with this
criterion: events, scopes and schedules as usual. ``N:M`` patterns have no blocks to mask and are
refused, as INC refused them; ``channelx1`` and other structured blocks are the intended use.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from prunekit.config import PrunerConfig
from prunekit.pruner.criteria import Criterion
from prunekit.pruner.group import PrunerGroup
from prunekit.registry import CRITERIA, register_pruner

__all__ = ["BlockMaskConfig", "BlockMaskCriterion", "BlockMaskPruner"]


@CRITERIA.register("block_mask")
class BlockMaskCriterion(Criterion):
    """S_b <- 0.9·S_b + |sum over block b of w·g|: the momentum of a block mask's gradient (INC's block_mask)."""

    name = "block_mask"
    needs_grad = True
    accumulates = True
    momentum: ClassVar[float] = 0.9

    def score(self, weight: torch.Tensor, grad: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        """The signed products ``w·g`` (float32); the block reduction sums them, :meth:`accumulate` takes |.|."""
        w, g = weight.detach(), self._require_grad(grad).detach()
        if out is None:
            return w.float() * g.float()
        if w.dtype == out.dtype and g.dtype == out.dtype:
            return torch.mul(w, g, out=out)
        return out.copy_(w).mul_(g)

    @classmethod
    def config_problem(cls, pattern_kind: str, reduce: str, pattern: str) -> tuple[str, str] | None:
        if pattern_kind == "nm":
            return (f"block_mask masks whole blocks, and pattern {pattern} has none",
                    "use a block pattern such as 4x1 or channelx1 (or another criterion for N:M)")
        if reduce == "max":
            return ("block_mask scores a block by the sum of w·g; 'max' of signed products means nothing", "use reduce: sum (INC) or mean")
        return None

    def accumulate(self, acc: torch.Tensor | None, fresh: torch.Tensor) -> torch.Tensor:
        """Formula: S <- momentum·S + |fresh| (non-finite entries of ``fresh`` add nothing, as in snip_momentum)."""
        torch.nan_to_num_(fresh, nan=0.0, posinf=0.0, neginf=0.0).abs_()
        if acc is None:
            return fresh.clone()
        return torch.add(fresh, acc, alpha=self.momentum, out=acc)


class BlockMaskConfig(PrunerConfig):
    """``type: block_mask``: the basic pruner scored by the momentum of a block mask's gradient."""

    type: str = "block_mask"
    criterion: str = Field("block_mask", description="Always block_mask for this type.")
    reduce: Literal["mean", "sum", "max"] = Field("sum", description="sum (INC's mask gradient) or mean over a block.")
    unused_keys: ClassVar[frozenset[str]] = frozenset({"criterion"})


@register_pruner("block_mask", config=BlockMaskConfig)
class BlockMaskPruner(PrunerGroup):
    """Blocks scored by the momentum of the gradient of a block mask (INC's block_mask), without changing forward."""

    config_model = BlockMaskConfig
