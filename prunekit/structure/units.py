"""Coupled structures: units (attention heads, FFN channels, conv filters) that span several tensors.

A :class:`UnitGroup` has ``units`` units; each :class:`Member` tensor gives unit ``u`` the index range
``offset + u·size ... offset + (u+1)·size`` along one dimension. Members have a role:

* ``produce``: the output side of the layers that compute the unit (rows of q/k/v, of an FFN's up and
  gate projections, a conv's output filters, and their biases);
* ``consume``: the input side of the layer that reads it (columns of the attention output projection,
  of an FFN's down projection, the input channels of the next conv). When a unit's consume slices are
  zero, the unit contributes exactly nothing, so removing it (:mod:`prunekit.structure.slim`) leaves
  the model's outputs unchanged;
* ``norm``: per-channel parameters and buffers between the two (a BatchNorm's weight, bias, running
  statistics), removed with the unit.

``attributes`` are module attributes that count units (``num_attention_heads``, ``split_size``...),
updated when units are removed: ``{module name: {attribute: value per unit}}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

__all__ = ["Member", "UnitGroup"]

Role = Literal["produce", "consume", "norm"]


@dataclass(frozen=True)
class Member:
    """One tensor of a unit group: ``module.<param>`` indexed along ``dim`` (see the module docstring)."""

    module: str
    param: str
    dim: int
    size: int
    role: Role
    offset: int = 0

    def indices(self, unit: int) -> range:
        start = self.offset + unit * self.size
        return range(start, start + self.size)

    def tensor(self, model: nn.Module) -> torch.Tensor | None:
        """The member's live tensor (a Parameter or a buffer), or None when the module has none (no bias)."""
        module = model.get_submodule(self.module)
        return getattr(module, self.param, None)

    def unit_view(self, tensor: torch.Tensor, units: int) -> torch.Tensor:
        """``tensor`` with ``dim`` split as ``[units, size]`` over this member's range: a view ``[units, size, rest]``
        with every other dimension flattened into ``rest``."""
        moved = tensor.movedim(self.dim, 0)
        part = moved.narrow(0, self.offset, units * self.size)
        return part.reshape(units, self.size, -1)


@dataclass
class UnitGroup:
    """Units that must be pruned and removed together (see the module docstring)."""

    name: str
    kind: Literal["head", "channel"]
    units: int
    members: list[Member]
    attributes: dict[str, dict[str, int]] = field(default_factory=dict)
    #: the modules a user may name to select the whole group (an attention or MLP module)
    owners: tuple[str, ...] = ()

    @property
    def weight_members(self) -> list[Member]:
        """Members that are weight matrices of layers (masked for the whole training)."""
        return [m for m in self.members if m.role != "norm" and m.param in ("weight", "in_proj_weight")]

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys(m.module for m in self.members))

    def unit_numel(self, model: nn.Module) -> int:
        """Weights of the weight members one unit spans."""
        total = 0
        for member in self.weight_members:
            tensor = member.tensor(model)
            total += member.size * (tensor.numel() // tensor.shape[member.dim])
        return total

    def consumed_zero(self, model: nn.Module) -> torch.Tensor:
        """Bool ``[units]``: True where every consume slice of the unit is exactly zero (it contributes nothing)."""
        zero = torch.ones(self.units, dtype=torch.bool)
        for member in self.members:
            if member.role != "consume":
                continue
            tensor = member.tensor(model)
            view = member.unit_view(tensor.detach(), self.units)
            zero &= (view == 0).all(2).all(1).cpu()
        return zero
