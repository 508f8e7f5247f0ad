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
from prunekit.pruner.grids import BlockGrid, StreamGrid, TensorGrid
from prunekit.pruner import masks as _masks
from prunekit.pruner.masks import (
    apply_mask_,
    floor_second_moments_,
    kept_bool,
    mark_pruned_,
    mask_grad_,
    mask_optimizer_state_,
    new_mask,
    second_moment_refresh_period,
    zero_pruned_,
)
from prunekit.pruner.patterns import PRUNED, BlockPattern, NMPattern, make_pattern
from prunekit.pruner.scope import element_budget, global_threshold, select_blocks
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

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self._masks = masks

    def __getitem__(self, name: str) -> torch.Tensor:
        return kept_bool(self._masks[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _row_block(pattern: BlockPattern | NMPattern) -> int:
    """Rows a chunk must be a multiple of (a block's height)."""
    return pattern.r if isinstance(pattern, BlockPattern) else 1


def _res_shape(pattern: BlockPattern | NMPattern) -> tuple[int, int]:
    """Shape of the resolution scores are kept at (block grid; elements for 1x1 and N:M)."""
    if isinstance(pattern, BlockPattern) and pattern.block_numel > 1:
        return pattern.grid_rows, pattern.grid_cols
    return pattern.rows, pattern.cols


class PrunerGroup:
    """The per-group pruner built from a validated :class:`PrunerConfig` and its selected layers.

    Persistent memory: one int8 mask per layer (1 byte per weight, see :mod:`prunekit.pruner.masks`),
    ``snip_momentum`` scores at block resolution inside the pruning window (dropped after the last
    event), and one chunk-sized float32 scratch buffer per device. Nothing is kept per step.
    """

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
        #: int8 masks, -1 = kept, 0 = pruned (1 byte per weight; see prunekit.pruner.masks)
        self.mask8: dict[str, torch.Tensor] = {layer.name: new_mask(layer.weight) for layer in layers}
        self._pairs = [(layer.weight, self.mask8[layer.name]) for layer in layers]
        self.scores: dict[str, torch.Tensor] = {}
        #: the sparsity ratio in force (the last event's target)
        self.ratio = 0.0
        self.has_pruned = False
        self._buffers: dict[tuple[torch.device, str], torch.Tensor] = {}
        self._last_event_step = self.scheduler.last_event_step  # events() builds a tuple: not per step
        #: optimizer step at which Adam/AdamW second moments of pruned weights were last floored (see masks)
        self._floored_at: int | None = None

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """``{layer name: bool mask}``, True = kept (new tensors)."""
        return {name: kept_bool(mask) for name, mask in self.mask8.items()}

    # ------------------------------------------------------------------ per step
    def in_window(self, step: int) -> bool:
        """True for the steps whose gradients feed the scores (start_step .. last event step)."""
        return self.scheduler.start_step <= step <= self._last_event_step

    def before_step(self, step: int, optimizers: Iterable[torch.optim.Optimizer], sync: bool | None) -> PruningRecord | None:
        """Accumulate scores, run the event of ``step`` if any, zero the pruned gradients (see :meth:`_before_step`);
        then keep Adam/AdamW second moments of pruned weights floored (every few thousand steps)."""
        optimizers = optimizers if isinstance(optimizers, (list, tuple)) else list(optimizers)
        record = self._before_step(step, optimizers, sync)
        if self.has_pruned:
            self._refresh_second_moments(step, optimizers)
        return record

    def _refresh_second_moments(self, step: int, optimizers: list[torch.optim.Optimizer]) -> None:
        period = second_moment_refresh_period(optimizers)
        if period is None or (self._floored_at is not None and 0 <= step - self._floored_at < period):
            return
        found = False
        for weight, mask in self._pairs:
            found = floor_second_moments_(optimizers, weight, mask) or found
        if found:  # the state exists from the optimizer's first step on
            self._floored_at = step

    def _before_step(self, step: int, optimizers: list[torch.optim.Optimizer], sync: bool | None) -> PruningRecord | None:
        """Accumulate scores, run the event of ``step`` if any, zero the pruned gradients.

        Between events this is one pass over the gradients (fused with the score accumulation of
        ``snip_momentum``); after the last event only the gradient masking runs. No host
        synchronisation outside events.
        """
        if step > self._last_event_step:
            if self.scores or self._buffers:
                self.scores.clear()  # the schedule is over: scores are never read again
                self._buffers.clear()
            self.mask_grads()
            return None
        accumulate = self.criterion.accumulates and step >= self.scheduler.start_step
        event = self.scheduler.event_at(step)
        if event is None:
            if accumulate:
                self._accumulate(step, mask_grads=self.has_pruned)
            else:
                self.mask_grads()
            return None
        if accumulate:
            self._accumulate(step, mask_grads=False)
        ratio = self.scheduler.step(step, self.config.target_sparsity, masks=_MaskView(self.mask8))
        record = None
        if ratio is not None:
            record = self._prune(step, event, ratio, list(optimizers), _distributed() if sync is None else sync)
        self.mask_grads()
        return record

    def mask_grads(self) -> None:
        """Zero the gradients of the pruned weights (nothing before the first pruned weight)."""
        if self.has_pruned:
            for weight, mask in self._pairs:
                mask_grad_(weight, mask)

    def reapply(self) -> None:
        """Apply every mask to its weight again (after an optimizer step)."""
        if self.has_pruned:
            for weight, mask in self._pairs:
                apply_mask_(weight, mask)

    def _grad(self, layer: Layer, step: int) -> torch.Tensor | None:
        grad = layer.weight.grad
        if grad is None and self.criterion.needs_grad:
            raise PruningError(
                f"pruner {self.name!r}, layer {layer.name!r}: criterion {self.criterion.name!r} needs gradients but "
                f"the weight has none at optimizer step {step}; run loss.backward() (through this layer) before "
                f"optimizer.step(), or use criterion: magnitude"
            )
        return grad

    def _chunk_rows(self, layer: Layer) -> int:
        """Rows of the 2-D view per chunk: about ``_masks.CHUNK`` elements, a multiple of the block height."""
        pattern = self.patterns[layer.name]
        r = _row_block(pattern)
        cols = layer.layout.cols
        return max(r, (_masks.CHUNK // max(cols, 1)) // r * r)

    def _streamable(self, layer: Layer, grad: torch.Tensor | None) -> bool:
        """True when chunks of the 2-D view are contiguous slices of the weight (and gradient)."""
        w = layer.weight
        return (
            layer.layout.kind == "linear"
            and w.is_contiguous()
            and (grad is None or (grad.is_contiguous() and grad.layout == torch.strided))
        )

    def _scratch(self, device: torch.device, numel: int, purpose: str = "scores") -> torch.Tensor:
        """A float32 buffer of at least ``numel`` elements on ``device``, shared by the layers (no per-step allocation).

        ``purpose`` names independent buffers (element scores, and their block reduction).
        """
        key = (device, purpose)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[key] = torch.empty(numel, dtype=torch.float32, device=device)
        return buf[:numel]

    @torch.no_grad()
    def _accumulate(self, step: int, mask_grads: bool) -> None:
        """Fold this step's block-reduced scores into ``self.scores`` (optionally masking the gradients in the same pass)."""
        reduce = self.config.reduce
        for layer in self.layers:
            grad = self._grad(layer, step)
            pattern = self.patterns[layer.name]
            mask = self.mask8[layer.name]
            acc = self.scores.get(layer.name)
            if acc is None:
                acc = self.scores[layer.name] = torch.zeros(_res_shape(pattern), dtype=torch.float32, device=layer.weight.device)
            if not self._streamable(layer, grad):
                if mask_grads:
                    mask_grad_(layer.weight, mask)
                fresh = self.criterion.score(layer.weight, grad, out=self._scratch(layer.weight.device, layer.numel).view(layer.weight.shape))
                res = pattern.resolution(layer.layout.to_2d(fresh), reduce)
                self.criterion.accumulate(acc, res)
                continue
            rows, cols = layer.layout.rows, layer.layout.cols
            w2, g2, m2 = layer.weight.detach().view(rows, cols), grad.view(rows, cols), mask.view(rows, cols)
            per = self._chunk_rows(layer)
            scratch = self._scratch(layer.weight.device, min(per, rows) * cols)
            blocks = isinstance(pattern, BlockPattern) and pattern.block_numel > 1
            r = _row_block(pattern)
            if blocks:
                reduced = self._scratch(layer.weight.device, -(-min(per, rows) // r) * pattern.grid_cols, "blocks")
                chunk_patterns: dict[int, BlockPattern] = {}
            # this loop runs every step: the gradient masking goes straight to the widening AND when it can
            int_dtype = _masks.INT_OF_SIZE.get(grad.element_size())
            fast_mask = mask_grads and grad.device.type == "cpu" and grad.is_floating_point() and int_dtype is not None and per * cols <= _masks.CHUNK
            if fast_mask:
                g_bits, m_flat = grad.view(int_dtype).view(-1), mask.view(-1)
                widened = _masks.widen_buffer(grad.device, int_dtype)
            for a in range(0, rows, per):
                b = min(a + per, rows)
                if fast_mask:
                    _masks.and_widened_(g_bits[a * cols : b * cols], m_flat[a * cols : b * cols], widened)
                elif mask_grads:
                    zero_pruned_(g2[a:b], m2[a:b])
                s = self.criterion.score(w2[a:b], g2[a:b], out=scratch[: (b - a) * cols].view(b - a, cols))
                if blocks:
                    target = acc[a // r : -(-b // r)]
                    chunk = chunk_patterns.get(b - a)
                    if chunk is None:
                        chunk = chunk_patterns[b - a] = BlockPattern(b - a, cols, pattern.r, pattern.c)
                    res = chunk.resolution(s, reduce, out=reduced[: target.numel()].view(target.shape))
                    self.criterion.accumulate(target, res)
                else:
                    self.criterion.accumulate(acc[a:b], s)

    # ------------------------------------------------------------------ events
    @torch.no_grad()
    def _grid(self, layer: Layer, step: int, ordered: bool = True) -> BlockGrid:
        """The layer's block-score grid; ``ordered=False``: every block goes at this event, so N:M
        patterns skip the group scores (see :meth:`NMPattern.grid_rows_from`)."""
        pattern = self.patterns[layer.name]
        reduce = self.config.reduce
        mask = self.mask8[layer.name]
        mask2d = layer.layout.to_2d(mask)
        grad = None if not self.criterion.needs_grad else self._grad(layer, step)
        if self.criterion.accumulates:
            res = self.scores.get(layer.name)
            if res is None:
                raise PruningError(f"pruner {self.name!r}, layer {layer.name!r}: no accumulated scores at step {step}")
        streamable = self._streamable(layer, grad)
        if isinstance(pattern, BlockPattern) and pattern.block_numel == 1 and streamable:
            grid: BlockGrid = self._stream_grid(layer, pattern, grad)
        elif self.criterion.accumulates:
            grid = TensorGrid(self._pattern_grid(pattern, res, mask2d, owned=False, ordered=ordered), pattern)
        elif streamable:
            grid = TensorGrid(self._chunked_grid(layer, pattern, grad, mask2d, ordered), pattern)
        else:
            score = self.criterion.score(layer.weight, grad)
            res = pattern.resolution(layer.layout.to_2d(score), reduce)
            grid = TensorGrid(self._pattern_grid(pattern, res, mask2d, owned=True, ordered=ordered), pattern)
        if not self._finite(layer, grid, grad):
            source = "weights" if not self.criterion.needs_grad else "weights or gradients"
            raise PruningError(
                f"pruner {self.name!r}, layer {layer.name!r}: {self.criterion.name} scores at optimizer step {step} are "
                f"not finite (NaN/inf in the {source}); fix the divergence (lower the learning rate, clip gradients, "
                f"use a GradScaler) before pruning"
            )
        return grid

    def _pattern_grid(self, pattern: BlockPattern | NMPattern, res: torch.Tensor, mask2d: torch.Tensor, owned: bool, ordered: bool) -> torch.Tensor:
        """``pattern.grid`` of the resolution scores ``res`` (``ordered`` only matters to N:M)."""
        if isinstance(pattern, NMPattern):
            return pattern.grid(res, mask2d, self.config.reduce, owned=owned, ordered=ordered)
        return pattern.grid(res, mask2d, self.config.reduce, owned=owned)

    def _finite(self, layer: Layer, grid: BlockGrid, grad: torch.Tensor | None) -> bool:
        """True when every score of ``grid`` is finite (one host read).

        A streamed grid is checked on what its scores are computed from (one min/max reduction per
        tensor, see :meth:`Criterion.inputs`) rather than by computing every score once more; an
        N:M grid on the largest element score its pattern saw (a group score reduces only the N
        lowest, so it misses a non-finite score of a weight that stays).
        """
        pattern = self.patterns[layer.name]
        if isinstance(pattern, NMPattern) and pattern.score_peak is not None:
            return bool(torch.isfinite(pattern.score_peak))
        inputs = None
        if isinstance(grid, StreamGrid):
            inputs = (self.scores[layer.name],) if self.criterion.accumulates else self.criterion.inputs(layer.weight.detach(), grad)
        if inputs is not None:
            extremes = torch.stack([torch.stack(torch.aminmax(t)).float() for t in inputs])
            return bool(torch.isfinite(extremes).all())
        # scores are >= 0 or PRUNED: the maximum is NaN or inf exactly when some score is
        return bool(torch.isfinite(torch.stack([c.max() for _, c in grid.chunks() if c.numel()]).max()))

    def _stream_grid(self, layer: Layer, pattern: BlockPattern, grad: torch.Tensor | None) -> StreamGrid:
        """1x1 scores computed chunk by chunk from the weight (and gradient) or the accumulated scores."""
        w = layer.weight.detach().view(-1)
        g = grad.view(-1) if grad is not None else None
        m = self.mask8[layer.name].view(-1)
        acc = self.scores[layer.name].view(-1) if self.criterion.accumulates else None
        scratch = self._scratch(w.device, min(_masks.CHUNK, w.numel()))
        criterion = self.criterion

        def score(start: int, stop: int) -> torch.Tensor:
            out = scratch[: stop - start]
            if acc is not None:
                out.copy_(acc[start:stop])
            else:
                criterion.score(w[start:stop], None if g is None else g[start:stop], out=out)
            return mark_pruned_(out, m[start:stop])  # = masked_fill_(pruned, PRUNED), without a bool kernel

        def sample(stride: int) -> torch.Tensor:
            if acc is not None:
                s = acc[::stride].clone()
            else:
                s = criterion.score(w[::stride], None if g is None else g[::stride])
            return s.masked_fill_(m[::stride] == 0, PRUNED)

        grid = StreamGrid(score, sample, (pattern.rows, pattern.cols), pattern, w.device)
        grid.known_pruned = m.numel() - int(torch.count_nonzero(m))  # = the scores marked PRUNED, without a pass
        return grid

    def _chunked_grid(
        self, layer: Layer, pattern: BlockPattern | NMPattern, grad: torch.Tensor | None, mask2d: torch.Tensor, ordered: bool = True
    ) -> torch.Tensor:
        """The block grid of a non-accumulating criterion, scored in row chunks (chunk-sized temporaries)."""
        reduce = self.config.reduce
        rows, cols = layer.layout.rows, layer.layout.cols
        w2 = layer.weight.detach().view(rows, cols)
        g2 = grad.view(rows, cols) if grad is not None else None
        per = self._chunk_rows(layer)
        scratch = self._scratch(w2.device, min(per, rows) * cols)

        def scores(a: int, b: int) -> torch.Tensor:
            out = scratch[: (b - a) * cols].view(b - a, cols)
            return self.criterion.score(w2[a:b], None if g2 is None else g2[a:b], out=out)

        if isinstance(pattern, NMPattern):
            return pattern.grid_rows_from(scores, mask2d, reduce, per, owned=True, ordered=ordered)
        grid = torch.empty(pattern.grid_rows, pattern.grid_cols, dtype=torch.float32, device=w2.device)
        r = pattern.r
        for a in range(0, rows, per):
            b = min(a + per, rows)
            grid[a // r : -(-b // r)] = BlockPattern(b - a, cols, pattern.r, pattern.c).resolution(scores(a, b), reduce)
        return grid.masked_fill_(pattern.pruned_blocks(mask2d), PRUNED)

    @torch.no_grad()
    def _prune(self, step: int, event: PruningEvent, ratio: float, optimizers: list[torch.optim.Optimizer], sync: bool) -> PruningRecord:
        cfg = self.config
        if cfg.scope == "local":
            for layer in self.layers:
                high = math.floor(cfg.max_sparsity_per_op * layer.numel + 1e-9)
                budget = element_budget(ratio, layer.numel)
                grid = self._grid(layer, step, ordered=min(budget, high) < self._prunable(layer))
                self._set_mask(layer, grid, budget, optimizers, sync, high=high)
                del grid
        else:
            numels = [layer.numel for layer in self.layers]
            total = element_budget(ratio, sum(numels))
            low = [math.ceil(min(cfg.min_sparsity_per_op, ratio) * n - 1e-9) for n in numels]
            high = [math.floor(cfg.max_sparsity_per_op * n + 1e-9) for n in numels]
            prunable = [self._prunable(layer) for layer in self.layers]
            every = total >= sum(prunable) and all(h >= p for h, p in zip(high, prunable))
            grids = [self._grid(layer, step, ordered=not every) for layer in self.layers]
            budgets, threshold = global_threshold(grids, [self.patterns[l.name] for l in self.layers], total, low, high)
            for layer, grid, budget, lo, hi in zip(self.layers, grids, budgets, low, high):
                self._set_mask(layer, grid, budget, optimizers, sync, low=lo, high=hi, hint=threshold)
            del grids
        self.ratio = ratio
        kept = torch.stack([torch.count_nonzero(m) for m in self.mask8.values()]).tolist()
        counts = {name: m.numel() - int(k) for (name, m), k in zip(self.mask8.items(), kept)}
        layer_sparsity = {name: counts[name] / m.numel() for name, m in self.mask8.items()}
        pruned = sum(counts.values())
        total_numel = sum(m.numel() for m in self.mask8.values())
        self.has_pruned = self.has_pruned or pruned > 0
        return PruningRecord(step, self.name, event.index, event.total, ratio, pruned / total_numel, layer_sparsity)

    def _prunable(self, layer: Layer) -> int:
        """Elements pruned when every block of the layer goes (N of every M for N:M)."""
        pattern = self.patterns[layer.name]
        if isinstance(pattern, NMPattern):
            return pattern.rows * pattern.groups * pattern.n
        return layer.numel

    def _set_mask(
        self,
        layer: Layer,
        grid: BlockGrid,
        budget: int,
        optimizers: list[torch.optim.Optimizer],
        sync: bool,
        low: int = 0,
        high: int | None = None,
        hint: float | None = None,
    ) -> None:
        pattern = self.patterns[layer.name]
        keep = layer.layout.from_2d(pattern.expand(select_blocks(grid, pattern, budget, low, high, hint)))
        keep8 = keep.contiguous().view(torch.int8)  # 0/1; fresh tensor
        mask = self.mask8[layer.name]
        mask.bitwise_and_(keep8.neg_())  # pruned weights never come back
        del keep, keep8
        if sync:  # rank 0's masks win, so every rank ends the event with identical masks
            import torch.distributed as dist

            dist.broadcast(mask, src=0)
        apply_mask_(layer.weight, mask)
        mask_optimizer_state_(optimizers, layer.weight, mask)
        self._floored_at = None  # new pruned entries: floor their second moments after this event

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Scheduler state, the ratio in force, masks and scores (tensors are copies)."""
        return {
            "layers": [layer.name for layer in self.layers],
            "scheduler": self.scheduler.state_dict(),
            "ratio": self.ratio,
            "masks": self.masks,  # bool, True = kept, like Pruning.masks
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
            mask = self.mask8[layer.name]
            mask.copy_(state["masks"][layer.name].to(device=mask.device, dtype=torch.bool)).neg_()  # 1 -> -1 = kept
        self.scores = {
            name: score.to(device=self.mask8[name].device, dtype=torch.float32, copy=True) for name, score in state["scores"].items()
        }
        self.has_pruned = any(int(torch.count_nonzero(m)) < m.numel() for m in self.mask8.values())
        self.reapply()
