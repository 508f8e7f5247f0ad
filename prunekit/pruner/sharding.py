"""Weights sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``): each rank prunes its own rows.

``fully_shard`` turns each parameter into a ``DTensor`` placed ``Shard(0)`` on a 1-D device mesh:
rank ``k`` of ``W`` holds rows ``[k·p, min((k+1)·p, R))`` of dim 0, ``p = ceil(R / W)`` (``torch.chunk``'s
split; the last ranks may hold fewer rows or none). For ``Linear`` and ``Conv`` weights dim 0 is the
output dimension, i.e. the rows of the 2-D view prunekit scores (:class:`~prunekit.pruner.selection.Layout`),
so a rank's shard is a contiguous range of those rows: ``N:M`` groups, ``1xchannel`` rows and
unstructured weights lie in one shard, and so do block rows when the block height divides the
shard boundaries.

What a rank keeps for a sharded layer is the mask and the scores of its own rows (1/W of the
unsharded memory); what it needs of the others is small: the counts, maxima and histograms of
counts that the threshold searches of :mod:`prunekit.pruner.scope` reduce (:class:`ShardComm`; never
a score), the sparsity of the whole layer for reports, the rows of a block row that straddles a
shard boundary (it is scored on the rank holding its first row, :class:`Halo`), and, for
``channelx1`` (a column spans every shard), the running column sums (:class:`ChainedFold`). Every
rank runs the same collectives in the same order, and since the global flat order of a layer's
blocks is rank order, ties are broken exactly as in one process: the masks are those of unsharded
training, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from prunekit.errors import PruningError

__all__ = [
    "RowShard", "row_shard", "local_tensor", "is_dtensor", "ShardComm", "as_dtensor", "global_counts", "ChainedFold", "Halo",
    "halo_of", "OwnedRows", "reshard_rows", "whole_tensors", "even_starts",
]


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
    #: where the tensors of collectives live (CUDA for NCCL, else the CPU)
    comm_device: torch.device = torch.device("cpu")

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
    starts = even_starts(rows, world)
    local_rows = int(weight._local_tensor.shape[0])
    if local_rows != starts[rank + 1] - starts[rank]:
        raise PruningError(
            f"{where}: rank {rank} holds {local_rows} rows of its weight, but Shard(0) over {world} ranks "
            f"(torch.chunk's split of {rows} rows) gives it {starts[rank + 1] - starts[rank]}; prunekit "
            f"supports FSDP2's even sharding only"
        )
    import torch.distributed as dist

    comm_device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        comm_device = torch.device("cuda", torch.cuda.current_device())
    return RowShard(group, rank, world, starts, tuple(int(s) for s in weight.shape), mesh, placements, comm_device)


def even_starts(rows: int, world: int) -> tuple[int, ...]:
    """The first row of every rank and the number of rows (``world + 1`` entries) when ``rows`` are split as
    ``Shard(0)`` splits them (``torch.chunk``: ``ceil(rows / world)`` per rank, the last ranks fewer or none)."""
    per = -(-rows // world) if world else rows
    return tuple(min(k * per, rows) for k in range(world)) + (rows,)


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
    t = torch.tensor(mine, dtype=torch.int64, device=shard.comm_device)
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
        self.device = shard.comm_device
        self.rank, self.world = shard.rank, shard.world
        self.sharded = list(sharded)
        self.offsets = list(offsets)
        #: blocks of every grid over all ranks
        self.totals = list(totals)

    def counts(self, matrix: list[list[int]]) -> list[list[int]]:
        """``matrix[test][grid]`` summed over the ranks (one all-reduce)."""
        if not matrix:
            return matrix
        width = len(matrix[0])
        flat = global_counts([v for row in matrix for v in row], self.shard, self.sharded * len(matrix))
        return [flat[i : i + width] for i in range(0, len(flat), width)]

    def histograms(self, hists: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-grid histograms (1-D, the same length, any device) summed over the ranks: ``[grid, bin]``
        float64 on the host (one all-reduce: exact below 2^53 elements); replicated grids from rank 0."""
        import torch.distributed as dist

        mine = torch.stack([h.to(torch.float64) for h in hists]).to(self.device)
        if self.rank != 0:
            mine[[i for i, sharded in enumerate(self.sharded) if not sharded]] = 0
        dist.all_reduce(mine, group=self.group)
        return mine.cpu()

    def max(self, value: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return float(t)

    def gather(self, tensors: Sequence[torch.Tensor], grid: int | None = None) -> list[torch.Tensor]:
        """Each 1-D host tensor of ``tensors`` concatenated over the ranks in rank order (one all-gather of
        sizes, one of the padded data, for all of them). For a replicated ``grid``, rank 0's tensors."""
        import torch.distributed as dist

        if grid is not None and not self.sharded[grid]:
            tensors = [t if self.rank == 0 else t[:0] for t in tensors]
        sizes = torch.tensor([t.numel() for t in tensors], dtype=torch.int64, device=self.device)
        all_sizes = [torch.empty_like(sizes) for _ in range(self.world)]
        dist.all_gather(all_sizes, sizes, group=self.group)
        all_sizes = [s.cpu() for s in all_sizes]
        width = max(int(s.sum()) for s in all_sizes)
        out_dtype = torch.float64  # exact for float32 scores and for flat indices below 2^53
        flat = torch.zeros(width, dtype=out_dtype, device=self.device)
        if tensors:
            joined = torch.cat([t.to(out_dtype) for t in tensors]) if any(t.numel() for t in tensors) else flat[:0]
            flat[: joined.numel()] = joined.to(self.device)
        buffers = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(buffers, flat, group=self.group)
        buffers = [b.cpu() for b in buffers]
        result: list[list[torch.Tensor]] = [[] for _ in tensors]
        for buf, s in zip(buffers, all_sizes):
            offset = 0
            for i, n in enumerate(s.tolist()):
                result[i].append(buf[offset : offset + n])
                offset += n
        return [torch.cat(parts).to(t.dtype) for parts, t in zip(result, tensors)]


#: levels a fold's state may have (a 4-ary tree over the rows: 4^32 rows)
_MAX_LEVELS = 32


class ChainedFold:
    """The scores of one block row that spans every shard (``channelx1``: a whole column), as one process
    computes them (:class:`~prunekit.pruner.patterns.RowFold`), with each rank feeding its own rows.

    A fold adds the rows in a fixed order whatever the chunking, so the ranks feed it in turn: rank
    ``k`` takes the fold's state from rank ``k - 1`` (a few rows: the open nodes of the sum's tree),
    feeds its rows, and passes it on; the last rank's result is broadcast. Costs one point-to-point
    message per rank and one broadcast of a score row, and the ranks wait for each other (block
    rows spanning shards are rare: channel patterns); exact.
    """

    def __init__(self, fold: Any, shard: RowShard, width: int, device: torch.device) -> None:
        import torch.distributed as dist

        self.fold, self.shard, self.width, self.device = fold, shard, width, device
        if shard.rank > 0:
            header = torch.zeros(_MAX_LEVELS, 2, dtype=torch.int64, device=shard.comm_device)
            dist.recv(header, group=shard.group, group_src=shard.rank - 1)
            header = header.cpu()
            levels = int(header[0, 0])
            data = torch.zeros(max(levels, 1), width, dtype=torch.float32, device=shard.comm_device)
            dist.recv(data, group=shard.group, group_src=shard.rank - 1)
            fold.load_state(header[1 : 1 + levels], data[:levels].to(device))

    def add(self, scores2d: torch.Tensor) -> None:
        self.fold.add(scores2d)

    def finish(self, dest: torch.Tensor) -> None:
        import torch.distributed as dist

        shard = self.shard
        if shard.rank < shard.world - 1:
            header, data = self.fold.state(self.width, self.device)
            levels = header.shape[0]
            if levels + 1 > _MAX_LEVELS:
                raise PruningError(f"a block row of {shard.rows} rows is deeper than {_MAX_LEVELS - 1} levels")
            packed = torch.zeros(_MAX_LEVELS, 2, dtype=torch.int64)
            packed[0, 0] = levels
            packed[1 : 1 + levels] = header
            dist.send(packed.to(shard.comm_device), group=shard.group, group_dst=shard.rank + 1)
            payload = data if levels else torch.zeros(1, self.width)
            dist.send(payload.to(shard.comm_device), group=shard.group, group_dst=shard.rank + 1)
            rows = torch.empty(self.width, dtype=torch.float32, device=shard.comm_device)
        else:
            rows = self.fold.rows_result().float().to(shard.comm_device).contiguous()
        dist.broadcast(rows, group=shard.group, group_src=shard.world - 1)
        self.fold.finish_rows(rows.to(self.device), dest)


@dataclass(frozen=True, eq=False)
class Halo:
    """Block rows of ``r`` rows that straddle shard boundaries (``r`` does not divide them).

    A block row belongs to the rank that holds its first row (its *owner*): this rank's grid holds
    the block rows that start in its shard, i.e. its rows from ``lead`` on plus ``halo`` rows of the
    next rank(s) (:attr:`rows` in all: the rows of its *owned space*). Its first ``lead`` rows belong
    to a block row that ``lead_owner`` owns. Before scoring, each rank sends its lead rows to their
    owner (:meth:`exchange`); after choosing, the owner sends the keep flags of its last block row to
    the ranks that hold the rest of it (:meth:`swap_keep`). Messages are a few rows; the scores of a
    straddling block are those one process computes (the same rows, reduced the same way).
    """

    shard: RowShard
    r: int
    #: this rank's first rows that belong to a block row an earlier rank owns
    lead: int
    lead_owner: int | None
    #: ``(rank, rows)`` of the ranks that hold the rest of this rank's last block row, in order
    halo_from: tuple[tuple[int, int], ...]

    @property
    def halo(self) -> int:
        return sum(n for _, n in self.halo_from)

    @property
    def local_rows(self) -> int:
        """This rank's rows in its owned space (from ``lead`` on)."""
        return self.shard.row1 - self.shard.row0 - self.lead

    @property
    def rows(self) -> int:
        """Rows of the owned space: this rank's rows from ``lead`` on and the halo."""
        return self.local_rows + self.halo

    @property
    def grid_row0(self) -> int:
        """Global index of this rank's first block row."""
        return -(-(self.shard.row0 + self.lead) // self.r)

    def exchange(self, tensors: Sequence[torch.Tensor]) -> list["OwnedRows"]:
        """Each tensor's rows (this rank's, first dim = rows) as rows of the owned space: a :class:`OwnedRows`
        of its rows from ``lead`` on and the halo rows received from the next ranks."""
        sends, recvs, parts = [], [], []
        for t in tensors:
            if self.lead and self.lead_owner is not None:
                sends.append((t[: self.lead], self.lead_owner))
            mine = [torch.empty((n, *t.shape[1:]), dtype=t.dtype, device=t.device) for _, n in self.halo_from]
            recvs += [(buf, peer) for buf, (peer, _) in zip(mine, self.halo_from)]
            parts.append(mine)
        _p2p(self.shard, sends, recvs)  # the messages between two ranks go in the order of `tensors` on both
        return [OwnedRows(t[self.lead :], torch.cat(p) if len(p) > 1 else p[0] if p else None) for t, p in zip(tensors, parts)]

    def swap_keep(self, tail_keep: torch.Tensor | None, width: int, device: torch.device) -> torch.Tensor | None:
        """Send the int8 keep flags of this rank's last block row (``[grid cols]``) to the ranks holding the
        rest of it; return those of the block row this rank's lead rows belong to (None without lead rows)."""
        sends = [(tail_keep, peer) for peer, _ in self.halo_from] if tail_keep is not None else []
        if self.halo_from and tail_keep is None:
            raise RuntimeError("a block row with halo rows has no keep flags")
        got = torch.empty(width, dtype=torch.int8, device=device) if self.lead and self.lead_owner is not None else None
        _p2p(self.shard, sends, [(got, self.lead_owner)] if got is not None else [])
        return got


def _p2p(shard: RowShard, sends: list[tuple[torch.Tensor, int]], recvs: list[tuple[torch.Tensor, int]]) -> None:
    """Send each ``(tensor, peer)`` of ``sends`` and receive into each ``(tensor, peer)`` of ``recvs`` (peers are
    ranks of ``shard.group``), all at once; messages between two ranks pair up in the order given on both."""
    import torch.distributed as dist

    device = shard.comm_device
    staged = [(t.to(device).contiguous(), peer) for t, peer in sends]
    landing = [(torch.empty(t.shape, dtype=t.dtype, device=device), t, peer) for t, peer in recvs]
    ops = [dist.P2POp(dist.isend, t, group=shard.group, group_peer=peer) for t, peer in staged]
    ops += [dist.P2POp(dist.irecv, buf, group=shard.group, group_peer=peer) for buf, _, peer in landing]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    for buf, dest, _ in landing:
        dest.copy_(buf)


def halo_of(shard: RowShard, r: int) -> Halo | None:
    """The :class:`Halo` of this rank for block rows of ``r`` rows (None when every shard boundary is a multiple of ``r``)."""
    if r <= 1 or shard.aligned(r):
        return None
    row0, row1, rows = shard.row0, shard.row1, shard.rows
    lead = min((-row0) % r, row1 - row0)
    lead_owner = None
    if lead:
        first = row0 - row0 % r  # the first row of the block row the lead rows belong to
        lead_owner = max(k for k in range(shard.world) if shard.starts[k] <= first and shard.starts[k] < shard.starts[k + 1])
    halo_from: list[tuple[int, int]] = []
    if row0 + lead < row1:  # this rank starts a block row: its last one may go on past row1
        end = min(-(-row1 // r) * r, rows)
        for k in range(shard.rank + 1, shard.world):
            a, b = max(shard.starts[k], row1), min(shard.starts[k + 1], end)
            if a < b:
                halo_from.append((k, b - a))
    return Halo(shard, r, lead, lead_owner, tuple(halo_from))


class OwnedRows:
    """Rows ``[a:b]`` of a rank's owned space (see :class:`Halo`): its own rows (a view) followed by the
    halo rows; slices within its own rows are views, those reaching into the halo are new tensors."""

    def __init__(self, own: torch.Tensor, halo: torch.Tensor | None) -> None:
        self.own, self.halo = own, halo
        self.n = own.shape[0]
        rows = self.n + (halo.shape[0] if halo is not None else 0)
        self.shape = torch.Size((rows, *own.shape[1:]))
        self.device, self.dtype = own.device, own.dtype

    def __getitem__(self, index: slice) -> torch.Tensor:
        a, b, step = index.indices(self.shape[0])
        if b <= self.n or self.halo is None:
            return self.own[a:b:step]
        return torch.cat([self.own[a:], self.halo[max(0, a - self.n) : b - self.n]])[::step] if a < self.n else self.halo[a - self.n : b - self.n : step]


def reshard_rows(local: torch.Tensor, have: Sequence[int], want: Sequence[int], shard: RowShard) -> torch.Tensor:
    """Rows of a tensor split over the ranks as ``have`` (rank k holds rows ``have[k]:have[k+1]``, ``local``)
    redistributed as ``want`` (this rank's ``want[k]:want[k+1]``, returned): point-to-point messages of
    the overlapping rows only."""
    k = shard.rank
    lo, hi = want[k], want[k + 1]
    out = torch.empty((hi - lo, *local.shape[1:]), dtype=local.dtype, device=local.device)
    sends, recvs = [], []
    for j in range(shard.world):
        a, b = max(have[k], want[j]), min(have[k + 1], want[j + 1])  # my rows rank j wants
        if a < b and j != k:
            sends.append((local[a - have[k] : b - have[k]], j))
        a, b = max(have[j], lo), min(have[j + 1], hi)  # rows of rank j I want
        if a < b:
            if j == k:
                out[a - lo : b - lo].copy_(local[a - have[k] : b - have[k]])
            else:
                recvs.append((out[a - lo : b - lo], j))
    _p2p(shard, sends, recvs)
    return out


def whole_tensors(value: Any) -> Any:
    """``value`` (nested dicts and lists) with every DTensor replaced by the whole tensor on the CPU
    (a collective: every rank calls it, in the same order)."""
    if is_dtensor(value):
        return value.full_tensor().cpu()
    if isinstance(value, dict):
        return {k: whole_tensors(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_tensors(v) for v in value]
    return value
