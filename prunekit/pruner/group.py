"""One pruner group: its layers, pattern, criterion, scope, scheduler, masks and scores.

:meth:`PrunerGroup.before_step` is called once per optimizer step, just before the step (after
``backward()``): it accumulates ``snip_momentum`` scores inside the pruning window, runs the event
of that step if there is one (new masks, applied to the weights and the optimizer state), and
zeroes the gradients of the pruned weights.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Iterable, Iterator, Mapping, NamedTuple

import torch

from prunekit.config import PrunerConfig
from prunekit.errors import PruningError
from prunekit.regularization import Regularizer
from prunekit.registry import CRITERIA, REGULARIZERS, get_scheduler
from prunekit.pruner.criteria import Criterion
from prunekit.pruner.grids import (
    FIXED_PER_CHUNK_ELEMENT,
    BlockGrid,
    RowGrid,
    StreamGrid,
    TensorGrid,
    _chunk_size,
    event_chunk,
    gather_2d,
    pack_bits,
    row_ranges,
    rows_view,
    unpack_bits,
)
from prunekit.pruner import masks as _masks
from prunekit.pruner.parallel import MIN_EVENT_LAYER, parallel_map, thread_key
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
    zero_pruned_many_,
)
from prunekit.pruner.patterns import PRUNED, BlockPattern, NMPattern, make_pattern
from prunekit.pruner.scope import choose_blocks, element_budget, global_choice
from prunekit.pruner.selection import Layer, Layout
from prunekit.pruner.sharding import (
    ChainedFold,
    Halo,
    OwnedRows,
    RowShard,
    ShardComm,
    as_dtensor,
    even_starts,
    global_counts,
    halo_of,
    is_dtensor,
    reshard_rows,
)
from prunekit.schedulers.base import PruningEvent, Scheduler

__all__ = ["PruningRecord", "PrunerGroup", "GRID_SHARE", "FIXED_PER_CHUNK_ELEMENT"]

#: an event materializes a layer's block-score grid (float32, plus which weights of an N:M group stay)
#: only when the grid and the event's chunk-sized temporaries (about FIXED_PER_CHUNK_ELEMENT bytes per
#: element of a chunk: scores, comparison flags, N:M rank words) take at most this share of the weight's
#: bytes; other grids are recomputed in row chunks whenever they are read (see
#: PrunerGroup._chunked_grid and docs/performance.md)
GRID_SHARE = 0.45


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

    @classmethod
    def from_dict(cls, data: Any) -> "PruningRecord":
        """The record :meth:`as_dict` wrote; ``ValueError`` naming the first malformed field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a mapping, got {type(data).__name__}")
        expected = {"step": int, "pruner": str, "index": int, "total": int, "target": float, "sparsity": float, "layers": dict}
        unknown = sorted(str(k) for k in data if k not in expected)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for key, kind in expected.items():
            if key not in data:
                if key == "layers":
                    continue
                raise ValueError(f"field {key!r} is missing")
            value = data[key]
            if kind is float and _is_number(value):
                value = float(value)
            elif kind is dict and isinstance(value, Mapping) and all(isinstance(k, str) and _is_number(v) for k, v in value.items()):
                value = {k: float(v) for k, v in value.items()}
            elif kind is int and isinstance(value, int) and not isinstance(value, bool):
                pass
            elif kind is str and isinstance(value, str):
                pass
            else:
                raise ValueError(f"field {key!r} must be {kind.__name__ if kind is not dict else 'a mapping of layer name to number'}, got {value!r:.60}")
            values[key] = value
        return cls(**values)


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


def _short(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters (messages never echo a whole huge value)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _row_block(pattern: BlockPattern | NMPattern) -> int:
    """Rows a chunk must be a multiple of (a block's height)."""
    return pattern.r if isinstance(pattern, BlockPattern) else 1


def _res_height(pattern: BlockPattern | NMPattern) -> int:
    """Weight rows per row of the score resolution (:func:`_res_shape`)."""
    return pattern.r if isinstance(pattern, BlockPattern) and pattern.block_numel > 1 else 1


def _res_shape(pattern: BlockPattern | NMPattern) -> tuple[int, int]:
    """Shape of the resolution scores are kept at (block grid; elements for 1x1 and N:M)."""
    if isinstance(pattern, BlockPattern) and pattern.block_numel > 1:
        return pattern.grid_rows, pattern.grid_cols
    return pattern.rows, pattern.cols


class _AccumulatedLayer(NamedTuple):
    """What one step's accumulation needs of a layer, derived once per step (see ``PrunerGroup._accumulate``)."""

    layer: Layer
    pattern: BlockPattern | NMPattern
    mask: torch.Tensor
    acc: torch.Tensor
    #: 2-D row views of the weight and its gradient
    wv: torch.Tensor
    gv: torch.Tensor
    #: rows per chunk, and rows per block
    per: int
    r: int
    #: zero the pruned gradients in the same pass (the gradient is streamable)
    mask_grads: bool
    #: (integer view of the flat gradient, flat mask, its integer dtype) for the widening AND, or None
    fast: tuple[torch.Tensor, torch.Tensor, torch.dtype] | None
    #: rows scored (this rank's, or its owned space's: see Halo)
    rows: int


class PrunerGroup:
    """The per-group pruner built from a validated :class:`PrunerConfig` and its selected layers.

    Persistent memory: one int8 mask per layer (1 byte per weight, see :mod:`prunekit.pruner.masks`),
    ``snip_momentum`` scores at block resolution inside the pruning window (dropped after the last
    event), and one chunk-sized float32 scratch buffer per device. Nothing is kept per step.
    """

    #: the config model of the pruner type (``PRUNERS`` registers it with the class)
    config_model: ClassVar[type[PrunerConfig]] = PrunerConfig

    def __init__(self, config: PrunerConfig, layers: list[Layer]) -> None:
        self.config = config
        self._capped_warned: set[str] = set()  # layers global scope drove to max_sparsity_per_op (warned once)
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
            if getattr(layer.module, "sparse", False) is True and self.criterion.needs_grad:
                raise PruningError(
                    f"{where}: {type(layer.module).__name__}(sparse=True) produces sparse gradients, which criterion "
                    f"{config.criterion!r} cannot score (a sparse gradient holds only the rows of one batch); use "
                    f"criterion: magnitude for this layer (a separate pruner group), or build it with sparse=False"
                )
            pattern = self._layer_pattern(spec, layer, where)
            if pattern is not None:
                self.patterns[layer.name] = pattern
        #: the process group of the layers FSDP2 shards (one per group), see prunekit.pruner.sharding
        self.shard: RowShard | None = self._common_shard(layers)
        #: the patterns of whole sharded layers (self.patterns holds those of this rank's rows)
        self.global_patterns: dict[str, BlockPattern | NMPattern] = {}
        #: sharded layers whose one block row spans every shard (channelx1): scored by ChainedFold, grid replicated
        self._spanning: set[str] = set()
        #: sharded layers whose block rows straddle shard boundaries: this rank scores the block rows that start
        #: in its shard (its pattern is that of those rows, see Halo), with the rows of the next rank they need
        self._halos: dict[str, Halo] = {}
        for layer in layers:
            if layer.shard is not None and layer.name in self.patterns:
                where = f"pruner {self.name!r}, layer {layer.name!r}"
                whole = make_pattern(spec, Layout(layer.layout.kind, layer.shard.global_shape), where=where)
                self.global_patterns[layer.name] = whole
                spans = isinstance(whole, BlockPattern) and whole.r >= whole.rows and not layer.shard.aligned(whole.r)
                halo = None if spans else halo_of(layer.shard, _row_block(whole))
                if (spans or halo is not None) and config.lock_init_sparsity:
                    raise PruningError(
                        f"{where}: lock_init_sparsity locks zeros by whole blocks, and blocks of pattern {config.pattern!r} "
                        f"cross FSDP2's shard boundaries in this layer ({layer.shard.rows} rows over {layer.shard.world} "
                        f"ranks); use a world size whose shards of ceil(rows / world) rows are a multiple of the block "
                        f"height, or lock_init_sparsity: false"
                    )
                if spans:
                    self._spanning.add(layer.name)
                    continue
                if halo is None:
                    continue
                self._halos[layer.name] = halo
                self.patterns[layer.name] = make_pattern(spec, Layout(layer.layout.kind, (halo.rows, *layer.layout.shape[1:])), where=where)
        #: int8 masks, -1 = kept, 0 = pruned (1 byte per weight; see prunekit.pruner.masks); of this rank's rows when sharded
        self.mask8: dict[str, torch.Tensor] = {layer.name: new_mask(layer.data) for layer in layers}
        self._pairs = [(layer, self.mask8[layer.name]) for layer in layers]
        self.scores: dict[str, torch.Tensor] = {}
        #: the sparsity ratio in force (the last event's target)
        self.ratio = 0.0
        self.has_pruned = False
        self._buffers: dict[tuple[torch.device, str, int], torch.Tensor] = {}
        self._last_event_step = self.scheduler.last_event_step  # events() builds a tuple: not per step
        #: optimizer step at which Adam/AdamW second moments of pruned weights were last floored (see masks)
        self._floored_at: int | None = None
        #: the last optimizer step whose scores were accumulated (a retried step does not count twice)
        self._accumulated_at: int | None = None
        #: the sparsity the schedule starts from (``lock_init_sparsity``: the zeros found at start_step)
        self.init_ratio = 0.0
        self.regularizer: Regularizer | None = None
        if config.regularizer is not None:
            self.regularizer = REGULARIZERS.get(config.regularizer.type)(config.regularizer)

    def _common_shard(self, layers: list[Layer]) -> RowShard | None:
        """The shard of the group's sharded layers (they must share one process group)."""
        shards = [layer.shard for layer in layers if layer.shard is not None]
        if not shards:
            return None
        for layer in layers:
            if layer.shard is not None and layer.shard.group is not shards[0].group:
                raise PruningError(
                    f"pruner {self.name!r}, layer {layer.name!r}: its weight is sharded over another process group "
                    f"than layer {layers[0].name!r}'s; a pruner group prunes layers of one FSDP2 mesh"
                )
        if type(self).needs_whole_layers():
            raise PruningError(
                f"pruner {self.name!r}: pruner type {self.config.type!r} does not prune FSDP2-sharded weights yet "
                f"(layer {next(l.name for l in layers if l.shard is not None)!r} is sharded); use type: basic "
                f"(with any pattern, criterion and scheduler), or prune before fully_shard"
            )
        return shards[0]

    @classmethod
    def needs_whole_layers(cls) -> bool:
        """True for pruner types that cannot prune sharded weights (their extra state is per whole layer)."""
        return cls.extra_state is not PrunerGroup.extra_state or cls._prune is not PrunerGroup._prune

    def _layer_pattern(self, spec: Any, layer: Layer, where: str) -> BlockPattern | NMPattern | None:
        """The pattern object that scores and masks ``layer`` (None for a type that works on units of
        several layers, see :class:`prunekit.structure.pruner.StructuredPruner`)."""
        return make_pattern(spec, layer.layout, where=where)

    @property
    def pattern_label(self) -> str:
        """What the report shows in the pattern column."""
        return self.config.pattern

    @property
    def final_target(self) -> float:
        """The element-wise sparsity the group ends at (the report's final target)."""
        return self.config.target_sparsity

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """``{layer name: bool mask}``, True = kept (new tensors); of a sharded layer a DTensor laid out
        like its weight (``full_tensor()`` gathers it)."""
        return {layer.name: self._whole(layer, kept_bool(self.mask8[layer.name])) for layer in self.layers}

    def _whole(self, layer: Layer, local: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """``local`` (this rank's part of a per-layer tensor) as the whole layer's: a DTensor when sharded
        (the scores of a layer whose block row spans the shards are the same on every rank: plain)."""
        if layer.shard is None or shape is not None and layer.name in self._spanning:
            return local
        if shape is not None and layer.name in self._halos:  # owned block rows -> the even split a DTensor has
            owned, even = self._grid_splits(layer, shape[0])
            local = reshard_rows(local, owned, even, layer.shard)
        return as_dtensor(local, layer.shard, shape)

    def _grid_splits(self, layer: Layer, grid_rows: int) -> tuple[list[int], list[int]]:
        """First block row of every rank: as this rank scores them (those that start in its shard) and as a
        DTensor splits them (``torch.chunk``), for a layer whose block rows straddle shards."""
        shard, halo = layer.shard, self._halos[layer.name]
        assert shard is not None
        owned = [min(-(-s // halo.r), grid_rows) for s in shard.starts]
        return owned, list(even_starts(grid_rows, shard.world))

    def empty_scores(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An empty score tensor of layer ``name`` laid out as :meth:`state_dict` lays it out (of ``shape``
        over every rank; for loading a state saved inside the pruning window)."""
        layer = next(l for l in self.layers if l.name == name)
        device = layer.data.device
        if layer.shard is None or name in self._spanning:
            return torch.empty(shape, dtype=dtype, device=device)
        starts = even_starts(shape[0], layer.shard.world)
        r0, r1 = starts[layer.shard.rank], starts[layer.shard.rank + 1]
        return as_dtensor(torch.empty((r1 - r0, *shape[1:]), dtype=dtype, device=device), layer.shard, shape)

    def _local_part(self, layer: Layer, saved: torch.Tensor, kind: str) -> torch.Tensor:
        """This rank's part of a saved mask or score tensor of a sharded layer: a DTensor's local shard
        (loaded with ``torch.distributed.checkpoint``, any world size), or the rows of a whole tensor
        (saved by one process); anything else is returned as it is (and refused by the shape check)."""
        if is_dtensor(saved):
            if kind == "scores" and layer.name in self._halos and saved.dim() == 2:
                owned, even = self._grid_splits(layer, saved.shape[0])
                return reshard_rows(saved.to_local(), even, owned, layer.shard)  # type: ignore[arg-type]
            return saved.to_local()
        shard = layer.shard
        if shard is None or not isinstance(saved, torch.Tensor) or saved.dim() == 0 or kind == "scores" and layer.name in self._spanning:
            return saved
        if kind == "mask":
            whole, height = shard.global_shape, 1
        else:
            whole, height = _res_shape(self._whole_pattern(layer)), _res_height(self._whole_pattern(layer))
        if tuple(saved.shape) != tuple(whole):
            return saved
        return saved[-(-shard.row0 // height) : -(-shard.row1 // height)]  # the block rows that start in this shard

    def check_layers(self) -> None:
        """Raise :class:`PruningError` when a layer's weight is no longer the Parameter (and shape) the group prunes.

        ``model.load_state_dict(sd, assign=True)`` or ``module.weight = nn.Parameter(...)`` replace the
        Parameter; ``weight.data = other`` can change its shape. Masks and scores then no longer
        describe the live weight, so nothing may be pruned, reported or saved from them.
        """
        for layer in self.layers:
            live = layer.module._parameters.get("weight") if isinstance(layer.module, torch.nn.Module) else None
            if layer.shard is not None and live is not None and not is_dtensor(live):
                continue  # FSDP2 registers the gathered weight between forward and backward; the shard comes back
            if live is not layer.weight and layer.shard is None and is_dtensor(live):
                raise PruningError(
                    f"pruner {self.name!r}, layer {layer.name!r}: the model was sharded (fully_shard) after this Pruning "
                    f"session was built, so its masks describe the whole weight; build the session after fully_shard "
                    f"(and the optimizer after fully_shard too, as FSDP2 requires)"
                )
            if live is not layer.weight:
                raise PruningError(
                    f"pruner {self.name!r}, layer {layer.name!r}: the module's weight is no longer the Parameter this "
                    f"session prunes (replaced after the session was built, e.g. by model.load_state_dict(..., "
                    f"assign=True) or module.weight = nn.Parameter(...)); load weights before building the Pruning "
                    f"session and the optimizer, or load them with assign=False (copies into the same Parameters)"
                )
            if layer.weight.device != self.mask8[layer.name].device:
                raise PruningError(
                    f"pruner {self.name!r}, layer {layer.name!r}: the weight moved from {self.mask8[layer.name].device} to "
                    f"{layer.weight.device} after the session was built (model.to(...)); its masks and scores stay "
                    f"where they were. Move the model first, then build the Pruning session (and the optimizer)"
                )
            if tuple(layer.data.shape) != layer.layout.shape:
                raise PruningError(
                    f"pruner {self.name!r}, layer {layer.name!r}: the weight's shape changed from "
                    f"{list(layer.layout.shape)} to {list(layer.data.shape)} after the session was built; its masks "
                    f"and scores no longer fit. Build a new Pruning session for the resized model"
                )

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
        if self.regularizer is not None and self.in_window(step):
            self.regularizer.before_step(self)
        return record

    def after_step(self, step: int, stepped: bool = True) -> None:
        """Right after optimizer step ``step``: the regularizer's change of the weights (pruning window only;
        not when no optimizer step was taken, as in :meth:`Pruning.prune_now`)."""
        if self.regularizer is not None and self.in_window(step) and stepped:
            self.regularizer.after_step(self)

    def _refresh_second_moments(self, step: int, optimizers: list[torch.optim.Optimizer]) -> None:
        period = second_moment_refresh_period(optimizers)
        if period is None or (self._floored_at is not None and 0 <= step - self._floored_at < period):
            return
        found = False
        for layer, mask in self._pairs:
            found = floor_second_moments_(optimizers, layer.weight, mask) or found
        if found:  # the state exists from the optimizer's first step on
            self._floored_at = step

    def _before_step(self, step: int, optimizers: list[torch.optim.Optimizer], sync: bool | None) -> PruningRecord | None:
        """Accumulate scores, run the event of ``step`` if any, zero the pruned gradients.

        Between events this is one pass over the gradients (fused with the score accumulation of
        ``snip_momentum``); after the last event only the gradient masking runs. No host
        synchronisation outside events.

        **Retries.** When optimizer step ``step`` did not happen (an exception inside
        ``optimizer.step()``, or a failed event) the step runs again with the same number: its
        scores are not accumulated twice and an event that completed is not run twice. A failed
        event leaves the scheduler as it was (so the retry runs it) and every layer either untouched
        or completely pruned by it (its mask and weight agree).
        """
        if step > self._last_event_step:
            if self.scores or self._buffers:
                self.scores.clear()  # the schedule is over: scores are never read again
                self._buffers.clear()
            self.mask_grads()
            return None
        accumulate = self.criterion.accumulates and step >= self.scheduler.start_step and self._accumulated_at != step
        event = self.scheduler.event_at(step)
        if event is not None and self.scheduler.last_step == step:
            event = None  # this step's event completed, then the optimizer step failed: a retry
        if event is None:
            if accumulate:
                self._accumulate(step, mask_grads=self.has_pruned)
                self._accumulated_at = step
            else:
                self.mask_grads()
            return None
        if accumulate:
            self._accumulate(step, mask_grads=False)
            self._accumulated_at = step
        saved = self.scheduler.state_dict()
        try:
            if self.config.lock_init_sparsity and step == self.scheduler.start_step:
                self.init_ratio = self.lock_zeros()
            ratio = self.scheduler.step(step, self.config.target_sparsity, masks=_MaskView(self.mask8), init_ratio=self.init_ratio)
            record = None
            if ratio is not None:
                record = self._prune(step, event, ratio, list(optimizers), _distributed() if sync is None else sync)
        except BaseException:
            self.scheduler.load_state_dict(saved)  # the event did not happen: the retry of this step runs it
            self.has_pruned = self.has_pruned or any(int(torch.count_nonzero(m)) < m.numel() for m in self.mask8.values())
            raise
        self.mask_grads()
        return record

    @torch.no_grad()
    def lock_zeros(self, whole_units: bool = True) -> float:
        """Mark the weights that are exactly zero now as pruned (they stay zero); returns the group's
        element-wise sparsity afterwards.

        ``whole_units``: only zeros that form whole units of the group's pattern are locked (blocks
        entirely zero; in ``N:M`` groups holding at least N zeros, the first N of them), so every
        locked unit is one the pattern can express and the schedule counts it right; other zeros
        train on. ``False``
        locks every zero, element by element (``pattern_lock``).
        """
        for layer in self.layers:
            mask = self.mask8[layer.name]
            nonzero = layer.data.ne(0)
            pattern = self.patterns[layer.name]
            if whole_units and pattern.block_numel > 1 or whole_units and isinstance(pattern, NMPattern):
                nonzero = layer.layout.from_2d(self._unit_keep(layer.layout.to_2d(nonzero), pattern))
            mask.bitwise_and_(nonzero.contiguous().view(mask.shape).view(torch.int8).neg_())  # True -> 1 -> -1 (kept)
        zeros, total = self._pruned_counts()
        self.has_pruned = self.has_pruned or sum(zeros.values()) > 0
        return sum(zeros.values()) / total if total else 0.0

    def _pruned_counts(self) -> tuple[dict[str, int], int]:
        """Pruned elements per layer (whole layers: summed over the ranks when sharded) and the group's element count."""
        names = list(self.mask8)
        kept = torch.stack([torch.count_nonzero(m) for m in self.mask8.values()]).tolist() if names else []
        pruned = [m.numel() - int(k) for m, k in zip(self.mask8.values(), kept)]
        if self.shard is not None:
            pruned = global_counts(pruned, self.shard, [layer.shard is not None for layer in self.layers])
        return dict(zip(names, pruned)), sum(layer.total_numel for layer in self.layers)

    @staticmethod
    def _unit_keep(nonzero2d: torch.Tensor, pattern: BlockPattern | NMPattern) -> torch.Tensor:
        """Bool ``[rows, cols]``: False only for the zeros of whole pattern units (see :meth:`lock_zeros`)."""
        if isinstance(pattern, NMPattern):  # the first N zeros of every group holding at least N
            zero = ~nonzero2d.reshape(pattern.rows, pattern.groups, pattern.m)
            rank = zero.to(torch.int16).cumsum(-1)  # 1-based rank of each zero in its group
            full = rank[..., -1:] >= pattern.n
            return ~(zero & full & (rank <= pattern.n)).reshape(pattern.rows, pattern.cols)
        keep = torch.ones_like(nonzero2d)
        for er, ec, _, _, br, bc in pattern._parts():
            blocks = nonzero2d[er, ec].unflatten(0, (-1, br)).unflatten(2, (-1, bc))
            empty = ~blocks.any(3).any(1)  # [block rows, block cols]: every weight zero
            keep[er, ec].unflatten(0, (-1, br)).unflatten(2, (-1, bc)).copy_(~empty[:, None, :, None].expand_as(blocks))
        return keep

    def mask_grads(self) -> None:
        """Zero the gradients of the pruned weights (nothing before the first pruned weight)."""
        if not self.has_pruned:
            return
        dense = []
        for layer, mask in self._pairs:
            grad = layer.grad
            if grad is not None and grad.layout == torch.strided:
                dense.append((grad, mask))
            else:
                mask_grad_(layer.weight, mask)  # no gradient, or a sparse one
        zero_pruned_many_(dense)

    def reapply(self) -> None:
        """Apply every mask to its weight again (after an optimizer step)."""
        if self.has_pruned:
            zero_pruned_many_([(layer.data, mask) for layer, mask in self._pairs])

    def _grad(self, layer: Layer, step: int) -> torch.Tensor | None:
        grad = layer.grad
        if grad is None and self.criterion.needs_grad:
            raise PruningError(
                f"pruner {self.name!r}, layer {layer.name!r}: criterion {self.criterion.name!r} needs gradients but "
                f"the weight has none at optimizer step {step}; run loss.backward() (through this layer) before "
                f"optimizer.step(), or use criterion: magnitude"
            )
        return grad

    def _rows(self, layer: Layer) -> int:
        """Rows this rank scores: its own, or those of its owned space when block rows straddle shards (Halo)."""
        halo = self._halos.get(layer.name)
        return halo.rows if halo is not None else layer.layout.rows

    def _chunk_rows(self, layer: Layer, chunk: int | None = None) -> int:
        """Rows of the 2-D view per chunk: about ``chunk`` elements (``_masks.CHUNK`` by default; events use
        :func:`event_chunk`), a multiple of the block height, or fewer rows than a block has when a block
        row is larger than a chunk (``channelx1``: a block is a whole column; such block rows are scored
        in several chunks, see :class:`~prunekit.pruner.patterns.RowFold`)."""
        pattern = self.patterns[layer.name]
        r = _row_block(pattern)
        per = (chunk or _masks.CHUNK) // max(layer.layout.cols, 1)
        return per // r * r if per >= r else max(1, per)

    def _streamable(self, layer: Layer, grad: torch.Tensor | None) -> bool:
        """True when chunks of the 2-D view are contiguous slices of the weight (and gradient)."""
        w = layer.data
        return (
            layer.layout.kind == "linear"
            and w.is_contiguous()
            and (grad is None or (grad.is_contiguous() and grad.layout == torch.strided))
        )

    def _scratch(self, device: torch.device, numel: int, purpose: str = "scores") -> torch.Tensor:
        """A float32 buffer of at least ``numel`` elements on ``device``, shared by the layers (no per-step allocation).

        ``purpose`` names independent buffers (element scores, and their block reduction). One set per
        thread: layers run on several threads (:func:`~prunekit.pruner.parallel.parallel_map`), and a
        grid takes its buffer when it is read, in the thread that reads it.
        """
        key = (device, purpose, thread_key())
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[key] = torch.empty(numel, dtype=torch.float32, device=device)
        return buf[:numel]

    def _release_event_buffers(self) -> None:
        """After an event: drop the scratch buffers of other threads and those larger than a per-step
        chunk, so that only the calling thread's per-step buffers stay between events."""
        me = thread_key()
        for key in [k for k, buf in self._buffers.items() if k[2] != me or buf.numel() > _masks.CHUNK]:
            del self._buffers[key]

    @torch.no_grad()
    def _accumulate(self, step: int, mask_grads: bool) -> None:
        """Fold this step's block-reduced scores into ``self.scores`` (optionally masking the gradients in the same pass).

        Row chunks of about ``_masks.CHUNK`` elements, for every layout, in parallel
        (:func:`~prunekit.pruner.parallel.parallel_map`); blocks taller than a chunk (``channelx1``)
        are reduced chunk by chunk into their block row (one work item per block row) before it is
        accumulated. Each layer's views and sizes are derived once per step, here.
        """
        grads = [self._grad(layer, step) for layer in self.layers]  # every layer has one before any is touched
        items: list[tuple[_AccumulatedLayer, list[tuple[int, int]]]] = []
        spanning: list[tuple[_AccumulatedLayer, list[tuple[int, int]]]] = []
        for layer, grad in zip(self.layers, grads):
            pattern = self.patterns[layer.name]
            mask = self.mask8[layer.name]
            if layer.name not in self.scores:
                self.scores[layer.name] = torch.zeros(_res_shape(self._score_pattern(layer)), dtype=torch.float32, device=layer.data.device)
            halo = self._halos.get(layer.name)
            streamable = self._streamable(layer, grad) and halo is None
            if mask_grads and not streamable:
                mask_grad_(layer.weight, mask)
            per, r = self._chunk_rows(layer), _row_block(pattern)
            cols = layer.layout.cols
            # this runs every step: the gradient masking goes straight to the widening AND when it can
            int_dtype = _masks.INT_OF_SIZE.get(grad.element_size())
            fast_mask = (
                mask_grads and streamable and grad.device.type == "cpu" and grad.is_floating_point()
                and int_dtype is not None and per * cols <= _masks.CHUNK
            )
            wv, gv = rows_view(layer.data, layer.layout.kind), rows_view(grad, layer.layout.kind)
            if halo is not None:  # the rows of straddling block rows that the next rank(s) hold
                wv, gv = halo.exchange([wv, gv])  # type: ignore[assignment]
            acc_layer = _AccumulatedLayer(
                layer, pattern, mask, self.scores[layer.name], wv, gv,
                per, r, mask_grads and streamable,
                (grad.view(int_dtype).view(-1), mask.view(-1), int_dtype) if fast_mask else None,
                self._rows(layer),
            )
            ranges = list(row_ranges(acc_layer.rows, r, per))
            if layer.name in self._spanning:  # its fold passes from rank to rank: in this thread, after the others
                spanning.append((acc_layer, ranges))
            elif r > per:  # a block row folded over several chunks: one item, in order
                for a0 in range(0, acc_layer.rows, r):
                    items.append((acc_layer, [(a, b) for a, b in ranges if a0 <= a < a0 + r]))
            else:
                items.extend((acc_layer, [rng]) for rng in ranges)
        parallel_map(
            lambda item: self._accumulate_rows(*item),
            items,
            [sum(b - a for a, b in ranges) * acc.layer.layout.cols for acc, ranges in items],
            [acc.layer.data.device for acc, _ in items],
        )
        for acc_layer, ranges in spanning:
            self._accumulate_rows(acc_layer, ranges, spanning=True)

    def _fold(self, layer: Layer, pattern: BlockPattern, height: int, reduce: Any) -> Any:
        """The fold of one block row of ``height`` of this rank's rows; over every rank for a spanning layer."""
        if layer.name in self._spanning:
            assert layer.shard is not None
            whole = self._whole_pattern(layer)
            assert isinstance(whole, BlockPattern)
            return ChainedFold(whole.fold(whole.rows, reduce), layer.shard, layer.layout.cols, layer.data.device)
        return pattern.fold(height, reduce)

    def _accumulate_rows(self, lay: _AccumulatedLayer, ranges: list[tuple[int, int]], spanning: bool = False) -> None:
        """:meth:`_accumulate` for the row ranges ``ranges`` of one layer (in the calling thread's buffers);
        ``spanning``: every row of this rank, of a block row that spans the shards (a :class:`ChainedFold`)."""
        reduce = self.config.reduce
        pattern, acc, per, r = lay.pattern, lay.acc, lay.per, lay.r
        rows, cols = lay.rows, lay.layer.layout.cols
        device = lay.layer.data.device
        scratch = self._scratch(device, max(1, min(per, rows) * cols))
        blocks = isinstance(pattern, BlockPattern) and pattern.block_numel > 1 or spanning
        tall = r > per or spanning
        if blocks:
            reduced = self._scratch(device, (1 if tall else -(-min(per, rows) // r)) * pattern.grid_cols, "blocks")
            fold = None
        if spanning:  # the rank's rows are one part of the block row (maybe none): the fold runs whatever they are
            fold = self._fold(lay.layer, pattern, rows, reduce)
        if lay.fast is not None:
            g_bits, m_flat, int_dtype = lay.fast
            widened = _masks.widen_buffer(device, int_dtype)
        for a, b in ranges:
            if lay.fast is not None:
                _masks.and_widened_(g_bits[a * cols : b * cols], m_flat[a * cols : b * cols], widened)
            elif lay.mask_grads:
                zero_pruned_(lay.gv[a:b], lay.mask[a:b])
            wa = lay.wv[a:b]
            out = scratch[: (b - a) * cols].view(wa.shape)
            s = self.criterion.score(wa, lay.gv[a:b], out=out).reshape(b - a, cols)
            if blocks and not tall:
                target = acc[a // r : -(-b // r)]
                res = pattern.rows_pattern(b - a).resolution(s, reduce, out=reduced[: target.numel()].view(target.shape))
                self.criterion.accumulate(target, res)
            elif spanning:
                fold.add(s)
            elif blocks:  # a part of one block row taller than a chunk
                a0 = a // r * r
                if a == a0:
                    fold = pattern.fold(min(a0 + r, rows) - a0, reduce)
                fold.add(s)
                if b == min(a0 + r, rows):
                    row = reduced[: pattern.grid_cols].view(1, -1)
                    fold.finish(row)
                    self.criterion.accumulate(acc[a // r : a // r + 1], row)
            else:
                self.criterion.accumulate(acc[a:b], s)
        if spanning:
            row = reduced[: pattern.grid_cols].view(1, -1)
            fold.finish(row)
            self.criterion.accumulate(acc[0:1], row)

    # ------------------------------------------------------------------ events
    @torch.no_grad()
    def _grid(self, layer: Layer, step: int, ordered: bool = True, checked: bool = False) -> BlockGrid:
        """The layer's block-score grid; ``ordered=False``: every block goes at this event, so N:M
        patterns skip the group scores (see :meth:`NMPattern.grid_rows_from`). ``checked``: the
        scores are known to be finite (:meth:`_check_finite`); otherwise the grid is scanned.

        ``1x1`` scores are computed chunk by chunk whenever they are read (:class:`StreamGrid`);
        other patterns are scored in row chunks (:meth:`_chunked_grid`), into a grid when it is small
        next to the weight, else again whenever they are read (:class:`RowGrid`).
        """
        pattern = self.patterns[layer.name]
        grad = None if not self.criterion.needs_grad else self._grad(layer, step)
        acc = self._accumulated(layer, step) if self.criterion.accumulates else None
        if isinstance(pattern, NMPattern):  # the largest element score (for _grid_finite): only when unchecked
            pattern.score_peak = None if checked else torch.zeros((), dtype=torch.float32, device=layer.weight.device)
        whole = self._whole_pattern(layer)  # (a shard's rows may be fewer than a block's: judge by the whole layer's)
        if isinstance(whole, BlockPattern) and whole.block_numel == 1 and self._streamable(layer, grad):
            grid: BlockGrid = self._stream_grid(layer, pattern, grad)
        else:
            grid = self._chunked_grid(layer, self._score_pattern(layer), grad, acc, ordered)
        if layer.shard is None:  # see split_grid (a sharded layer's rows may come from other ranks as they are read)
            grid.weight_bytes = layer.weight_bytes  # type: ignore[attr-defined]
        if not checked:
            if isinstance(pattern, NMPattern) and isinstance(grid, RowGrid):
                for _ in grid.chunks():  # a pass that sets score_peak
                    pass
            finite = self._grid_finite(layer, grid)
            if self.shard is not None and global_counts([0 if finite else 1], self.shard)[0] and finite:
                raise PruningError(
                    f"pruner {self.name!r}, layer {layer.name!r}: {self.criterion.name} scores at optimizer step {step} are "
                    f"not finite on another rank (that rank says more); nothing was pruned at this event"
                )
            if not finite:
                raise PruningError(
                    f"pruner {self.name!r}, layer {layer.name!r}: {self.criterion.name} scores at optimizer step {step} are "
                    f"not finite; criterion {self.criterion.name!r} produced NaN/inf from finite weights"
                    f"{' and gradients' if self.criterion.needs_grad else ''}: make its score() return finite values"
                )
        return grid

    def _accumulated(self, layer: Layer, step: int) -> torch.Tensor:
        res = self.scores.get(layer.name)
        if res is None:
            raise PruningError(
                f"pruner {self.name!r}, layer {layer.name!r}: no accumulated {self.criterion.name} scores at optimizer "
                f"step {step}; the scores are gathered from start_step on, one backward pass per optimizer step"
            )
        return res

    @torch.no_grad()
    def _check_finite(self, step: int) -> bool:
        """Raise :class:`PruningError` naming the first layer whose weights, gradients or accumulated
        scores hold NaN/inf; before any mask of the event changes, so a refused event changes nothing.

        One rule for every criterion: non-finite weights are an error (never pruned silently).
        Costs one min/max reduction per tensor and one host read per device. Returns True when this
        proves every score of the event finite (the criterion declares its inputs, see
        :meth:`Criterion.inputs`, or accumulates scores); False leaves the scores to be scanned.
        """
        proven = True
        checks: list[tuple[Layer, str, torch.Tensor]] = []
        for layer in self.layers:
            weight = layer.data
            if weight.numel() == 0:
                continue
            checks.append((layer, "weights", weight))
            grad = self._grad(layer, step) if self.criterion.needs_grad else None
            if self.criterion.accumulates:
                checks.append((layer, f"accumulated {self.criterion.name} scores", self._accumulated(layer, step)))
                continue
            inputs = self.criterion.inputs(weight, grad)
            if inputs is None:
                proven = False
                continue
            checks.extend((layer, "gradients", t) for t in inputs if t is not weight and t is not layer.weight)
        by_device: dict[torch.device, list[int]] = {}
        for i, (_, _, t) in enumerate(checks):
            if t.numel():  # (a shard may hold no rows, or own no block row)
                by_device.setdefault(t.device, []).append(i)
        failed: list[int] = []
        for indices in by_device.values():
            extremes = torch.stack([torch.stack(torch.aminmax(checks[i][2])).float() for i in indices])
            failed += [i for i, ok in zip(indices, torch.isfinite(extremes).all(1).tolist()) if not ok]
        failed_anywhere = len(failed)
        if self.shard is not None:  # one answer on every rank: `proven` decides which collectives follow
            failed_anywhere, unproven = global_counts([len(failed), 0 if proven else 1], self.shard)
            proven = unproven == 0
        if failed_anywhere and not failed:
            raise PruningError(
                f"pruner {self.name!r}: weights, gradients or scores of a layer are not finite (NaN/inf) on another "
                f"rank at optimizer step {step} (that rank names the layer), so no pruning decision can be made "
                f"(nothing was pruned at this event); fix the divergence, then train on"
            )
        if failed:  # NaN weights make NaN gradients in other layers: name a layer whose weights are the cause
            layer, what, _ = checks[min(failed, key=lambda i: (checks[i][1] != "weights", i))]
            raise PruningError(
                f"pruner {self.name!r}, layer {layer.name!r}: the {what} are not finite (NaN/inf) at optimizer "
                f"step {step}, so no pruning decision can be made (nothing was pruned at this event); fix "
                f"the divergence (lower the learning rate, clip gradients, use a GradScaler) or the NaN "
                f"weights that were loaded, then train on"
            )
        return proven

    def _grid_finite(self, layer: Layer, grid: BlockGrid) -> bool:
        """True when every score of ``grid`` is finite (one host read); for criteria that do not
        declare their inputs. An N:M grid is judged by the largest element score its pattern saw
        (a group score reduces only the N lowest, so it misses a non-finite score of a weight that stays).
        """
        pattern = self.patterns[layer.name]
        if isinstance(pattern, NMPattern) and pattern.score_peak is not None:
            return bool(torch.isfinite(pattern.score_peak))
        # scores are >= 0 or PRUNED: the maximum is NaN or inf exactly when some score is
        peaks = [c.max() for _, c in grid.chunks() if c.numel()]
        return not peaks or bool(torch.isfinite(torch.stack(peaks).max()))  # (a shard may hold no rows)

    def _stream_grid(self, layer: Layer, pattern: BlockPattern, grad: torch.Tensor | None) -> StreamGrid:
        """1x1 scores computed chunk by chunk from the weight (and gradient) or the accumulated scores."""
        w = layer.data.view(-1)
        g = grad.view(-1) if grad is not None else None
        m = self.mask8[layer.name].view(-1)
        acc = self.scores[layer.name].view(-1) if self.criterion.accumulates else None
        size = event_chunk(w.numel())
        criterion = self.criterion

        def score(start: int, stop: int) -> torch.Tensor:
            out = self._scratch(w.device, min(size, w.numel()))[: stop - start]
            if acc is not None:
                out.copy_(acc[start:stop])
            else:
                got = criterion.score(w[start:stop], None if g is None else g[start:stop], out=out)
                if got is not out:  # a criterion that ignores `out` (its result would be lost)
                    out.copy_(got.reshape(out.shape))
            return mark_pruned_(out, m[start:stop])  # = masked_fill_(pruned, PRUNED), without a bool kernel

        def sample(stride: int) -> torch.Tensor:
            if acc is not None:
                s = acc[::stride].clone()
            else:
                s = criterion.score(w[::stride], None if g is None else g[::stride])
            return s.masked_fill_(m[::stride] == 0, PRUNED)

        grid = StreamGrid(score, sample, (pattern.rows, pattern.cols), pattern, w.device, chunk=size)
        grid.known_pruned = m.numel() - int(torch.count_nonzero(m))  # = the scores marked PRUNED, without a pass
        return grid

    def _chunked_grid(
        self, layer: Layer, pattern: BlockPattern | NMPattern, grad: torch.Tensor | None, acc: torch.Tensor | None, ordered: bool = True
    ) -> BlockGrid:
        """The block grid scored in row chunks (chunk-sized temporaries), from the weight (and gradient)
        or the accumulated scores ``acc``, for every layout (chunks are views, see :func:`rows_view`).

        Materialized (a :class:`TensorGrid`) when its float32 scores (and, for N:M, which weights of a
        group stay) and the event's chunk-sized temporaries (:data:`FIXED_PER_CHUNK_ELEMENT` bytes per
        chunk element) take at most :data:`GRID_SHARE` of the weight's bytes: on large layers blocks
        of 4 or more weights on 32-bit weights, of 8 or more on 16-bit ones, and tall blocks
        (``channelx1``: one score per column, reduced over row chunks). Otherwise each read
        recomputes the scores of a range of block rows (a :class:`RowGrid`: ``1x2``, ``1:2``, or
        ``4x1`` and ``2:4`` on 16-bit weights); an N:M grid that a threshold search reads more than
        once keeps which weights of each group stay (one byte per group) from its first read, so
        later reads only sum the N lowest. Accumulated block scores are read in place (copied a
        chunk at a time to mark the pruned blocks).
        """
        reduce = self.config.reduce
        rows, cols = layer.layout.rows, layer.layout.cols
        kind = layer.layout.kind
        device = layer.data.device
        criterion = self.criterion
        wv = rows_view(layer.data, kind)
        gv = rows_view(grad, kind) if grad is not None and acc is None else None
        mask = self.mask8[layer.name]
        mv = rows_view(mask, kind)
        halo = self._halos.get(layer.name)
        if halo is not None:  # the owned space: this rank's rows from halo.lead on and the next rank's halo rows
            mv = mv[halo.lead :]
            rows = halo.rows
            if acc is None:
                got = halo.exchange([wv] if gv is None else [wv, gv])
                wv, gv = got[0], (got[1] if gv is not None else None)  # type: ignore[assignment]
            else:
                wv = OwnedRows(wv[halo.lead :], None)  # type: ignore[assignment]
        # (samples are a guide for the searches: they read this rank's own rows only)
        sample_wv = wv.own if isinstance(wv, OwnedRows) else wv
        sample_gv = gv.own if isinstance(gv, OwnedRows) else gv
        any_pruned = int(torch.count_nonzero(mask)) < mask.numel()
        size = event_chunk(layer.numel)
        per = self._chunk_rows(layer, size)
        nm = isinstance(pattern, NMPattern)
        r = 1 if nm else pattern.r
        spanning = layer.name in self._spanning  # one block row over every shard: a ChainedFold, whole-layer pattern
        tall = r > per or spanning
        step = 1 if tall else per // r  # block rows per part
        gr, gc = (rows, pattern.groups) if nm else (pattern.grid_rows, pattern.grid_cols)
        block_acc = acc is not None and not nm  # accumulated scores at block resolution: the grid itself

        def scores(a: int, b: int) -> torch.Tensor:
            """float32 element scores of rows ``a:b``, ``[b - a, cols]`` (in the reading thread's scratch buffer)."""
            out = self._scratch(device, min(per, rows) * cols)[: (b - a) * cols]
            if acc is not None:
                return out.view(b - a, cols).copy_(acc[a:b])
            wa = wv[a:b]
            out = out.view(wa.shape)
            got = criterion.score(wa, None if gv is None else gv[a:b], out=out)
            if got is not out:  # a criterion that ignores `out`
                out.copy_(got.reshape(out.shape))
            return out.view(b - a, cols)

        def mask_rows(a: int, b: int, stride: int = 1) -> torch.Tensor:
            return mv[a:b:stride].reshape(-(-(b - a) // stride), cols)

        def block_rows(g0: int, g1: int, dest: torch.Tensor) -> torch.Tensor:
            a, b = g0 * r, min(g1 * r, rows)
            if block_acc:
                dest.copy_(acc[g0:g1])
            elif not tall:
                res = pattern.rows_pattern(b - a).resolution(scores(a, b), reduce, out=dest)
                if res is not dest:  # 1x1: the scores themselves
                    dest.copy_(res)
            else:  # one block row, taller than a chunk: the same scores, folded chunk by chunk
                fold = self._fold(layer, pattern, b - a, reduce)
                for s, e in row_ranges(b - a, r, per):
                    fold.add(scores(a + s, a + e))
                fold.finish(dest)
            if any_pruned:
                dest.masked_fill_(pattern.pruned_rows(mask_rows(a, b, r)), PRUNED)
            return dest

        def group_rows(g0: int, g1: int, dest: torch.Tensor, stay: torch.Tensor, known: bool = False) -> torch.Tensor:
            pattern.choose_rows(scores(g0, g1), mask_rows(g0, g1).contiguous(), reduce, ordered, dest, stay, any_pruned, known)
            return dest

        def count_pruned() -> int:
            """Elements in blocks scored PRUNED, from the mask (a strided read for blocks)."""
            if not any_pruned:
                return 0
            total = torch.zeros((), dtype=torch.int64, device=device)
            for g0 in range(0, gr, step):
                g1 = min(g0 + step, gr)
                if nm:
                    total += torch.count_nonzero(pattern.pruned_groups(mask_rows(g0, g1).contiguous())) * pattern.n
                elif spanning:
                    total += pattern.count(pattern.pruned_rows(mask_rows(0, rows, r)))
                else:
                    a, b = g0 * r, min(g1 * r, rows)
                    total += pattern.rows_pattern(b - a).count(pattern.pruned_rows(mask_rows(a, b, r)))
            return int(total)

        wbytes = layer.weight_bytes
        gbytes = 4 * gr * gc + (pattern.new_stay(0, device).element_size() * gr * gc * (1 if pattern.m in (2, 4, 8) else pattern.n) if nm else 0)
        # (an N:M grid of an event that prunes every group is read once, by the commit: never held)
        if not block_acc and (ordered or not nm) and gbytes + FIXED_PER_CHUNK_ELEMENT * size <= GRID_SHARE * wbytes:
            grid = torch.empty(gr, gc, dtype=torch.float32, device=device)
            stay = pattern.new_stay(gr, device) if nm else None
            for g0 in range(0, gr, step):
                g1 = min(g0 + step, gr)
                if nm:
                    group_rows(g0, g1, grid[g0:g1], stay[g0:g1])
                else:
                    block_rows(g0, g1, grid[g0:g1])
            # the searches scan the grid in chunks of as many blocks as a chunk has weights / block size
            scan = max(1, size // (pattern.n if nm else pattern.block_numel))
            tensor_grid = TensorGrid(grid, pattern, step=step, extra=stay, chunk=scan)
            tensor_grid.known_pruned = None if any_pruned else 0
            return tensor_grid

        stay_buf = pattern.new_stay(step, device) if nm else None
        # N:M read more than once (a threshold search): which weights of each group stay is kept from the
        # first read (one byte per group), so later reads sum the N lowest without ranking them again
        stay_bytes = pattern.new_stay(0, device).element_size() * gr * gc if nm else 0
        ranked: list[bool] | None = None
        if nm and ordered and pattern.m in (2, 4, 8) and stay_bytes + FIXED_PER_CHUNK_ELEMENT * size <= GRID_SHARE * wbytes:
            stay_buf = pattern.new_stay(gr, device)
            ranked = [False] * -(-gr // step)

        def score_rows(g0: int, g1: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            dest = self._scratch(device, step * gc, "blocks")[: (g1 - g0) * gc].view(g1 - g0, gc)
            if not nm:
                return block_rows(g0, g1, dest), None
            if ranked is None:
                return group_rows(g0, g1, dest, stay_buf[: g1 - g0]), stay_buf[: g1 - g0]
            known, ranked[g0 // step] = ranked[g0 // step], True
            return group_rows(g0, g1, dest, stay_buf[g0:g1], known), stay_buf[g0:g1]

        def sample_at(idx: torch.Tensor) -> torch.Tensor:
            """Scores of the blocks at flat indices ``idx`` (blocks of more than 4x4 weights: of their first 4x4)."""
            gi, gj = idx // gc, idx % gc
            if block_acc:
                values = acc.reshape(-1)[idx]
            elif nm:
                j = gj[:, None] * pattern.m + torch.arange(pattern.m, device=device)
                i = gi[:, None].expand_as(j)
                got = acc[i, j] if acc is not None else criterion.score(gather_2d(sample_wv, i, j), None if gv is None else gather_2d(sample_gv, i, j))
                pruned = gather_2d(mv, i, j) == 0
                low = got.float().masked_fill(pruned, PRUNED).sort(dim=-1).values[:, : pattern.n]  # the N lowest
                values = low.amax(-1) if reduce == "max" else low.sum(-1) / (pattern.n if reduce == "mean" else 1)
                values.masked_fill_(pruned.any(-1), PRUNED)
            else:
                dr = torch.arange(min(r, 4), device=device)
                dc = torch.arange(min(pattern.c, 4), device=device)
                i = ((gi * r)[:, None, None] + dr[None, :, None]).clamp_(max=max(0, sample_wv.shape[0] - 1))
                j = ((gj * pattern.c)[:, None, None] + dc[None, None, :]).clamp_(max=cols - 1)
                i, j = torch.broadcast_tensors(i, j)
                elem = criterion.score(gather_2d(sample_wv, i, j), None if gv is None else gather_2d(sample_gv, i, j)).float()
                flat = elem.reshape(elem.shape[0], -1)
                values = flat.amax(1) if reduce == "max" else flat.mean(1) * (1 if reduce == "mean" else r * pattern.c)
            if any_pruned and not nm:
                values = values.masked_fill(gather_2d(mv, gi * r, gj * pattern.c) == 0, PRUNED)
            return values

        def sample(stride: int) -> torch.Tensor:
            """Scores of every ``stride``-th block (flat order), gathered from the weights in at most 4
            pieces of at least 4096 samples (a guide for the threshold search, which then counts exactly)."""
            piece = max(4096, -(-gr * gc // stride // 4)) * stride
            parts = [sample_at(torch.arange(a, min(a + piece, gr * gc), stride, device=device)) for a in range(0, gr * gc, piece)]
            return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float32, device=device)

        return RowGrid(score_rows, sample, (gr, gc), pattern, device, step, known_pruned=count_pruned)

    @torch.no_grad()
    def _prune(
        self, step: int, event: PruningEvent, ratio: float, optimizers: list[torch.optim.Optimizer], sync: bool, apply: bool = True
    ) -> PruningRecord:
        """The event: new masks for ``ratio`` (ANDed into the old ones), applied to the weights and the
        optimizer state unless ``apply`` is False (a type that zeroes them later, see ``progressive``)."""
        cfg = self.config
        checked = self._check_finite(step)  # before any mask changes
        # layers in parallel, each on one thread (parallel.py), except when collectives (broadcasts, the
        # reductions of sharded layers) must keep one order
        sizes, devices = [l.numel for l in self.layers], [l.data.device for l in self.layers]
        serial = sync or self.shard is not None

        def each_layer(fn: Any, items: list[Any]) -> list[Any]:
            if serial:
                return [fn(item) for item in items]
            return parallel_map(fn, items, sizes, devices, MIN_EVENT_LAYER)

        try:
            if cfg.scope == "local":

                def prune_layer(layer: Layer) -> None:
                    high = math.floor(cfg.max_sparsity_per_op * layer.total_numel + 1e-9)
                    budget = element_budget(ratio, layer.total_numel)
                    grid = self._grid(layer, step, ordered=min(budget, high) < self._prunable(layer), checked=checked)
                    self._set_mask(layer, grid, budget, optimizers, sync, high=high, apply=apply)

                each_layer(prune_layer, self.layers)
            else:
                numels = [layer.total_numel for layer in self.layers]
                total = element_budget(ratio, sum(numels))
                low = [math.ceil(min(cfg.min_sparsity_per_op, ratio) * n - 1e-9) for n in numels]
                high = [math.floor(cfg.max_sparsity_per_op * n + 1e-9) for n in numels]
                prunable = [self._prunable(layer) for layer in self.layers]
                every = total >= sum(prunable) and all(h >= p for h, p in zip(high, prunable))
                grids = each_layer(lambda layer: self._grid(layer, step, ordered=not every, checked=checked), self.layers)
                budgets, threshold, counts = global_choice(
                    grids, [self._whole_pattern(l) for l in self.layers], total, low, high, self._comm(self.layers, grids)
                )

                def commit_layer(i: int) -> None:
                    hint_counts = None if counts is None else counts[i]
                    self._set_mask(
                        self.layers[i], grids[i], budgets[i], optimizers, sync, low=low[i], high=high[i], hint=threshold,
                        hint_counts=hint_counts, apply=apply,
                    )
                    grids[i] = None  # type: ignore[call-overload]  # its scores are not needed any more

                each_layer(commit_layer, list(range(len(self.layers))))
                del grids
                self._warn_capped(step, [l.name for l, b, h, p in zip(self.layers, budgets, high, prunable) if 0 < h < p and b >= h])
        finally:
            self._release_event_buffers()
        self.ratio = ratio
        counts_pruned, total_numel = self._pruned_counts()
        layer_sparsity = {layer.name: counts_pruned[layer.name] / layer.total_numel for layer in self.layers}
        pruned = sum(counts_pruned.values())
        self.has_pruned = self.has_pruned or pruned > 0
        return PruningRecord(step, self.name, event.index, event.total, ratio, pruned / total_numel, layer_sparsity)

    def _whole_pattern(self, layer: Layer) -> BlockPattern | NMPattern:
        """The pattern of the whole layer (``self.patterns`` holds that of this rank's rows of a sharded one)."""
        return self.global_patterns.get(layer.name) or self.patterns[layer.name]

    def _score_pattern(self, layer: Layer) -> BlockPattern | NMPattern:
        """The pattern of the scores this rank holds: the whole layer's when its block row spans the shards."""
        return self._whole_pattern(layer) if layer.name in self._spanning else self.patterns[layer.name]

    def _grid_sharded(self, layer: Layer) -> bool:
        """True when this rank's grid of ``layer`` holds only its own block rows (False: the whole grid)."""
        return layer.shard is not None and layer.shard.world > 1 and layer.name not in self._spanning

    def _grid_offset(self, layer: Layer, grid: BlockGrid) -> int:
        """Global flat index of the first block of this rank's grid of a sharded layer (0 when whole)."""
        if not self._grid_sharded(layer):
            return 0
        halo = self._halos.get(layer.name)
        if halo is not None:
            return halo.grid_row0 * grid.shape[1]
        # (the block height of the whole layer: a shard's last rows may be fewer than a block has)
        rows_before = layer.shard.row0 // (1 if isinstance(grid, StreamGrid) else _row_block(self._whole_pattern(layer)))
        return rows_before * (layer.layout.cols if isinstance(grid, StreamGrid) else grid.shape[1])

    def _comm(self, layers: list[Layer], grids: list[BlockGrid]) -> ShardComm | None:
        """The communicator of a threshold search over ``grids`` (``None`` when no layer is sharded)."""
        if self.shard is None or not any(self._grid_sharded(l) for l in layers):
            return None
        totals = []
        for layer, grid in zip(layers, grids):
            whole = self._whole_pattern(layer)
            if isinstance(grid, StreamGrid):
                totals.append(layer.total_numel)
            elif isinstance(whole, NMPattern):
                totals.append(whole.rows * whole.groups)
            else:
                totals.append(whole.grid_rows * whole.grid_cols)
        return ShardComm(self.shard, [self._grid_sharded(l) for l in layers], [self._grid_offset(l, g) for l, g in zip(layers, grids)], totals)

    def _warn_capped(self, step: int, capped: list[str]) -> None:
        """Global scope drove layers to ``max_sparsity_per_op``: say so once for each new layer that got there."""
        new = [name for name in capped if name not in self._capped_warned]
        if not new:
            return
        self._capped_warned.update(new)
        shown = ", ".join(new[:6]) + (f" and {len(new) - 6} more" if len(new) > 6 else "")
        warnings.warn(
            f"pruner {self.name!r} (global scope), step {step}: {len(new)} layer(s) reached max_sparsity_per_op "
            f"{self.config.max_sparsity_per_op}: {shown}. Global scope meets the group's target by emptying the layers "
            f"whose scores are lowest, which can break a model; consider scope: local, a lower max_sparsity_per_op, "
            f"or excluding those layers (docs/criteria_patterns_scopes.md)",
            UserWarning,
            stacklevel=2,
        )

    def _prunable(self, layer: Layer) -> int:
        """Elements pruned when every block of the layer goes (N of every M for N:M)."""
        pattern = self._whole_pattern(layer)
        if isinstance(pattern, NMPattern):
            return pattern.rows * pattern.groups * pattern.n
        return layer.total_numel

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
        hint_counts: tuple[int, int] | None = None,
        apply: bool = True,
    ) -> None:
        """Choose the layer's blocks (:func:`choose_blocks`) and commit the choice into its int8 mask part by
        part (a range of block rows at a time: chunk-sized temporaries, never a keep mask of the layer's
        size); then zero the pruned weights and optimizer state. Pruned weights never come back (the
        new mask is ANDed into the old one).

        ``sync``: rank 0's choice wins, so every rank ends the event with identical masks: the keep of
        every part (its blocks; for N:M its weights, since which N of a group go is part of the choice)
        is packed into bits, 1 per block or weight, and broadcast from rank 0 *before* anything is
        committed, so a failed broadcast leaves the layer's mask and weight as they were.
        """
        pattern = self.patterns[layer.name]
        comm = self._comm([layer], [grid])
        choice = choose_blocks(grid, self._whole_pattern(layer), budget, low, high, hint, hint_counts, comm)
        origin = comm.offsets[0] if comm is not None else 0  # the global flat index of this rank's first block
        sync = sync and layer.shard is None  # each rank decides for its own rows of a sharded layer
        mask = self.mask8[layer.name]
        mv = rows_view(mask, layer.layout.kind)
        rows = layer.layout.rows
        halo = self._halos.get(layer.name)
        if halo is not None:  # commit into this rank's rows of its owned space; the rest goes to their ranks
            mv, rows = mv[halo.lead :], halo.rows
        tail_keep: list[torch.Tensor] = []  # the keep flags of the last block row, when it straddles into the next rank
        per = self._chunk_rows(layer, event_chunk(layer.numel))
        flat = isinstance(grid, StreamGrid)  # 1x1 on a contiguous 2-D view: parts are flat element ranges
        nm = isinstance(pattern, NMPattern)
        r = 1 if nm or flat else pattern.r
        gc = grid.shape[1]
        buf = torch.empty(max(_chunk_size(grid), getattr(grid, "step", 0) * gc), dtype=torch.int8, device=mask.device)

        def decide(start: int, stop: int, scores: torch.Tensor, extra: Any) -> torch.Tensor:
            """int8 0/1 keep of a part: its weights (flat ranges, N:M) or blocks."""
            offset = origin + (start if flat else start * gc)
            keep = choice.keep(offset, scores, out=buf[: scores.numel()].view(scores.shape))
            return pattern.element_keep(keep, extra) if nm else keep

        def commit(start: int, stop: int, keep: torch.Tensor) -> None:
            if flat:
                mask.view(-1)[start:stop].bitwise_and_(keep.neg_())
            elif nm:
                pattern.and_keep_(mv[start:stop], keep)
            else:
                keep.neg_()
                if halo is not None and halo.halo and stop == grid.shape[0]:
                    tail_keep.append(keep[-1].clone())
                a, b = start * r, min(stop * r, rows)
                for s, e in row_ranges(b - a, r, per) if r > per else ((0, b - a),):
                    region = mv[a + s : a + e]  # (the rows past this rank's own are the halo's: not here)
                    if region.shape[0]:
                        pattern.and_keep_(region, keep)

        if sync:
            import torch.distributed as dist

            spans, packed = [], []
            for start, stop, scores, extra in grid.parts():  # in the calling thread: collectives keep one order
                keep = decide(start, stop, scores, extra)
                spans.append((start, stop, keep.shape))
                packed.append(pack_bits(keep))
            bits = torch.cat(packed) if packed else torch.empty(0, dtype=torch.uint8, device=mask.device)
            del packed
            dist.broadcast(bits, src=0)  # before the commit: a failed broadcast leaves the layer as it was
            offset = 0
            for start, stop, shape in spans:
                n = math.prod(shape)
                commit(start, stop, unpack_bits(bits[offset : offset + -(-n // 8)], n).view(shape))
                offset += -(-n // 8)
            del bits
        else:
            for start, stop, scores, extra in grid.parts():
                commit(start, stop, decide(start, stop, scores, extra))
        if halo is not None:  # straddling block rows: their owners' choice for this rank's lead rows
            lead_keep = halo.swap_keep(tail_keep[0] if tail_keep else None, gc, mask.device)
            if lead_keep is not None:
                self._whole_pattern(layer).and_keep_(rows_view(mask, layer.layout.kind)[: halo.lead], lead_keep.view(1, -1))
        if apply:
            chunk = event_chunk(layer.numel)
            apply_mask_(layer.weight, mask, chunk)
            mask_optimizer_state_(optimizers, layer.weight, mask, chunk)
            self._floored_at = None  # new pruned entries: floor their second moments after this event

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Scheduler state, the ratio in force, masks and scores (tensors are copies)."""
        return {
            "layers": [layer.name for layer in self.layers],
            "scheduler": self.scheduler.state_dict(),
            "ratio": self.ratio,
            "masks": self.masks,  # bool, True = kept, like Pruning.masks (DTensors when sharded)
            "scores": {
                layer.name: self._whole(layer, self.scores[layer.name].clone(), _res_shape(self._whole_pattern(layer)))
                for layer in self.layers if layer.name in self.scores
            },
            "init_ratio": self.init_ratio,
            "accumulated_at": self._accumulated_at,
            **self.extra_state(),
        }

    # the extension points of pruner types that keep more state (tensors and plain values only)
    def extra_state(self) -> dict[str, Any]:
        """Keys a pruner type adds to :meth:`state_dict` (copies)."""
        return {}

    def check_extra_state(self, state: Mapping[str, Any], where: str) -> list[str]:
        """Problems of the keys :meth:`extra_state` wrote (empty: they load)."""
        return []

    def apply_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore the keys :meth:`extra_state` wrote (checked before)."""

    def check_state(self, state: Any, where: str) -> list[str]:
        """Every reason :meth:`load_state_dict` would refuse ``state`` (empty: it loads), without changing anything.

        ``where`` prefixes each message (the key path of the group inside the session state).
        """
        if not isinstance(state, Mapping):
            return [f"{where}: expected a mapping, got {type(state).__name__}"]
        problems: list[str] = []
        missing = [k for k in ("layers", "scheduler", "ratio", "masks", "scores") if k not in state]
        if missing:
            return [f"{where}: missing key(s) {', '.join(missing)}"]
        names = [layer.name for layer in self.layers]
        saved_layers = state["layers"]
        if not isinstance(saved_layers, (list, tuple)) or list(saved_layers) != names:
            problems.append(
                f"{where}.layers: the saved state has layers {_short(saved_layers)} but the model selects {_short(names)}; "
                f"load the state into the same model architecture and config"
            )
        ratio = state["ratio"]
        if not _is_number(ratio) or not 0.0 <= float(ratio) <= 1.0:
            problems.append(f"{where}.ratio: expected a number within [0, 1], got {_short(ratio)}")
        accumulated = state.get("accumulated_at")
        if accumulated is not None and (not isinstance(accumulated, int) or isinstance(accumulated, bool) or accumulated < 0):
            problems.append(f"{where}.accumulated_at: expected None or an integer >= 0, got {_short(accumulated)}")
        init = state.get("init_ratio", 0.0)
        if not _is_number(init) or not 0.0 <= float(init) < 1.0:
            problems.append(f"{where}.init_ratio: expected a number within [0, 1), got {_short(init)}")
        problems += self._check_tensors(state["masks"], f"{where}.masks", "mask")
        problems += self._check_tensors(state["scores"], f"{where}.scores", "scores")
        problems += self.check_extra_state(state, where)
        try:
            copy.deepcopy(self.scheduler).load_state_dict(state["scheduler"])
        except Exception as err:  # noqa: BLE001 - any refusal of the scheduler is reported, nothing changes
            problems.append(f"{where}.scheduler: {type(err).__name__}: {_short(str(err), 300)}")
        return problems

    def _check_tensors(self, saved: Any, where: str, kind: str) -> list[str]:
        """Problems of the saved masks (``kind='mask'``: one bool tensor of the weight's shape per layer)
        or scores (float tensors at the pattern's score resolution, only for accumulating criteria)."""
        if not isinstance(saved, Mapping):
            return [f"{where}: expected a mapping of layer name to tensor, got {type(saved).__name__}"]
        layers = {layer.name: layer for layer in self.layers}
        problems = [f"{where}[{name!r}]: no such layer in pruner {self.name!r}" for name in saved if name not in layers]
        if kind == "scores" and saved and not self.criterion.accumulates:
            problems.append(f"{where}: criterion {self.criterion.name!r} keeps no scores between events; the state is of another config")
            return problems
        for name, layer in layers.items():
            tensor = saved.get(name)
            if tensor is None:
                if kind == "mask":
                    problems.append(f"{where}[{name!r}]: missing")
                continue
            tensor = self._local_part(layer, tensor, kind)
            if kind == "mask":
                shape, ok_dtype, what = layer.layout.shape, tensor.dtype == torch.bool if isinstance(tensor, torch.Tensor) else False, "a bool tensor"
            else:
                shape, what = _res_shape(self._score_pattern(layer)), "a floating tensor"
                ok_dtype = isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
            if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided:
                problems.append(f"{where}[{name!r}]: expected {what}, got {type(tensor).__name__}")
            elif not ok_dtype:
                problems.append(f"{where}[{name!r}]: expected {what}, got dtype {tensor.dtype}")
            elif tuple(tensor.shape) != shape:
                problems.append(f"{where}[{name!r}]: shape {list(tensor.shape)} does not fit layer {name!r} (expected {list(shape)})")
            elif kind == "scores" and tensor.numel() and not bool(torch.isfinite(tensor).all()):
                problems.append(f"{where}[{name!r}]: holds NaN/inf")
        return problems

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the masks are applied to the weights again.

        The whole state is checked first (:meth:`check_state`): a refused state raises
        :class:`PruningError` listing every problem and changes nothing.
        """
        problems = self.check_state(state, f"pruner {self.name!r}")
        if problems:
            raise PruningError("the pruning state cannot be loaded (nothing was changed):\n  " + "\n  ".join(problems))
        self.apply_state(state)

    @torch.no_grad()
    def apply_state(self, state: Mapping[str, Any]) -> None:
        """Restore a state :meth:`check_state` accepted (no checks; nothing here can refuse it)."""
        self.scheduler.load_state_dict(state["scheduler"])
        self.ratio = float(state["ratio"])
        for layer in self.layers:
            mask = self.mask8[layer.name]
            mask.copy_(self._local_part(layer, state["masks"][layer.name], "mask")).neg_()  # True -> 1 -> -1 = kept
        by_name = {layer.name: layer for layer in self.layers}
        self.scores = {
            name: self._local_part(by_name[name], score, "scores").to(device=self.mask8[name].device, dtype=torch.float32, copy=True)
            for name, score in state["scores"].items()
        }
        self.init_ratio = float(state.get("init_ratio", 0.0))
        self._accumulated_at = state.get("accumulated_at")
        self._floored_at = None
        self.apply_extra_state(state)
        self.has_pruned = any(int(torch.count_nonzero(m)) < m.numel() for m in self.mask8.values())
        self.reapply()
