"""Regularizers applied while a group prunes: ``REGULARIZERS`` and ``group_lasso``.

A group names one with ``regularizer: {type: group_lasso, reg_coeff: 0.1}`` (INC's form:
``reg_type: group_lasso`` with ``parameters: {reg_coeff: 0.1}``). A regularizer runs at the
optimizer steps of the group's pruning window (``start_step`` to the last event): it reads the
gradients before the step (:meth:`Regularizer.before_step`) and changes the weights after it
(:meth:`Regularizer.after_step`); the masks are applied again afterwards, so pruned weights stay 0.

**group_lasso**, as Intel Neural Compressor 3.7.1 defined it: for every block ``b`` of the group's
pattern, with ``G_b`` the block's gradient before the step,

    W_b <- W_b * max(0, 1 - reg_coeff / (||G_b||_2 + 1e-12))

after the optimizer step. Blocks whose gradients are small shrink the most, so the next events
find them. INC let the factor go negative (a block whose gradient norm is below ``reg_coeff``
had its weights' sign flipped and scaled up, up to ``-1e11`` for a zero gradient); prunekit clamps
it at 0, which zeroes such a block instead. Only block patterns (``NxM``, channels) have blocks;
an ``N:M`` pattern is refused, as INC refused it.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from pydantic import ConfigDict, Field

from prunekit.registry import REGULARIZERS
from prunekit.config.validation import StrictNumbersModel

__all__ = ["RegularizerConfig", "GroupLassoConfig", "Regularizer", "GroupLasso", "register_regularizer"]


class RegularizerConfig(StrictNumbersModel):
    """Base of every regularizer config: ``type`` names the registered regularizer."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    type: str = Field(description="Registered regularizer name (see `prunekit pruners`).")


class GroupLassoConfig(RegularizerConfig):
    """``type: group_lasso``: shrink every block by its gradient norm after each step of the window."""

    type: str = "group_lasso"
    reg_coeff: float = Field(0.0, ge=0.0, le=1e3, description="Coefficient: W_b *= max(0, 1 - reg_coeff / ||G_b||_2).")


def register_regularizer(name: str, *, config: type[RegularizerConfig] | None = None, aliases: tuple[str, ...] = (), force: bool = False) -> Any:
    """Class decorator registering a :class:`Regularizer` in ``REGULARIZERS``; returns the class."""
    return REGULARIZERS.register(name, config=config, aliases=aliases, force=force)


class Regularizer(abc.ABC):
    """Changes a group's weights around each optimizer step of its pruning window.

    Built by the group with its validated config; :meth:`before_step` runs after the step's
    gradients are masked, :meth:`after_step` right after the optimizer step (before the masks are
    applied again). Holds nothing between steps except what ``before_step`` prepares for
    ``after_step`` (so nothing to save for an exact resume).
    """

    config_model: ClassVar[type[RegularizerConfig]] = RegularizerConfig

    def __init__(self, config: RegularizerConfig) -> None:
        self.config = config

    @abc.abstractmethod
    def before_step(self, group: Any) -> None:
        """Read what the step needs (gradients) from ``group``'s layers."""

    @abc.abstractmethod
    def after_step(self, group: Any) -> None:
        """Change ``group``'s weights after the optimizer step."""


#: elements of the gradient squared at a time (a chunk of rows): the temporaries stay chunk-sized
_CHUNK = 1 << 19


def _block_square_sums(g2: torch.Tensor, pattern: Any) -> torch.Tensor:
    """``sum of g^2`` over every block of ``pattern`` (float32, the block grid), a range of rows at a time."""
    from prunekit.pruner.grids import row_ranges
    from prunekit.pruner.patterns import BlockPattern

    rows, cols = g2.shape
    r = pattern.r
    out = torch.zeros(pattern.grid_rows, pattern.grid_cols, dtype=torch.float32, device=g2.device)
    per = max(1, _CHUNK // max(cols, 1))
    if r <= per:
        per = per // r * r  # whole block rows per range
    for a, b in row_ranges(rows, r, per):
        squares = g2[a:b].float().square()
        if r <= per:
            out[a // r : -(-b // r)] = BlockPattern(b - a, cols, r, pattern.c).resolution(squares, "sum")
        else:  # part of one block row taller than a range (channel patterns): add its partial sums
            out[a // r] += BlockPattern(b - a, cols, b - a, pattern.c).resolution(squares, "sum")[0]
    return out


@register_regularizer("group_lasso", config=GroupLassoConfig)
class GroupLasso(Regularizer):
    """Group lasso on the pattern's blocks: W_b *= max(0, 1 - reg_coeff / (||G_b||_2 + 1e-12)) after each step."""

    config_model = GroupLassoConfig
    config: GroupLassoConfig
    #: the norm is never divided by anything smaller (INC's constant)
    EPS: ClassVar[float] = 1e-12

    def __init__(self, config: GroupLassoConfig) -> None:
        super().__init__(config)
        self._factors: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def before_step(self, group: Any) -> None:
        """Per layer: the block factors ``max(0, 1 - reg_coeff / (||G_b||_2 + eps))`` from this step's gradients."""
        self._factors.clear()
        coeff = float(self.config.reg_coeff)
        if coeff == 0.0:
            return
        for layer in group.layers:
            grad = layer.weight.grad
            if grad is None or grad.layout != torch.strided:
                continue
            norms = _block_square_sums(layer.layout.to_2d(grad.detach()), group.patterns[layer.name]).sqrt_()
            self._factors[layer.name] = norms.add_(self.EPS).reciprocal_().mul_(-coeff).add_(1.0).clamp_(min=0.0)

    @torch.no_grad()
    def after_step(self, group: Any) -> None:
        """Scale every block of every layer by its factor (in place; conv layouts through their 2-D view)."""
        for layer in group.layers:
            factor = self._factors.get(layer.name)
            if factor is None:
                continue
            pattern = group.patterns[layer.name]
            weight = layer.weight.detach()
            view = layer.layout.to_2d(weight)
            in_place = layer.layout.kind in ("linear", "transposed")
            if not in_place:
                view = view.clone()
            for er, ec, gr, gc, br, bc in pattern._parts():
                region = view[er, ec]
                blocks = region.unflatten(0, (-1, br)).unflatten(2, (-1, bc))
                blocks.mul_(factor[gr, gc][:, None, :, None].to(weight.dtype))
            if not in_place:
                weight.copy_(layer.layout.from_2d(view))
        self._factors.clear()
