"""Pruning coupled units (``pattern: head`` / ``pattern: channel``) during training.

A group's units are the heads or channels of the structures it selects (:func:`select_units`). Each
unit's score is its members' element scores (any criterion: magnitude, gradient, snip,
snip_momentum) reduced over the unit's weights (``reduce``: ``mean`` by default, so units of
different sizes compare in global scope; ``sum``; ``max``); ``snip_momentum`` accumulates those unit
scores step by step (``S_u <- 0.9·S_u + score_u``).

At an event of ratio ``r``:

* local scope: each structure prunes ``round(r · units)`` units (at most ``max_sparsity_per_op`` of
  them, and never its last unit), lowest scores first;
* global scope: units of every structure are taken lowest score first until the pruned weights
  reach ``r`` of the group's weights (each structure between ``min_sparsity_per_op`` and
  ``max_sparsity_per_op``, never its last unit).

Pruned units stay pruned. A unit is pruned by zeroing its slices of every member: the weight
matrices keep an int8 mask for the rest of training (gradients and optimizer state masked as for
any pattern), biases and norm parameters are zeroed at the event. Sparsity is element-wise over the
member weight matrices, like every other pattern.

Unit scores are summed in float64 (per index of the member's unit dimension, then per unit) and
rounded to float32. Under FSDP2 each rank sums the rows it holds (a head's rows of ``in_proj`` may
lie on several ranks; the columns of an output projection on every rank), the partial sums are
added over the ranks (one all-reduce per step or event), and every rank then holds the same unit
scores and makes the same choice; each masks its own rows. (Partial float64 sums added in another
order can differ in the last float64 bit from one process's; after rounding to float32 the scores
were identical in every test.)
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch
from torch import nn

from prunekit.config import PrunerConfig
from prunekit.errors import PruningError
from prunekit.pruner.group import PrunerGroup, PruningRecord, _short
from prunekit.pruner.masks import apply_mask_, mask_optimizer_state_
from prunekit.pruner.selection import Layer, Layout, _layout_of, _type_matches
from prunekit.pruner.sharding import global_counts, is_dtensor, local_tensor, row_shard
from prunekit.schedulers.base import PruningEvent
from prunekit.structure.discover import declared_units, discover
from prunekit.structure.units import Member, UnitGroup

__all__ = ["StructuredPruner", "select_units"]


def select_units(model: nn.Module, config: PrunerConfig) -> list[UnitGroup]:
    """The unit groups of ``kind = config.pattern`` that the group's selectors pick.

    A structure is picked when one of its modules (an owner such as the attention or MLP module, or a
    member layer of ``op_types``) matches ``op_names`` (every structure when ``op_names`` is empty)
    and none matches ``excluded_op_names``. Raises :class:`PruningError` when a named layer belongs
    to no structure of that kind (saying why, for convs), when only part of a structure's layers is
    named, or when nothing is picked.
    """
    kind = config.pattern
    group = config.name or "pruner"
    found, reasons = discover(model, kind)
    found += declared_units(model, config.units, f"pruner {group!r}")
    names = [re.compile(p) for p in config.op_names]
    excluded = [re.compile(p) for p in config.excluded_op_names]
    modules = dict(model.named_modules())

    def typed(name: str) -> bool:
        return _type_matches(modules[name], config.op_types)

    picked: list[UnitGroup] = []
    covered: set[str] = set()
    for unit_group in found:
        layers = list(dict.fromkeys(m.module for m in unit_group.weight_members))
        # a structure is named by its owner or its output-side layers (its input-side layer may
        # produce another structure: the middle conv of a chain)
        produce = list(dict.fromkeys(m.module for m in unit_group.weight_members if m.role == "produce"))
        candidates = [*unit_group.owners, *layers]
        if any(p.search(n) for p in excluded for n in candidates):
            continue
        if not any(typed(n) for n in layers) and not any(typed(n) for n in unit_group.owners):
            continue
        if names:
            owner_named = any(p.search(n) for p in names for n in unit_group.owners)
            named_layers = [n for n in produce if any(p.search(n) for p in names)]
            if not owner_named and not named_layers:
                continue
            if not owner_named and len(named_layers) < len(produce):
                missing = [n for n in produce if n not in named_layers]
                raise PruningError(
                    f"pruner {group!r}: pattern {kind} prunes {', '.join(layers)} together, but op_names selects only "
                    f"{', '.join(named_layers)}; select {unit_group.owners[0]!r} (the whole structure) or add {', '.join(missing)}"
                )
        picked.append(unit_group)
        covered.update(layers)
    if names:
        strays = [n for n, m in modules.items() if n and n not in covered and typed(n) and isinstance(getattr(m, "weight", None), nn.Parameter)
                  and getattr(m, "weight").dim() >= 2 and any(p.search(n) for p in names) and not any(p.search(n) for p in excluded)]
        strays = [n for n in strays if not any(n.startswith(c + ".") for c in covered)]
        if strays:
            why = "; ".join(f"{n}: {reasons[n]}" for n in strays if n in reasons)
            raise PruningError(
                f"pruner {group!r}: op_names selects {', '.join(strays[:6])}{' ...' if len(strays) > 6 else ''}, which belong to no "
                f"{kind} structure prunekit can prune together{' (' + why + ')' if why else ''}; narrow op_names, exclude them, "
                f"or declare their coupling under units: (see docs/structured.md)"
            )
    if not picked:
        available = ", ".join(g.name or "<model>" for g in found[:8]) or "none"
        raise PruningError(
            f"pruner {group!r}: pattern {kind} selects no structure (op_names={config.op_names!r}, op_types={config.op_types!r}); "
            f"{kind} structures found: {available}{' ...' if len(found) > 8 else ''}"
            + (f"; convs that are not units: {'; '.join(f'{n}: {r}' for n, r in list(reasons.items())[:3])}" if reasons else "")
        )
    return picked


class StructuredPruner(PrunerGroup):
    """The per-group pruner of ``pattern: head`` / ``pattern: channel`` (see the module docstring)."""

    def __init__(self, config: PrunerConfig, model: nn.Module, unit_groups: list[UnitGroup]) -> None:
        self.model = model
        self.unit_groups = unit_groups
        layers: list[Layer] = []
        #: layer name -> (module name, parameter name); a weight matrix may be a member of several structures
        self._param_of: dict[str, tuple[str, str]] = {}
        for unit_group in unit_groups:
            for member in unit_group.weight_members:
                name = member.module if member.param == "weight" else f"{member.module}.{member.param}"
                if name in self._param_of:
                    continue
                module = model.get_submodule(member.module)
                weight = getattr(module, member.param)
                kind = _layout_of(module, weight)
                self._param_of[name] = (member.module, member.param)
                layers.append(
                    Layer(name, module, weight, Layout(kind, tuple(local_tensor(weight).shape)), shard=row_shard(name, weight, kind))
                )
        self._layer_of = {(m, p): name for name, (m, p) in self._param_of.items()}
        super().__init__(config, layers)  # scheduler, criterion, masks, the frozen-weight check
        self._layer_by_name = {layer.name: layer for layer in self.layers}
        self.unit_scores: dict[str, torch.Tensor] = {}
        self.pruned_units: dict[str, torch.Tensor] = {g.name: torch.zeros(g.units, dtype=torch.bool) for g in unit_groups}

    def _layer_pattern(self, spec: Any, layer: Layer, where: str) -> None:
        return None  # units span several layers: scored and masked by unit, not by a per-layer pattern

    @classmethod
    def needs_whole_layers(cls) -> bool:
        return False  # unit scores are reduced over the ranks (module docstring)

    # ------------------------------------------------------------------ checks
    def check_layers(self) -> None:
        for layer in self.layers:
            module_name, param = self._param_of[layer.name]
            live = layer.module._parameters.get(param)
            if layer.shard is not None and live is not None and not is_dtensor(live):
                continue  # FSDP2 registers the gathered weight between forward and backward
            if live is not layer.weight:
                raise PruningError(
                    f"pruner {self.name!r}, layer {layer.name!r}: the module's {param} is no longer the Parameter this session "
                    f"prunes (replaced after the session was built, e.g. by load_state_dict(..., assign=True) or prunekit.slim); "
                    f"build a new Pruning session for the model as it is now"
                )
            if tuple(layer.data.shape) != layer.layout.shape:
                raise PruningError(f"pruner {self.name!r}, layer {layer.name!r}: the weight's shape changed after the session was built")
            if layer.weight.device != self.mask8[layer.name].device:
                raise PruningError(
                    f"pruner {self.name!r}, layer {layer.name!r}: the weight moved to {layer.weight.device} after the session was "
                    f"built; move the model first, then build the Pruning session"
                )

    def _check_finite(self, step: int) -> bool:
        problem = None
        for layer in self.layers:
            tensors = [("weights", layer.data)]
            if self.criterion.needs_grad:
                tensors.append(("gradients", self._grad(layer, step)))
            for what, tensor in tensors:
                if problem is None and tensor.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(tensor.float()))).all()):
                    problem = f"pruner {self.name!r}, layer {layer.name!r}: the {what} are not finite (NaN/inf) at optimizer step {step}"
        if self.shard is not None and global_counts([problem is not None], self.shard)[0] and problem is None:
            problem = f"pruner {self.name!r}: weights or gradients are not finite (NaN/inf) on another rank at optimizer step {step}"
        if problem is not None:
            raise PruningError(f"{problem}; nothing was pruned at this event")
        return True

    # ------------------------------------------------------------------ scores
    @torch.no_grad()
    def _fresh_unit_scores(self, step: int) -> dict[str, torch.Tensor]:
        """``{structure: float32 [units]}``: element scores of the unit's weights, reduced by ``reduce``."""
        reduce = self.config.reduce
        per_index: dict[tuple[str, int], torch.Tensor] = {}  # (layer, dim) -> float64 sums (maxima) along dim
        totals: list[torch.Tensor] = []
        counts: list[int] = []
        for unit_group in self.unit_groups:
            total: torch.Tensor | None = None
            count = 0
            for member in unit_group.weight_members:
                name = self._layer_of[(member.module, member.param)]
                layer = self._layer_by_name[name]
                key = (name, member.dim)
                if key not in per_index:
                    grad = self._grad(layer, step) if self.criterion.needs_grad else None
                    scores = self.criterion.score(layer.data, grad).double()
                    other = [d for d in range(scores.dim()) if d != member.dim]
                    if scores.numel() == 0:
                        per_index[key] = scores.new_zeros(scores.shape[member.dim])
                    else:
                        per_index[key] = scores.amax(other) if reduce == "max" else scores.sum(other)
                    del scores
                part = self._unit_part(member, unit_group.units, per_index[key], layer, reduce)
                whole = layer.shard.global_shape if layer.shard is not None else tuple(layer.data.shape)
                count += member.size * (math.prod(whole) // whole[member.dim])
                total = part if total is None else (torch.maximum(total, part) if reduce == "max" else total + part)
            assert total is not None
            totals.append(total)
            counts.append(count)
        if self.shard is not None and self.shard.world > 1 and totals:  # the ranks' partial sums (maxima) of every unit
            import torch.distributed as dist

            flat = torch.cat(totals).to(self.shard.comm_device)
            dist.all_reduce(flat, op=dist.ReduceOp.MAX if reduce == "max" else dist.ReduceOp.SUM, group=self.shard.group)
            totals = list(flat.split([g.units for g in self.unit_groups]))
        out: dict[str, torch.Tensor] = {}
        for unit_group, total, count in zip(self.unit_groups, totals, counts):
            device = self._layer_by_name[self._layer_of[(unit_group.weight_members[0].module, unit_group.weight_members[0].param)]].data.device
            out[unit_group.name] = (total / count if reduce == "mean" else total).float().to(device)
        return out

    @staticmethod
    def _unit_part(member: Member, units: int, sums: torch.Tensor, layer: Layer, reduce: str) -> torch.Tensor:
        """float64 ``[units]``: the per-index sums (maxima) ``sums`` along ``member.dim`` that this rank holds,
        added up (maximized) per unit in index order; 0 (-inf for maxima) for units it holds nothing of."""
        start = layer.shard.row0 if layer.shard is not None and member.dim == 0 else 0  # global index of sums[0]
        lo, hi = member.offset, member.offset + units * member.size
        a, b = max(lo, start), min(hi, start + sums.numel())
        out = torch.full((units,), float("-inf") if reduce == "max" else 0.0, dtype=torch.float64, device=sums.device)
        if a >= b:
            return out
        unit = (torch.arange(a, b, device=sums.device) - lo) // member.size
        values = sums[a - start : b - start]
        if reduce == "max":
            return out.scatter_reduce_(0, unit, values, "amax")
        return out.index_add_(0, unit, values)

    @torch.no_grad()
    def _accumulate(self, step: int, mask_grads: bool) -> None:
        for name, fresh in self._fresh_unit_scores(step).items():
            self.unit_scores[name] = self.criterion.accumulate(self.unit_scores.get(name), fresh)
        if mask_grads:
            self.mask_grads()

    def _scores_now(self, step: int) -> dict[str, torch.Tensor]:
        if not self.criterion.accumulates:
            return self._fresh_unit_scores(step)
        missing = [g.name for g in self.unit_groups if g.name not in self.unit_scores]
        if missing:
            raise PruningError(
                f"pruner {self.name!r}: no accumulated {self.criterion.name} scores for {missing[0]!r} at optimizer step {step}; "
                f"the scores are gathered from start_step on, one backward pass per optimizer step"
            )
        for name, scores in self.unit_scores.items():
            if not bool(torch.isfinite(scores).all()):
                raise PruningError(f"pruner {self.name!r}: accumulated scores of {name!r} are not finite at optimizer step {step}")
        return self.unit_scores

    # ------------------------------------------------------------------ events
    def _bounds(self, unit_group: UnitGroup, ratio: float) -> tuple[int, int]:
        """(fewest, most) units of a structure pruned at ``ratio``: min/max_sparsity_per_op, never the last unit."""
        n = unit_group.units
        high = min(math.floor(self.config.max_sparsity_per_op * n + 1e-9), n - 1)
        low = min(math.ceil(min(self.config.min_sparsity_per_op, ratio) * n - 1e-9), high)
        return low, high

    @torch.no_grad()
    def _prune(
        self, step: int, event: PruningEvent, ratio: float, optimizers: list[torch.optim.Optimizer], sync: bool, apply: bool = True
    ) -> PruningRecord:
        self._check_finite(step)
        scores = {name: s.detach().float().cpu() for name, s in self._scores_now(step).items()}
        decided = {g.name: self.pruned_units[g.name].clone() for g in self.unit_groups}
        capped: list[str] = []
        if self.config.scope == "local":
            for unit_group in self.unit_groups:  # min_sparsity_per_op is a global-scope bound
                high = self._bounds(unit_group, ratio)[1]
                want = min(max(round(ratio * unit_group.units), 0), high)
                self._take_lowest(decided[unit_group.name], scores[unit_group.name], want)
        else:
            numel = {g.name: g.unit_numel(self.model) for g in self.unit_groups}
            total = sum(layer.total_numel for layer in self.layers)  # distinct weights (a conv in two chains counts once)
            budget = ratio * total
            bounds = {g.name: self._bounds(g, ratio) for g in self.unit_groups}
            count = {g.name: int(decided[g.name].sum()) for g in self.unit_groups}
            pruned = sum(count[g.name] * numel[g.name] for g in self.unit_groups)
            order = sorted(
                ((float(scores[g.name][u]), i, u) for i, g in enumerate(self.unit_groups) for u in range(g.units) if not decided[g.name][u]),
            )
            for _, i, u in order:  # lowest score first; ties: structure order, then unit order
                unit_group = self.unit_groups[i]
                size = numel[unit_group.name]
                if pruned + size / 2 > budget or count[unit_group.name] >= bounds[unit_group.name][1]:
                    continue  # over budget (a smaller unit of another structure may still fit) or at the structure's bound
                decided[unit_group.name][u] = True
                count[unit_group.name] += 1
                pruned += size
            for unit_group in self.unit_groups:
                low, high = bounds[unit_group.name]
                self._take_lowest(decided[unit_group.name], scores[unit_group.name], low)
                if high > 0 and int(decided[unit_group.name].sum()) >= high:
                    capped.append(unit_group.name)
        if sync and self.shard is None:  # (sharded: every rank holds the same unit scores and chooses the same)
            import torch.distributed as dist

            flat = torch.cat([decided[g.name] for g in self.unit_groups]).to(torch.uint8)
            device = self.layers[0].weight.device if dist.get_backend() == "nccl" else torch.device("cpu")
            flat = flat.to(device)
            dist.broadcast(flat, src=0)  # rank 0's choice wins, before anything is committed
            offset = 0
            for unit_group in self.unit_groups:
                decided[unit_group.name] = flat[offset : offset + unit_group.units].cpu().bool()
                offset += unit_group.units
        self._commit(decided, optimizers, apply)
        self._warn_capped(step, capped)
        self.ratio = ratio
        counts, total_numel = self._pruned_counts()  # whole layers (summed over the ranks when sharded)
        pruned_numel = sum(counts.values())
        self.has_pruned = self.has_pruned or pruned_numel > 0
        layers = {layer.name: counts[layer.name] / layer.total_numel for layer in self.layers}
        return PruningRecord(step, self.name, event.index, event.total, ratio, pruned_numel / total_numel, layers)

    @staticmethod
    def _take_lowest(decided: torch.Tensor, scores: torch.Tensor, want: int) -> None:
        """Mark the lowest-scored units not yet pruned until ``want`` are pruned (ties: lower index first)."""
        missing = want - int(decided.sum())
        if missing <= 0:
            return
        candidates = (~decided).nonzero().flatten()
        order = torch.argsort(scores[candidates], stable=True)
        decided[candidates[order[:missing]]] = True

    @torch.no_grad()
    def _commit(self, decided: Mapping[str, torch.Tensor], optimizers: list[torch.optim.Optimizer], apply: bool) -> None:
        touched: set[str] = set()
        for unit_group in self.unit_groups:
            new = decided[unit_group.name] & ~self.pruned_units[unit_group.name]
            units = new.nonzero().flatten().tolist()
            if not units:
                continue
            for member in unit_group.members:
                index = _indices(member, units)
                layer = self._layer_of.get((member.module, member.param))
                if layer is not None:
                    mask = self.mask8[layer]
                    local = _local_index(index, member.dim, self._layer_by_name[layer].shard)
                    mask.index_fill_(member.dim, local.to(mask.device), 0)
                    touched.add(layer)
                elif apply and (member.role != "norm" or member.param in ("weight", "bias")):  # running stats stay
                    tensor = member.tensor(self.model)
                    if tensor is not None:
                        shard = row_shard(f"{member.module}.{member.param}", tensor, "linear") if is_dtensor(tensor) else None
                        part = local_tensor(tensor.detach())
                        part.index_fill_(member.dim, _local_index(index, member.dim, shard).to(part.device), 0)
            self.pruned_units[unit_group.name] = self.pruned_units[unit_group.name] | new
        if apply:
            for layer in self.layers:
                if layer.name in touched:
                    apply_mask_(layer.weight, self.mask8[layer.name])
                    mask_optimizer_state_(optimizers, layer.weight, self.mask8[layer.name])
            self._floored_at = None

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        return {
            "unit_scores": {name: s.detach().clone() for name, s in self.unit_scores.items()},
            "pruned_units": {name: p.clone() for name, p in self.pruned_units.items()},
        }

    def check_extra_state(self, state: Mapping[str, Any], where: str) -> list[str]:
        problems = []
        sizes = {g.name: g.units for g in self.unit_groups}
        for key, want_float in (("unit_scores", True), ("pruned_units", False)):
            saved = state.get(key)
            if not isinstance(saved, Mapping):
                problems.append(f"{where}.{key}: missing (the state was saved by another pattern); load it into the same config")
                continue
            for name, tensor in saved.items():
                if name not in sizes:
                    problems.append(f"{where}.{key}[{name!r}]: no such structure in pruner {self.name!r} ({_short(list(sizes))})")
                elif not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != (sizes[name],):
                    problems.append(f"{where}.{key}[{name!r}]: expected a tensor of {sizes[name]} units")
                elif want_float and not (tensor.is_floating_point() and bool(torch.isfinite(tensor).all())):
                    problems.append(f"{where}.{key}[{name!r}]: expected finite floating scores")
                elif not want_float and tensor.dtype != torch.bool:
                    problems.append(f"{where}.{key}[{name!r}]: expected a bool tensor")
            if not want_float and isinstance(saved, Mapping) and set(saved) != set(sizes):
                problems.append(f"{where}.{key}: holds {_short(sorted(saved))}, the model has {_short(sorted(sizes))}")
        return problems

    def apply_extra_state(self, state: Mapping[str, Any]) -> None:
        devices = {g.name: self.model.get_submodule(g.weight_members[0].module).weight.device if g.weight_members[0].param == "weight"
                   else getattr(self.model.get_submodule(g.weight_members[0].module), g.weight_members[0].param).device
                   for g in self.unit_groups}
        self.unit_scores = {name: s.to(device=devices[name], dtype=torch.float32, copy=True) for name, s in state["unit_scores"].items()}
        self.pruned_units = {name: p.to("cpu", copy=True) for name, p in state["pruned_units"].items()}


def _local_index(index: torch.Tensor, dim: int, shard: Any) -> torch.Tensor:
    """Global indices along ``dim`` as indices into this rank's shard (dim 0 of a sharded tensor: its rows only)."""
    if shard is None or dim != 0:
        return index
    mine = index[(index >= shard.row0) & (index < shard.row1)]
    return mine - shard.row0


def _indices(member: Member, units: list[int]) -> torch.Tensor:
    """Indices along ``member.dim`` of the given units."""
    starts = torch.tensor(units, dtype=torch.long) * member.size + member.offset
    return (starts[:, None] + torch.arange(member.size)).flatten()
