"""Pattern geometry of one layer: block scores from element scores, and masks from kept blocks.

Everything works on the 2-D view ``[O, I]`` of a weight (see :class:`~prunekit.pruner.selection.Layout`).

* :class:`BlockPattern` (``NxM``, ``channelx1``, ``1xchannel``): blocks of ``r`` rows x ``c``
  columns (a side of 0 in the spec means the whole dimension). When ``O`` or ``I`` is not a
  multiple of the block, the last block row / column is a *partial* block: its score is reduced
  over the elements it has (so ``mean`` stays comparable), and it counts with its real size
  everywhere (local and global scope alike).
* :class:`NMPattern` (``N:M``): every M consecutive input weights form a group; pruning a group
  removes its N lowest-scored weights (stable order: the lower index first on ties). A group's
  score is the reduction of those N scores. ``I`` (the innermost input size) must be a multiple of M.

A *grid* holds one score per block (per group for N:M). Blocks already pruned get the score
:data:`PRUNED` (-1, below any criterion score), so an event never revives a pruned weight.
"""

from __future__ import annotations

import itertools
from typing import Callable, Literal, Protocol

import torch

from prunekit.errors import PruningError
from prunekit.pattern_syntax import PatternSpec
from prunekit.pruner import masks as _masks
from prunekit.pruner.selection import Layout

__all__ = ["PRUNED", "LayerPattern", "BlockPattern", "NMPattern", "make_pattern"]

Reduce = Literal["mean", "sum", "max"]
#: block score of an already pruned block (criterion scores are >= 0)
PRUNED = -1.0


class LayerPattern(Protocol):
    """The geometry of a pattern on one ``[O, I]`` layer view."""

    rows: int
    cols: int
    #: True when every block has the same number of elements (``block_numel``)
    uniform: bool
    block_numel: int

    def resolution(self, scores2d: torch.Tensor, reduce: Reduce) -> torch.Tensor:
        """Element scores -> the resolution scores are kept at (accumulated by snip_momentum)."""

    def grid(self, res: torch.Tensor, mask2d: torch.Tensor, reduce: Reduce, owned: bool = False) -> torch.Tensor:
        """A block-score grid from ``res``; pruned blocks (``mask2d``: int8 2-D mask, 0 = pruned) get :data:`PRUNED`.

        ``owned``: ``res`` may be overwritten (it is a fresh tensor), else the grid is a new tensor.
        """

    def count(self, pred: torch.Tensor) -> torch.Tensor:
        """Number of elements in the blocks where the bool grid ``pred`` is True (0-d int64)."""

    def sizes_of(self, flat_index: torch.Tensor) -> torch.Tensor:
        """Element counts of the blocks at flat grid indices ``flat_index``."""

    def expand(self, keep_grid: torch.Tensor) -> torch.Tensor:
        """Bool element mask ``[O, I]`` (True = kept) from the bool block grid."""


class BlockPattern:
    """``r x c`` blocks with partial edge blocks; see the module docstring."""

    def __init__(self, rows: int, cols: int, r: int, c: int) -> None:
        self.rows, self.cols = rows, cols
        self.r = rows if r == 0 else min(r, rows)
        self.c = cols if c == 0 else min(c, cols)
        self.full_rows, self.full_cols = rows // self.r, cols // self.c  # full block rows / cols
        self.edge_rows, self.edge_cols = rows - self.full_rows * self.r, cols - self.full_cols * self.c
        self.grid_rows = self.full_rows + (1 if self.edge_rows else 0)
        self.grid_cols = self.full_cols + (1 if self.edge_cols else 0)
        self.uniform = not self.edge_rows and not self.edge_cols
        self.block_numel = self.r * self.c

    def _parts(self) -> list[tuple[slice, slice, slice, slice, int, int]]:
        """(element rows, element cols, grid rows, grid cols, block rows, block cols) of each region."""
        fr, fc = self.full_rows * self.r, self.full_cols * self.c
        row_parts = [(slice(0, fr), slice(0, self.full_rows), self.r)]
        if self.edge_rows:
            row_parts.append((slice(fr, self.rows), slice(self.full_rows, self.grid_rows), self.edge_rows))
        col_parts = [(slice(0, fc), slice(0, self.full_cols), self.c)]
        if self.edge_cols:
            col_parts.append((slice(fc, self.cols), slice(self.full_cols, self.grid_cols), self.edge_cols))
        return [(er, ec, gr, gc, br, bc) for (er, gr, br), (ec, gc, bc) in itertools.product(row_parts, col_parts)]

    def resolution(self, scores2d: torch.Tensor, reduce: Reduce, out: torch.Tensor | None = None) -> torch.Tensor:
        """Block reduction: ``grid[i, j] = reduce(scores of block (i, j))`` (float32).

        ``out``: a float32 tensor of the grid's shape to write into (no allocation for uniform blocks);
        ignored for ``1x1``, whose resolution is the float32 scores themselves.
        """
        if self.r == 1 and self.c == 1:
            return scores2d.float().contiguous()
        if out is None:
            out = torch.empty(self.grid_rows, self.grid_cols, dtype=torch.float32, device=scores2d.device)
        for er, ec, gr, gc, br, bc in self._parts():
            _block_reduce(scores2d[er, ec], br, bc, reduce, out[gr, gc])
        return out

    def pruned_blocks(self, mask2d: torch.Tensor) -> torch.Tensor:
        """Bool grid of pruned blocks (a block is kept or pruned as a whole: read its first element)."""
        return mask2d[:: self.r, :: self.c] == 0

    def grid(self, res: torch.Tensor, mask2d: torch.Tensor, reduce: Reduce, owned: bool = False) -> torch.Tensor:
        out = res if owned else res.clone()
        return out.masked_fill_(self.pruned_blocks(mask2d), PRUNED)

    def count(self, pred: torch.Tensor) -> torch.Tensor:
        if self.uniform:
            return torch.count_nonzero(pred) * self.block_numel
        total = torch.zeros((), dtype=torch.int64, device=pred.device)
        for _, _, gr, gc, br, bc in self._parts():
            total = total + torch.count_nonzero(pred[gr, gc]) * (br * bc)
        return total

    def sizes_of(self, flat_index: torch.Tensor) -> torch.Tensor:
        row, col = flat_index // self.grid_cols, flat_index % self.grid_cols
        rs = torch.where(row < self.full_rows, self.r, self.edge_rows)
        cs = torch.where(col < self.full_cols, self.c, self.edge_cols)
        return rs * cs

    def expand(self, keep_grid: torch.Tensor) -> torch.Tensor:
        if self.r == 1 and self.c == 1:
            return keep_grid
        g = keep_grid[:, None, :, None].expand(self.grid_rows, self.r, self.grid_cols, self.c)
        full = g.reshape(self.grid_rows * self.r, self.grid_cols * self.c)
        return full if self.uniform else full[: self.rows, : self.cols].contiguous()


#: widest column block reduced by adding strided column slices (wider ones use one reduction kernel)
_SLICE_REDUCE_MAX = 8


def _block_reduce(sub: torch.Tensor, br: int, bc: int, reduce: Reduce, dest: torch.Tensor) -> None:
    """``dest[i, j] = reduce(sub[i*br:(i+1)*br, j*bc:(j+1)*bc])`` for the ``br x bc`` blocks tiling ``sub``.

    On CPU, PyTorch's reduction over a *middle* dimension (the ``br`` rows of a block) is fast, but a
    reduction over a short *innermost* one (the ``bc`` columns) runs at a few ns per element, so
    narrow column blocks are reduced by adding (or taking the maximum of) their ``bc`` strided
    column slices instead: ~10x faster for ``1x4`` and ``2x2``. ``mean`` divides the sums by
    ``br * bc``. Sums may differ from a tree reduction in the last bit.
    """
    nr, nc = dest.shape
    rows = sub.float()
    if br > 1:
        stacked = rows.reshape(nr, br, nc * bc)
        reduced = torch.empty(nr, nc * bc, dtype=torch.float32, device=sub.device) if bc > 1 else dest
        reducer = torch.amax if reduce == "max" else torch.sum
        if reduced.is_contiguous():
            reducer(stacked, dim=1, out=reduced)
        else:  # a column slice of the grid (layers with a partial edge column)
            reduced.copy_(reducer(stacked, dim=1))
        rows = reduced
    if bc > 1:
        cols = rows.reshape(nr, nc, bc)
        if bc <= _SLICE_REDUCE_MAX:
            dest.copy_(cols[..., 0])
            for j in range(1, bc):
                if reduce == "max":
                    torch.maximum(dest, cols[..., j], out=dest)
                else:
                    dest.add_(cols[..., j])
        elif reduce == "max":
            dest.copy_(cols.amax(dim=-1))
        else:
            dest.copy_(cols.sum(dim=-1))
    elif br == 1:
        dest.copy_(rows)
    if reduce == "mean":
        dest.div_(br * bc)


class NMPattern:
    """``N:M``: N of every M consecutive input weights pruned; see the module docstring.

    :meth:`grid` works in row chunks (chunk-sized sort temporaries) and remembers which N weights
    of each group are the lowest as ``uint8`` positions (N/M bytes per weight) until :meth:`expand`.
    """

    def __init__(self, rows: int, cols: int, n: int, m: int) -> None:
        self.rows, self.cols, self.n, self.m = rows, cols, n, m
        self.groups = cols // m
        self.uniform = True
        self.block_numel = n
        self._lowest: torch.Tensor | None = None  # [O, G, n] positions of the N lowest, set by grid()

    def _row_chunks(self) -> range:
        return range(0, self.rows, max(1, _masks.CHUNK // max(self.cols, 1)))

    def resolution(self, scores2d: torch.Tensor, reduce: Reduce) -> torch.Tensor:
        """Element resolution (the choice of the N weights needs every score)."""
        return scores2d.float().contiguous()

    def grid(self, res: torch.Tensor, mask2d: torch.Tensor, reduce: Reduce, owned: bool = False) -> torch.Tensor:
        per = max(1, _masks.CHUNK // max(self.cols, 1))
        return self.grid_rows_from(lambda a, b: res[a:b], mask2d, reduce, per)

    def grid_rows_from(self, scores: Callable[[int, int], torch.Tensor], mask2d: torch.Tensor, reduce: Reduce, per: int) -> torch.Tensor:
        """The grid from element scores given by ``scores(a, b)`` (rows ``a:b``), ``per`` rows at a time.

        Which N weights of a group are the lowest is remembered until :meth:`expand`: for M <= 8
        as one bit per weight packed in one byte per group, else as ``uint8`` positions.
        """
        out = torch.empty(self.rows, self.groups, dtype=torch.float32, device=mask2d.device)
        if self.m <= 8:
            self._lowest = torch.empty(self.rows, self.groups, dtype=torch.uint8, device=mask2d.device)
        else:
            pos_dtype = torch.uint8 if self.m <= 256 else torch.int64
            self._lowest = torch.empty(self.rows, self.groups, self.n, dtype=pos_dtype, device=mask2d.device)
        for a in range(0, self.rows, per):
            b = min(a + per, self.rows)
            out[a:b], self._lowest[a:b] = self._grid_rows(scores(a, b), mask2d[a:b], reduce)
        return out

    def _grid_rows(self, res: torch.Tensor, mask2d: torch.Tensor, reduce: Reduce) -> tuple[torch.Tensor, torch.Tensor]:
        rows = res.shape[0]
        flat = res.reshape(rows, self.cols).to(torch.float32, copy=True)
        _masks.mark_pruned_(flat, mask2d.contiguous())  # pruned -> PRUNED (-1)
        scores = flat.view(rows, self.groups, self.m)
        if self.m > 8:
            values, order = torch.sort(scores, dim=-1, stable=True)
            low, lowest = values[..., : self.n], order[..., : self.n]
            if reduce == "max":
                grid = low.amax(dim=-1)
            else:
                grid = low.sum(dim=-1) / self.n if reduce == "mean" else low.sum(dim=-1)
        else:
            cols = [scores[..., i] for i in range(self.m)]
            # which N are the lowest, in the stable order (lower index first on ties), without a sort:
            # rank_i = #{j: s_j < s_i} + #{j < i: s_j == s_i}; bit i of `lowest` set when rank_i < N
            lowest = torch.zeros(cols[0].shape, dtype=torch.uint8, device=flat.device)
            for i, si in enumerate(cols):
                rank = torch.zeros(si.shape, dtype=torch.uint8, device=si.device)
                for j, sj in enumerate(cols):
                    if j != i:
                        rank += (sj <= si) if j < i else (sj < si)
                lowest |= (rank < self.n).to(torch.uint8) << i
            # the N lowest values: a sorting network on the M columns (values only; ties are equal)
            vals = [c.clone() for c in cols]
            for rnd in range(self.m):
                for i in range(rnd % 2, self.m - 1, 2):
                    lo = torch.minimum(vals[i], vals[i + 1])
                    vals[i + 1] = torch.maximum(vals[i], vals[i + 1])
                    vals[i] = lo
            if reduce == "max":
                grid = vals[self.n - 1]
            else:
                grid = vals[0]
                for v in vals[1 : self.n]:
                    grid = grid + v
                if reduce == "mean":
                    grid = grid / self.n
        return grid.masked_fill_(vals[0] < 0 if self.m <= 8 else scores.amin(dim=-1) < 0, PRUNED), lowest

    def count(self, pred: torch.Tensor) -> torch.Tensor:
        return torch.count_nonzero(pred) * self.n

    def sizes_of(self, flat_index: torch.Tensor) -> torch.Tensor:
        return torch.full_like(flat_index, self.n)

    def expand(self, keep_grid: torch.Tensor) -> torch.Tensor:
        if self._lowest is None:
            raise PruningError("NMPattern.expand called before grid()")
        keep = torch.ones(self.rows, self.groups, self.m, dtype=torch.bool, device=keep_grid.device)
        keep_grid = keep_grid.view(self.rows, self.groups)
        step = self._row_chunks().step
        for a in self._row_chunks():
            b = min(a + step, self.rows)
            lowest, kept = self._lowest[a:b], keep_grid[a:b]
            if self.m <= 8:  # packed bits: weight i is among the N lowest when bit i is set
                for i in range(self.m):
                    keep[a:b, :, i] = kept | ((lowest >> i) & 1 == 0)
            else:
                keep[a:b].scatter_(-1, lowest.long(), kept.unsqueeze(-1).expand(-1, -1, self.n))
        self._lowest = None
        return keep.view(self.rows, self.cols)


def make_pattern(spec: PatternSpec, layout: Layout, *, where: str) -> BlockPattern | NMPattern:
    """The pattern geometry of ``spec`` on a layer of ``layout``; ``where`` names it in errors."""
    if spec.kind == "nm":
        if layout.inner % spec.m:
            raise PruningError(
                f"{where}: pattern {spec.text} groups {spec.m} consecutive input weights, but the layer's input "
                f"size is {layout.inner} (weight shape {list(layout.shape)}), not a multiple of {spec.m}; "
                f"exclude the layer with excluded_op_names, or use a block pattern such as 4x1"
            )
        return NMPattern(layout.rows, layout.cols, spec.n, spec.m)
    return BlockPattern(layout.rows, layout.cols, spec.rows, spec.cols)
