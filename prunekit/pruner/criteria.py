"""Pruning criteria: how important each weight is (higher score = kept longer).

Registered in ``CRITERIA``; a config names one with ``criterion:``. A criterion returns
element-wise float32 scores (>= 0) in the weight's layout; the pattern then reduces them per
block (``reduce``: mean by default, sum or max).

* ``magnitude``: ``|w|``
* ``gradient``: ``|g|``
* ``snip``: ``|w·g|``
* ``snip_momentum``: ``S <- 0.9·S + |w·g|`` at every optimizer step of the pruning window, kept
  at block resolution (for ``mean``/``sum`` this equals reducing the element-wise sum; for ``max``
  it accumulates each step's block maximum).

Criteria that read ``weight.grad`` (``needs_grad``) are evaluated in the optimizer-step pre-hook,
after ``backward()`` and before the step; a missing gradient is a :class:`PruningError`.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch

from prunekit.errors import PruningError
from prunekit.registry import CRITERIA

__all__ = ["Criterion", "MagnitudeCriterion", "GradientCriterion", "SnipCriterion", "SnipMomentumCriterion"]


class Criterion(abc.ABC):
    """Scores the weights of one layer; ``needs_grad`` criteria read ``weight.grad``.

    Subclasses implement :meth:`score` and are registered with ``@CRITERIA.register(name)``.

    Threads: on the CPU, :meth:`score` and :meth:`accumulate` may run on several threads at once
    (layers of an event, row ranges of a step: :mod:`prunekit.pruner.parallel`), under
    ``torch.no_grad()`` and with one torch thread each; they must not keep state between calls
    (the built-in ones are pure functions of their arguments).
    """

    #: the registered name (used in messages)
    name: ClassVar[str] = "criterion"
    needs_grad: ClassVar[bool] = False
    #: True when the score is accumulated at every optimizer step, not only computed at events
    accumulates: ClassVar[bool] = False

    @abc.abstractmethod
    def score(self, weight: torch.Tensor, grad: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Element-wise importance of ``weight`` (float32, same shape, >= 0).

        ``out``, when given, is a float32 buffer of the weight's shape to write into (no allocation).
        """

    def inputs(self, weight: torch.Tensor, grad: torch.Tensor | None) -> tuple[torch.Tensor, ...] | None:
        """The tensors whose entries are all finite exactly when every score is finite, or ``None``.

        Lets an event check finiteness with one reduction over the weight (and gradient) instead of
        a pass that computes every score; ``None`` (the default, for criteria that may create
        non-finite scores from finite inputs) makes the event scan the scores themselves.
        """
        return None

    def accumulate(self, acc: torch.Tensor | None, fresh: torch.Tensor) -> torch.Tensor:
        """Fold this step's (block-reduced) ``fresh`` scores into ``acc`` (in place when possible)."""
        return fresh

    @classmethod
    def config_problem(cls, pattern_kind: str, reduce: str, pattern: str) -> tuple[str, str] | None:
        """``(what is wrong, how to fix)`` when a group's pattern or ``reduce`` cannot go with this
        criterion, else None (checked when the config is validated)."""
        return None

    def _require_grad(self, grad: torch.Tensor | None) -> torch.Tensor:
        if grad is None:
            raise PruningError(
                f"criterion {self.name!r} needs gradients but the weight has none; run loss.backward() before "
                f"optimizer.step() (events of gradient criteria are computed just before the step), "
                f"or use criterion: magnitude"
            )
        return grad


def _abs_product(w: torch.Tensor, g: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``|w·g|`` in float32, into ``out`` when given."""
    if out is None:
        return (w.float() * g.float()).abs_()
    if w.dtype == out.dtype and g.dtype == out.dtype:
        return torch.mul(w, g, out=out).abs_()
    return out.copy_(w).mul_(g).abs_()


@CRITERIA.register("magnitude")
class MagnitudeCriterion(Criterion):
    """|w|: small weights go first; needs no gradients (the only criterion for frozen weights)."""

    name = "magnitude"

    def inputs(self, weight: torch.Tensor, grad: torch.Tensor | None) -> tuple[torch.Tensor, ...] | None:
        return (weight,)

    def score(self, weight: torch.Tensor, grad: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        if out is None:
            return weight.detach().abs().float()
        return out.copy_(weight.detach()).abs_()


@CRITERIA.register("gradient")
class GradientCriterion(Criterion):
    """|g|: weights the loss is least sensitive to go first."""

    name = "gradient"
    needs_grad = True

    def inputs(self, weight: torch.Tensor, grad: torch.Tensor | None) -> tuple[torch.Tensor, ...] | None:
        return (self._require_grad(grad),)

    def score(self, weight: torch.Tensor, grad: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        g = self._require_grad(grad).detach()
        if out is None:
            return g.abs().float()
        return out.copy_(g).abs_()


@CRITERIA.register("snip")
class SnipCriterion(Criterion):
    """|w·g| (Lee et al. 2019): first-order estimate of the loss change when a weight is removed."""

    name = "snip"
    needs_grad = True

    def inputs(self, weight: torch.Tensor, grad: torch.Tensor | None) -> tuple[torch.Tensor, ...] | None:
        return (weight, self._require_grad(grad))  # |w·g| of finite inputs is finite or +inf (kept)

    def score(self, weight: torch.Tensor, grad: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        return _abs_product(weight.detach(), self._require_grad(grad).detach(), out)


@CRITERIA.register("snip_momentum")
class SnipMomentumCriterion(Criterion):
    """S <- 0.9·S + |w·g| every optimizer step of the window: a smoothed snip score (INC's default)."""

    name = "snip_momentum"
    needs_grad = True
    accumulates = True
    momentum: ClassVar[float] = 0.9

    def score(self, weight: torch.Tensor, grad: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        return _abs_product(weight.detach(), self._require_grad(grad).detach(), out)

    def accumulate(self, acc: torch.Tensor | None, fresh: torch.Tensor) -> torch.Tensor:
        """Formula: S <- momentum·S + fresh (S starts at 0).

        Non-finite entries of ``fresh`` add nothing: a step whose gradients overflowed (an fp16 step
        that AMP's GradScaler then skips) must not poison the scores for the rest of training.
        ``fresh`` is a scratch buffer and is cleaned in place (no allocation, no host sync).
        """
        torch.nan_to_num_(fresh, nan=0.0, posinf=0.0, neginf=0.0)
        if acc is None:
            return fresh.clone()
        return torch.add(fresh, acc, alpha=self.momentum, out=acc)  # one pass over S: fresh + momentum·S
