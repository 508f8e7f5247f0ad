"""Weights sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``): each rank prunes its own rows.

``fully_shard`` turns each parameter into a ``DTensor`` placed ``Shard(0)`` on a 1-D device mesh:
rank ``k`` of ``W`` holds rows ``[k·p, min((k+1)·p, R))`` of dim 0, ``p = ceil(R / W)`` (``torch.chunk``'s
split; the last ranks may hold fewer rows or none). For ``Linear`` and ``Conv`` weights dim 0 is the
output dimension, i.e. the rows of the 2-D view prunekit scores (:class:`~prunekit.pruner.selection.Layout`),
so a rank's shard is a contiguous range of those rows and every block row, ``N:M`` group and
``1xchannel`` row lies in one shard when block heights divide the shard boundaries.

What a rank keeps for a sharded layer is the mask and the scores of its own rows (1/W of the
unsharded memory); what it needs of the others are numbers, not tensors: the counts, maxima and
the few scores near a threshold that :mod:`prunekit.pruner.scope` reduces (:class:`ShardComm`),
the sparsity of the whole layer for reports, and, for ``channelx1`` (a column spans every shard),
the column scores. Every rank runs the same collectives in the same order, and since the global
flat order of a layer's blocks is rank order, ties are broken exactly as in one process: the masks
are those of unsharded training, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from prunekit.errors import PruningError

__all__ = ["RowShard", "row_shard", "local_tensor", "is_dtensor", "ShardComm", "as_dtensor", "global_counts"]


def is_dtensor(t: Any) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (without importing it where it is absent)."""
    return type(t).__name__ == "DTensor" and hasattr(t, "_local_tensor")


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (sharing its storage, outside autograd), or ``t`` itself."""
    if is_dtensor(t):
        return t._local_tensor.detach() if t._local_tensor.requires_grad else t._local_tensor
    return t


@dataclass(frozen=True, eq=False)
class RowShard:
    """This rank's rows ``[row0, row1)`` of a weight of ``global_shape`` sharded ``Shard(0)`` over ``group``."""

    group: Any
    rank: int
    world: int
    #: the first row of every rank, and the number of rows (``world + 1`` entries)
    starts: tuple[int, ...]
    global_shape: tuple[int, ...]
    #: the DTensor's mesh and placements (to build DTensors of the same layout: masks, scores)
    mesh: Any
    placements: tuple[Any, ...]

    @property
    def row0(self) -> int:
        return self.starts[self.rank]

    @property
    def row1(self) -> int:
        return self.starts[self.rank + 1]

    @property
    def rows(self) -> int:
        return self.starts[-1]

    @property
    def total_numel(self) -> int:
        return math.prod(self.global_shape)

    def aligned(self, height: int) -> bool:
        """True when every shard boundary is a multiple of ``height`` rows (no block row straddles two ranks)."""
        return all(s % height == 0 or s == self.rows for s in self.starts)


def row_shard(name: str, weight: torch.Tensor, kind: str) -> RowShard | None:
    """The :class:`RowShard` of a DTensor weight (``None`` for a plain tensor); :class:`PruningError` for
    layouts prunekit cannot prune shard by shard (a placement other than ``Shard(0)`` on a 1-D mesh, or
    a weight whose dim 0 is not its output dimension)."""
    if not is_dtensor(weight):
        return None
    from torch.distributed.tensor import Shard

    placements = tuple(weight.placements)
    mesh = weight.device_mesh
    where = f"layer {name!r}"
    if mesh.ndim != 1 or len(placements) != 1 or not isinstance(placements[0], Shard) or placements[0].dim != 0:
        raise PruningError(
            f"{where}: its weight is a DTensor placed {list(placements)} on a {mesh.ndim}-D mesh; prunekit prunes "
            f"DTensors sharded along dim 0 on a 1-D mesh, as torch.distributed.fsdp.fully_shard places them "
            f"(Shard(0)). Use fully_shard on a 1-D mesh (HSDP and tensor parallelism are not supported), or "
            f"exclude the layer with excluded_op_names"
        )
    if kind not in ("linear", "conv"):
        raise PruningError(
            f"{where}: its weight is stored [in, out] ({kind} layout), so FSDP2's Shard(0) splits its input "
            f"dimension; prunekit prunes shards of output rows only. Exclude the layer with excluded_op_names, "
            f"or prune it outside FSDP2"
        )
    group = mesh.get_group()
    world = mesh.size()
    rank = mesh.get_local_rank()
    rows = int(weight.shape[0])
    per = -(-rows // world) if world else rows
    starts = tuple(min(k * per, rows) for k in range(world)) + (rows,)
    local_rows = int(weight._local_tensor.shape[0])
    if local_rows != starts[rank + 1] - starts[rank]:
        raise PruningError(
            f"{where}: rank {rank} holds {local_rows} rows of its weight, but Shard(0) over {world} ranks "
            f"(torch.chunk's split of {rows} rows) gives it {starts[rank + 1] - starts[rank]}; prunekit "
            f"supports FSDP2's even sharding only"
        )
    return RowShard(group, rank, world, starts, tuple(int(s) for s in weight.shape), mesh, placements)


def as_dtensor(local: torch.Tensor, shard: RowShard, global_shape: Sequence[int] | None = None) -> torch.Tensor:
    """``local`` (this rank's rows) as a DTensor laid out like the weight (``Shard(0)``), of ``global_shape``
    (the weight's by default): what ``torch.distributed.checkpoint`` saves and reshards."""
    from torch.distributed.tensor import DTensor

    shape = tuple(global_shape) if global_shape is not None else shard.global_shape
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, shard.mesh, shard.placements, run_check=False, shape=torch.Size(shape), stride=stride)


def global_counts(values: Sequence[int], shard: RowShard | None, sharded: Sequence[bool] | None = None) -> list[int]:
    """Sums over the ranks of ``shard.group`` of integer ``values`` (one all-reduce); with ``sharded``, the
    entries marked False are the same on every rank (replicated) and are taken once. No-op without a shard."""
    if shard is None or shard.world == 1:
        return list(values)
    import torch.distributed as dist

    mine = [v if (sharded is None or sharded[i] or shard.rank == 0) else 0 for i, v in enumerate(values)]
    t = torch.tensor(mine, dtype=torch.int64)
    dist.all_reduce(t, group=shard.group)
    return [int(v) for v in t.tolist()]


class ShardComm:
    """The collectives a threshold search over sharded grids needs (:mod:`prunekit.pruner.scope`).

    A search reads the grids of one pruner group; some are sharded (this rank's block rows of a
    layer, ``offsets[i]``: the global flat index of its first block), others replicated (every rank
    holds the whole grid: layers FSDP2 left whole, ``channelx1`` grids). Replicated grids contribute
    from rank 0 only, so a sum over the ranks counts them once. Every rank calls the same methods in
    the same order (the search's control flow depends only on their results).
    """

    def __init__(self, shard: RowShard, sharded: Sequence[bool], offsets: Sequence[int], totals: Sequence[int]) -> None:
        self.shard = shard
        self.group = shard.group
        self.rank, self.world = shard.rank, shard.world
        self.sharded = list(sharded)
        self.offsets = list(offsets)
        #: blocks of every grid over all ranks
        self.totals = list(totals)

    def sub(self, indices: Sequence[int]) -> "ShardComm":
        """The communicator of a subset of the grids (in that order)."""
        return ShardComm(self.shard, [self.sharded[i] for i in indices], [self.offsets[i] for i in indices], [self.totals[i] for i in indices])

    def counts(self, matrix: list[list[int]]) -> list[list[int]]:
        """``matrix[test][grid]`` summed over the ranks (one all-reduce)."""
        import torch.distributed as dist

        if not matrix:
            return matrix
        t = torch.tensor([[v if (self.sharded[g] or self.rank == 0) else 0 for g, v in enumerate(row)] for row in matrix], dtype=torch.int64)
        dist.all_reduce(t, group=self.group)
        return [[int(v) for v in row] for row in t.tolist()]

    def max(self, value: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return float(t)

    def gather(self, tensors: Sequence[torch.Tensor], grid: int | None = None) -> list[torch.Tensor]:
        """Each 1-D host tensor of ``tensors`` concatenated over the ranks in rank order (one all-gather of
        sizes, one of the padded data, for all of them). For a replicated ``grid``, rank 0's tensors."""
        import torch.distributed as dist

        if grid is not None and not self.sharded[grid]:
            tensors = [t if self.rank == 0 else t[:0] for t in tensors]
        sizes = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
        all_sizes = [torch.empty_like(sizes) for _ in range(self.world)]
        dist.all_gather(all_sizes, sizes, group=self.group)
        width = max(int(s.sum()) for s in all_sizes)
        out_dtype = torch.float64
        flat = torch.zeros(width, dtype=out_dtype)
        if tensors:
            joined = torch.cat([t.to(out_dtype) for t in tensors]) if any(t.numel() for t in tensors) else flat[:0]
            flat[: joined.numel()] = joined
        buffers = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(buffers, flat, group=self.group)
        result: list[list[torch.Tensor]] = [[] for _ in tensors]
        for r, (buf, s) in enumerate(zip(buffers, all_sizes)):
            offset = 0
            for i, n in enumerate(s.tolist()):
                result[i].append(buf[offset : offset + n])
                offset += n
        return [torch.cat(parts).to(t.dtype) for parts, t in zip(result, tensors)]
