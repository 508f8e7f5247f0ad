"""``type: progressive``: the blocks an event removes are zeroed gradually until the next event.

INC's progressive pruning for structured patterns. An event at step ``g`` decides, as ``basic``
does, which blocks go (the final masks of the event); instead of zeroing them at once it zeroes
them in ``S = progressive_steps`` sub-steps, at ``g + (k - 1)·(f // S)`` for ``k = 1..S``
(``f`` = the schedule's frequency; ``S`` is lowered to ``f`` when ``f < S``), so a large structured
step (whole channels) does not hit the model at once:

* ``progressive_type: scores`` (default): sub-step ``k`` zeroes, in every layer, the newly
  removed blocks with the lowest scores until ``round(k·n/S)`` of its ``n`` newly removed
  elements are zero (the event's scores; ties as the event broke them);
* ``progressive_type: linear`` (block patterns): every newly removed block is zeroed slice by slice
  along its longer side: element ``i`` of a side of length ``L`` goes at sub-step ``1 + floor(i·S/L)``.

The last event of the schedule is applied at once, so the target is reached exactly at the last
event step (``<= end_step``), unlike INC, whose last sub-steps ran after ``end_step`` (0.668 for a
0.8 target in INC's own run) and which reported 0.0. Sparsity in reports and history is the
element-wise sparsity of the masks in force. While sub-steps are pending the group keeps one byte
per weight saying at which sub-step each weight goes (saved in the state, so a resume is exact).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from prunekit.config import PrunerConfig
from prunekit.pruner.grids import StreamGrid
from prunekit.pruner.group import PrunerGroup, PruningRecord, _is_number, _short
from prunekit.pruner.masks import apply_mask_, mask_optimizer_state_
from prunekit.pruner.patterns import BlockPattern, NMPattern
from prunekit.pruner.scope import choose_blocks
from prunekit.config.pattern_syntax import parse_pattern
from prunekit.registry import register_pruner
from prunekit.schedulers.base import PruningEvent
from prunekit.config.validation import rule_error

__all__ = ["ProgressiveConfig", "ProgressivePruner"]

#: stage values: kept by the event's final masks / pruned before the event
_KEPT, _BEFORE = -1, 0


class ProgressiveConfig(PrunerConfig):
    """``type: progressive``: the basic pruner whose events zero their blocks over ``progressive_steps`` sub-steps."""

    type: str = "progressive"
    progressive_steps: int = Field(4, ge=2, le=64, description="Sub-steps over which an event's blocks are zeroed (INC: 4).")
    progressive_type: Literal["scores", "linear"] = Field(
        "scores", description="scores: lowest-scored blocks first; linear: every block slice by slice along its longer side."
    )

    @model_validator(mode="after")
    def _linear_needs_blocks(self) -> "ProgressiveConfig":
        if self.progressive_type != "linear":
            return self
        spec = parse_pattern(self.pattern)
        if spec.kind == "nm":
            raise rule_error(f"progressive_type linear slices blocks, and pattern {self.pattern} has none", "use progressive_type: scores with N:M")
        if spec.rows != 0 and spec.cols != 0 and max(spec.rows, spec.cols) < self.progressive_steps:
            raise rule_error(
                f"progressive_type linear slices each {spec.text} block along its longer side ({max(spec.rows, spec.cols)}), "
                f"fewer elements than progressive_steps ({self.progressive_steps})",
                f"lower progressive_steps to at most {max(spec.rows, spec.cols)}, use a larger block, or progressive_type: scores",
            )
        return self


@dataclasses.dataclass
class _Pending:
    """Sub-steps of the last event still to apply: sub-step ``k`` at ``step + (k - 1)·every``."""

    step: int
    stages: int
    every: int
    done: int

    def due(self, step: int) -> int:
        return min(self.stages, 1 + (step - self.step) // self.every)


@register_pruner("progressive", config=ProgressiveConfig)
class ProgressivePruner(PrunerGroup):
    """Basic pruning whose events zero their blocks gradually until the next event (INC's *_progressive types)."""

    config_model = ProgressiveConfig
    config: ProgressiveConfig

    def __init__(self, config: ProgressiveConfig, layers: list) -> None:
        super().__init__(config, layers)
        #: per layer, int8 of the weight's shape while sub-steps are pending: -1 kept, 0 pruned before
        #: the event, k in 1..S zeroed at sub-step k
        self.stage: dict[str, torch.Tensor] = {}
        self._pending: _Pending | None = None

    # ------------------------------------------------------------------ per step
    def _before_step(self, step: int, optimizers: list[torch.optim.Optimizer], sync: bool | None) -> PruningRecord | None:
        self._advance(step, optimizers)
        return super()._before_step(step, optimizers, sync)

    @torch.no_grad()
    def _advance(self, step: int, optimizers: list[torch.optim.Optimizer], to: int | None = None) -> None:
        """Apply the sub-steps due at ``step`` (all of them with ``to``); idempotent for a retried step."""
        pending = self._pending
        if pending is None:
            return
        k = pending.stages if to is not None else pending.due(step)
        if k <= pending.done:
            return
        for layer in self.layers:
            stage, mask = self.stage[layer.name], self.mask8[layer.name]
            keep = stage.eq(_KEPT).logical_or_(stage.gt(k))
            mask.copy_(keep.view(torch.int8).neg_())  # pruned ones were pruned before: masks only narrow
            apply_mask_(layer.weight, mask)
            mask_optimizer_state_(optimizers, layer.weight, mask)
        self._floored_at = None
        self.has_pruned = True
        pending.done = k
        if k >= pending.stages:
            self.stage.clear()
            self._pending = None

    # ------------------------------------------------------------------ events
    @torch.no_grad()
    def _prune(
        self, step: int, event: PruningEvent, ratio: float, optimizers: list[torch.optim.Optimizer], sync: bool, apply: bool = True
    ) -> PruningRecord:
        self._advance(step, optimizers, to=-1)  # an earlier event's sub-steps all done
        frequency = self.scheduler.config.frequency
        stages = min(self.config.progressive_steps, frequency)
        if event.index >= event.total or stages < 2:  # the last event (or no room): at once, the target is reached here
            return super()._prune(step, event, ratio, optimizers, sync, apply)
        before = {name: mask.clone() for name, mask in self.mask8.items()}
        try:
            record = super()._prune(step, event, ratio, optimizers, sync, apply=False)  # final masks, weights untouched
            stage = self._stages(step, before, stages)
            if sync:  # rank 0's order wins, as its masks do: every rank zeroes the same weights at each sub-step
                import torch.distributed as dist

                for t in stage.values():
                    dist.broadcast(t, src=0)
        except BaseException:
            for name, mask in self.mask8.items():
                mask.copy_(before[name])
            raise
        self.stage = stage
        self._pending = _Pending(step=step, stages=stages, every=max(1, frequency // stages), done=0)
        self._advance(step, optimizers)  # sub-step 1 now
        kept = torch.stack([torch.count_nonzero(m) for m in self.mask8.values()]).tolist()
        layers = {name: 1.0 - k / m.numel() for (name, m), k in zip(self.mask8.items(), kept)}
        total = sum(m.numel() for m in self.mask8.values())
        return dataclasses.replace(record, sparsity=1.0 - sum(kept) / total, layers=layers)

    def _stages(self, step: int, before: dict[str, torch.Tensor], stages: int) -> dict[str, torch.Tensor]:
        """Per layer, the int8 stage of every weight (see :attr:`stage`) from the masks before and after the event."""
        out: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            final, pre = self.mask8[layer.name], before[layer.name]
            if self.config.progressive_type == "linear":
                newly = self._linear_stage(layer, stages)
            else:
                newly = self._score_stage(layer, step, pre, final, stages)
            stage = torch.where(final.ne(0), _KEPT, torch.where(pre.eq(0), _BEFORE, newly)).to(torch.int8)
            out[layer.name] = stage
        return out

    def _score_stage(self, layer: Any, step: int, pre: torch.Tensor, final: torch.Tensor, stages: int) -> torch.Tensor:
        """The sub-step of every weight were it newly removed: by rank of its block's score among the layer's
        newly removed blocks (the event's scores, the masks of before the event)."""
        name, pattern = layer.name, self.patterns[layer.name]
        already = pre.numel() - int(torch.count_nonzero(pre))
        new = (final.numel() - int(torch.count_nonzero(final))) - already
        self.mask8[name] = pre  # score the blocks as the event saw them
        try:
            grid = self._grid(layer, step, ordered=True, checked=True)
            flat = isinstance(grid, StreamGrid)
            blocks = torch.full(grid.shape, stages, dtype=torch.int8, device=final.device)
            for k in range(stages - 1, 0, -1):
                choice = choose_blocks(grid, pattern, already + round(new * k / stages))
                for start, stop, scores, _ in grid.parts():
                    region = blocks.view(-1)[start:stop] if flat else blocks[start:stop]
                    keep = choice.keep(start if flat else start * grid.shape[1], scores, out=torch.empty(scores.shape, dtype=torch.int8, device=scores.device))
                    region.masked_fill_(keep.view(region.shape).eq(0), k)
            del grid
        finally:
            self.mask8[name] = final
        return layer.layout.from_2d(self._expand(blocks, pattern, flat))

    def _expand(self, blocks: torch.Tensor, pattern: BlockPattern | NMPattern, flat: bool) -> torch.Tensor:
        """Block-level int8 ``blocks`` to the 2-D element view."""
        if flat:
            return blocks.view(pattern.rows, pattern.cols)
        if isinstance(pattern, NMPattern):
            return blocks.repeat_interleave(pattern.m, dim=1)
        full = blocks[:, None, :, None].expand(pattern.grid_rows, pattern.r, pattern.grid_cols, pattern.c)
        return full.reshape(pattern.grid_rows * pattern.r, pattern.grid_cols * pattern.c)[: pattern.rows, : pattern.cols]

    def _linear_stage(self, layer: Any, stages: int) -> torch.Tensor:
        """Sub-step ``1 + floor(i·S/L)`` of element ``i`` along its block's longer side (length ``L``)."""
        pattern = self.patterns[layer.name]
        assert isinstance(pattern, BlockPattern)
        rows, cols = pattern.rows, pattern.cols
        device = self.mask8[layer.name].device
        if pattern.r >= pattern.c:
            i = torch.arange(rows, device=device) % pattern.r
            stage = (1 + i * stages // pattern.r).to(torch.int8)[:, None].expand(rows, cols)
        else:
            i = torch.arange(cols, device=device) % pattern.c
            stage = (1 + i * stages // pattern.c).to(torch.int8)[None, :].expand(rows, cols)
        return layer.layout.from_2d(stage)

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        pending = None if self._pending is None else dataclasses.asdict(self._pending)
        return {"progressive": {"pending": pending, "stage": {name: t.clone() for name, t in self.stage.items()}}}

    def check_extra_state(self, state: Any, where: str) -> list[str]:
        saved = state.get("progressive", {"pending": None, "stage": {}})
        if not isinstance(saved, dict) or not isinstance(saved.get("stage"), dict):
            return [f"{where}.progressive: expected {{'pending': ..., 'stage': {{layer: int8 tensor}}}}, got {_short(saved)}"]
        pending, stage = saved.get("pending"), saved["stage"]
        problems = []
        if pending is None:
            if stage:
                problems.append(f"{where}.progressive.stage: stages saved without pending sub-steps")
            return problems
        keys = {"step", "stages", "every", "done"}
        if not isinstance(pending, dict) or set(pending) != keys or not all(_is_number(v) and float(v).is_integer() for v in pending.values()):
            return [f"{where}.progressive.pending: expected integers {sorted(keys)}, got {_short(pending)}"]
        stages, every, done = int(pending["stages"]), int(pending["every"]), int(pending["done"])
        if not (2 <= stages <= 64 and every >= 1 and 1 <= done < stages and pending["step"] >= 0):
            return [f"{where}.progressive.pending: expected 2 <= stages <= 64, every >= 1, 1 <= done < stages, got {_short(pending)}"]
        for layer in self.layers:
            t = stage.get(layer.name)
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int8 or tuple(t.shape) != tuple(layer.weight.shape):
                problems.append(f"{where}.progressive.stage[{layer.name!r}]: expected an int8 tensor of shape {list(layer.weight.shape)}")
            elif t.numel() and (int(t.min()) < _KEPT or int(t.max()) > stages):
                problems.append(f"{where}.progressive.stage[{layer.name!r}]: values outside [-1, {stages}]")
        return problems

    def apply_extra_state(self, state: Any) -> None:
        saved = state.get("progressive", {"pending": None, "stage": {}})
        pending = saved.get("pending")
        self._pending = None if pending is None else _Pending(**{k: int(v) for k, v in pending.items()})
        self.stage = {layer.name: saved["stage"][layer.name].to(self.mask8[layer.name].device, copy=True) for layer in self.layers} if pending else {}
