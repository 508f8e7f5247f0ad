"""One pruner group: its layers, pattern, criterion, scope, scheduler, masks and scores.

:meth:`PrunerGroup.before_step` is called once per optimizer step, just before the step (after
``backward()``): it accumulates ``snip_momentum`` scores inside the pruning window, runs the event
of that step if there is one (new masks, applied to the weights and the optimizer state), and
zeroes the gradients of the pruned weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import torch

from prunekit.config import PrunerConfig
from prunekit.errors import PruningError
from prunekit.registry import CRITERIA, get_scheduler
from prunekit.pruner.criteria import Criterion
from prunekit.pruner.masks import apply_mask_, mask_grad_, mask_optimizer_state_
from prunekit.pruner.patterns import BlockPattern, NMPattern, make_pattern
from prunekit.pruner.scope import element_budget, global_budgets, select_blocks
from prunekit.pruner.selection import Layer
from prunekit.schedulers.base import PruningEvent, Scheduler

__all__ = ["PruningRecord", "PrunerGroup"]


@dataclass(frozen=True)
class PruningRecord:
    """One pruning event of one group: ``sparsity`` is the element-wise fraction of zeros reached."""

    step: int
    pruner: str
    index: int
    total: int
    target: float
    sparsity: float
    layers: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _MaskView(Mapping[str, torch.Tensor]):
    """``{layer name: kept mask}`` for schedulers, computed on access (most schedulers never look)."""

    def __init__(self, pruned: dict[str, torch.Tensor]) -> None:
        self._pruned = pruned

    def __getitem__(self, name: str) -> torch.Tensor:
        return ~self._pruned[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pruned)

    def __len__(self) -> int:
        return len(self._pruned)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class PrunerGroup:
    """The per-group pruner built from a validated :class:`PrunerConfig` and its selected layers."""

    def __init__(self, config: PrunerConfig, layers: list[Layer]) -> None:
        self.config = config
        self.name = str(config.name)
        self.layers = layers
        self.scheduler: Scheduler = get_scheduler(config.scheduler, max_sparsity_per_op=config.max_sparsity_per_op)
        self.criterion: Criterion = CRITERIA.get(config.criterion)()
        spec = config.pattern_spec
        self.patterns: dict[str, BlockPattern | NMPattern] = {}
        for layer in layers:
            where = f"pruner {self.name!r}, layer {layer.name!r}"
            if layer.frozen and self.criterion.needs_grad:
                raise PruningError(
                    f"{where}: the weight is frozen (requires_grad=False) and criterion {config.criterion!r} needs "
                    f"gradients; use criterion: magnitude for frozen layers (a separate pruner group), or exclude "
                    f"the layer with excluded_op_names"
                )
            self.patterns[layer.name] = make_pattern(spec, layer.layout, where=where)
        #: True = pruned (the inverse of the public masks: ``masked_fill_`` with it is the fastest exact zeroing)
        self.pruned: dict[str, torch.Tensor] = {
            layer.name: torch.zeros(layer.weight.shape, dtype=torch.bool, device=layer.weight.device) for layer in layers
        }
        self.scores: dict[str, torch.Tensor] = {}
        #: the sparsity ratio in force (the last event's target)
        self.ratio = 0.0
        self.has_pruned = False
        self._buffers: dict[torch.device, torch.Tensor] = {}
        self._last_event_step = self.scheduler.last_event_step  # events() builds a tuple: not per step

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """``{layer name: bool mask}``, True = kept (new tensors)."""
        return {name: ~pruned for name, pruned in self.pruned.items()}

    # ------------------------------------------------------------------ per step
    def in_window(self, step: int) -> bool:
        """True for the steps whose gradients feed the scores (start_step .. last event step)."""
        return self.scheduler.start_step <= step <= self._last_event_step

    def before_step(self, step: int, optimizers: Iterable[torch.optim.Optimizer], sync: bool | None) -> PruningRecord | None:
        """Accumulate scores, run the event of ``step`` if any, zero the pruned gradients."""
        if self.criterion.accumulates and self.in_window(step):
            self._accumulate(step)
        elif step > self._last_event_step and (self._buffers or self.scores):
            self._buffers.clear()  # the schedule is over: scores are never read again
            self.scores.clear()
        event = self.scheduler.event_at(step)
        masks = _MaskView(self.pruned) if event is not None else None
        ratio = self.scheduler.step(step, self.config.target_sparsity, masks=masks)
        record = None
        if ratio is not None and event is not None:
            record = self._prune(step, event, ratio, list(optimizers), _distributed() if sync is None else sync)
        if self.has_pruned:
            for layer in self.layers:
                mask_grad_(layer.weight, self.pruned[layer.name])
        return record

    def reapply(self) -> None:
        """Apply every mask to its weight again (after an optimizer step)."""
        if self.has_pruned:
            for layer in self.layers:
                apply_mask_(layer.weight, self.pruned[layer.name])

    def _grad(self, layer: Layer, step: int) -> torch.Tensor | None:
        grad = layer.weight.grad
        if grad is None and self.criterion.needs_grad:
            raise PruningError(
                f"pruner {self.name!r}, layer {layer.name!r}: criterion {self.criterion.name!r} needs gradients but "
                f"the weight has none at optimizer step {step}; run loss.backward() (through this layer) before "
                f"optimizer.step(), or use criterion: magnitude"
            )
        return grad

    def _scratch(self, layer: Layer) -> torch.Tensor:
        """A float32 buffer of ``layer``'s weight shape, shared by the layers of a device (no per-step allocation)."""
        device = layer.weight.device
        buf = self._buffers.get(device)
        if buf is None:
            size = max(l.numel for l in self.layers if l.weight.device == device)
            buf = self._buffers[device] = torch.empty(size, dtype=torch.float32, device=device)
        return buf[: layer.numel].view(layer.weight.shape)

    @torch.no_grad()
    def _accumulate(self, step: int) -> None:
        reduce = self.config.reduce
        for layer in self.layers:
            fresh = self.criterion.score(layer.weight, self._grad(layer, step), out=self._scratch(layer))
            res = self.patterns[layer.name].resolution(layer.layout.to_2d(fresh), reduce)
            self.scores[layer.name] = self.criterion.accumulate(self.scores.get(layer.name), res)

    # ------------------------------------------------------------------ events
    @torch.no_grad()
    def _grid(self, layer: Layer, step: int) -> torch.Tensor:
        pattern = self.patterns[layer.name]
        reduce = self.config.reduce
        if self.criterion.accumulates:
            res = self.scores.get(layer.name)
            if res is None:
                raise PruningError(f"pruner {self.name!r}, layer {layer.name!r}: no accumulated scores at step {step}")
            owned = False
        else:
            score = self.criterion.score(layer.weight, self._grad(layer, step))
            res = pattern.resolution(layer.layout.to_2d(score), reduce)
            owned = True  # criteria return fresh tensors: the grid may reuse the memory
        grid = pattern.grid(res, layer.layout.to_2d(~self.pruned[layer.name]), reduce, owned=owned)
        # scores are >= 0 or PRUNED: the maximum is NaN or inf exactly when some score is (one pass, no temporary)
        if not bool(torch.isfinite(grid.max())):
            source = "weights" if not self.criterion.needs_grad else "weights or gradients"
            raise PruningError(
                f"pruner {self.name!r}, layer {layer.name!r}: {self.criterion.name} scores at optimizer step {step} are "
                f"not finite (NaN/inf in the {source}); fix the divergence (lower the learning rate, clip gradients, "
                f"use a GradScaler) before pruning"
            )
        return grid

    @torch.no_grad()
    def _prune(self, step: int, event: PruningEvent, ratio: float, optimizers: list[torch.optim.Optimizer], sync: bool) -> PruningRecord:
        cfg = self.config
        if cfg.scope == "local":
            for layer in self.layers:
                grid = self._grid(layer, step)
                self._set_mask(layer, grid, element_budget(ratio, layer.numel), optimizers, sync)
        else:
            grids = [self._grid(layer, step) for layer in self.layers]
            numels = [layer.numel for layer in self.layers]
            total = element_budget(ratio, sum(numels))
            low = [math.ceil(min(cfg.min_sparsity_per_op, ratio) * n - 1e-9) for n in numels]
            high = [math.floor(cfg.max_sparsity_per_op * n + 1e-9) for n in numels]
            budgets = global_budgets(grids, [self.patterns[l.name] for l in self.layers], total, low, high)
            for layer, grid, budget in zip(self.layers, grids, budgets):
                self._set_mask(layer, grid, budget, optimizers, sync)
            del grids
        self.ratio = ratio
        counts = {name: int(p.count_nonzero()) for name, p in self.pruned.items()}
        layer_sparsity = {name: counts[name] / p.numel() for name, p in self.pruned.items()}
        pruned = sum(counts.values())
        total_numel = sum(p.numel() for p in self.pruned.values())
        self.has_pruned = self.has_pruned or pruned > 0
        return PruningRecord(step, self.name, event.index, event.total, ratio, pruned / total_numel, layer_sparsity)

    def _set_mask(self, layer: Layer, grid: torch.Tensor, budget: int, optimizers: list[torch.optim.Optimizer], sync: bool) -> None:
        pattern = self.patterns[layer.name]
        keep = layer.layout.from_2d(pattern.expand(select_blocks(grid, pattern, budget)))
        pruned = self.pruned[layer.name]
        pruned |= ~keep  # pruned weights never come back
        if sync:  # rank 0's masks win, so every rank ends the event with identical masks
            import torch.distributed as dist

            dist.broadcast(pruned.view(torch.uint8), src=0)
        apply_mask_(layer.weight, pruned)
        mask_optimizer_state_(optimizers, layer.weight, pruned)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Scheduler state, the ratio in force, masks and scores (tensors are copies)."""
        return {
            "layers": [layer.name for layer in self.layers],
            "scheduler": self.scheduler.state_dict(),
            "ratio": self.ratio,
            "masks": self.masks,  # True = kept, like Pruning.masks
            "scores": {name: score.clone() for name, score in self.scores.items()},
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the masks are applied to the weights again."""
        names = [layer.name for layer in self.layers]
        if list(state["layers"]) != names:
            raise PruningError(
                f"pruner {self.name!r}: the saved state has layers {list(state['layers'])} but the model selects "
                f"{names}; load the state into the same model architecture and config"
            )
        for layer in self.layers:
            saved = state["masks"][layer.name]
            if tuple(saved.shape) != tuple(layer.weight.shape):
                raise PruningError(
                    f"pruner {self.name!r}, layer {layer.name!r}: saved mask shape {list(saved.shape)} differs from the "
                    f"weight shape {list(layer.weight.shape)}"
                )
        self.scheduler.load_state_dict(state["scheduler"])
        self.ratio = float(state["ratio"])
        for layer in self.layers:
            self.pruned[layer.name].copy_(~state["masks"][layer.name].to(torch.bool))
        self.scores = {
            name: score.to(device=self.pruned[name].device, copy=True) for name, score in state["scores"].items()
        }
        self.has_pruned = any(bool(p.any()) for p in self.pruned.values())
        self.reapply()
