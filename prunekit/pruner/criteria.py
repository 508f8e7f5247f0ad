"""Pruning criteria: how important each weight is (higher score = kept longer).

Registered in ``CRITERIA``; a config names one with ``criterion:``.

* ``magnitude``: |w|
* ``gradient``: |g|
* ``snip``: |w·g|
* ``snip_momentum``: S <- 0.9·S + |w·g| at every optimizer step
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch

from prunekit.errors import PruningError
from prunekit.registry import CRITERIA

__all__ = ["Criterion", "MagnitudeCriterion", "GradientCriterion", "SnipCriterion", "SnipMomentumCriterion"]


class Criterion(abc.ABC):
    """Scores the weights of one layer; ``needs_grad`` criteria read ``weight.grad``."""

    needs_grad: ClassVar[bool] = False
    #: True when the score is accumulated at every optimizer step, not only at events
    accumulates: ClassVar[bool] = False

    @abc.abstractmethod
    def score(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        """Element-wise importance of ``weight`` (float32, same shape)."""

    def _require_grad(self, name: str, grad: torch.Tensor | None) -> torch.Tensor:
        if grad is None:
            raise PruningError(
                f"criterion {name!r} needs gradients but the weight has none; run loss.backward() before "
                f"the pruning event, or use criterion: magnitude"
            )
        return grad


@CRITERIA.register("magnitude")
class MagnitudeCriterion(Criterion):
    """|w|: small weights go first; needs no gradients."""

    def score(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        return weight.detach().abs().float()


@CRITERIA.register("gradient")
class GradientCriterion(Criterion):
    """|g|: weights the loss is least sensitive to go first."""

    needs_grad = True

    def score(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        return self._require_grad("gradient", grad).detach().abs().float()


@CRITERIA.register("snip")
class SnipCriterion(Criterion):
    """|w·g| (Lee et al. 2019): first-order estimate of the loss change when a weight is removed."""

    needs_grad = True

    def score(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        g = self._require_grad("snip", grad)
        return (weight.detach().float() * g.detach().float()).abs()


@CRITERIA.register("snip_momentum")
class SnipMomentumCriterion(Criterion):
    """S <- 0.9·S + |w·g| every optimizer step: a smoothed snip score (INC's default)."""

    needs_grad = True
    accumulates = True
    momentum: ClassVar[float] = 0.9

    def score(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        g = self._require_grad("snip_momentum", grad)
        return (weight.detach().float() * g.detach().float()).abs()
