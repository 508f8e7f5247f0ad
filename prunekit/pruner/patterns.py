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
  For M in 2, 4, 8 the N lowest are found by counting ranks in byte fields (no sort).

A *grid* holds one score per block (per group for N:M). Blocks already pruned get the score
:data:`PRUNED` (-1, below any criterion score), so an event never revives a pruned weight.
"""

from __future__ import annotations

import itertools
from typing import Callable, Literal, Protocol

import torch

from prunekit.errors import PruningError
from prunekit.config.pattern_syntax import PatternSpec
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
        self.r = max(1, rows if r == 0 else min(r, rows))  # (a shard may hold no rows)
        self.c = cols if c == 0 else min(c, cols)
        self.full_rows, self.full_cols = rows // self.r, cols // self.c  # full block rows / cols
        self.edge_rows, self.edge_cols = rows - self.full_rows * self.r, cols - self.full_cols * self.c
        self.grid_rows = self.full_rows + (1 if self.edge_rows else 0)
        self.grid_cols = self.full_cols + (1 if self.edge_cols else 0)
        self.uniform = not self.edge_rows and not self.edge_cols
        self.block_numel = self.r * self.c
        self._regions = self._split()
        self._row_patterns: dict[int, BlockPattern] = {}

    def _parts(self) -> list[tuple[slice, slice, slice, slice, int, int]]:
        """(element rows, element cols, grid rows, grid cols, block rows, block cols) of each region."""
        return self._regions

    def _split(self) -> list[tuple[slice, slice, slice, slice, int, int]]:
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

    # ---------------------------------------------------------------- row chunks (chunk-sized temporaries)
    def rows_pattern(self, h: int) -> "BlockPattern":
        """The geometry of ``h`` rows that start at a block-row boundary (cached): the last block row
        is partial when ``h`` is not a multiple of ``r``; ``h < r`` is one block row of height ``h``."""
        found = self._row_patterns.get(h)
        if found is None:
            found = self._row_patterns[h] = BlockPattern(h, self.cols, self.r, self.c)
        return found

    def fold(self, height: int, reduce: Reduce) -> "RowFold":
        """A :class:`RowFold` for one block row of ``height`` rows that is scored in several row chunks."""
        return RowFold(self, height, reduce)

    def pruned_rows(self, first_rows: torch.Tensor) -> torch.Tensor:
        """Bool ``[g, gc]`` pruned blocks of ``g`` block rows, from the int8 mask rows ``[g, cols]`` that start them."""
        return first_rows[:, :: self.c] == 0

    def and_keep_(self, region: torch.Tensor, flags: torch.Tensor) -> None:
        """``region &= expanded flags``: ``region`` is the int8 mask of rows that start at a block-row boundary
        (``[h, cols]``, or any view whose row-major order is that), ``flags`` the int8 ``0/-1`` keep of their
        block rows ``[ceil(h / r), gc]``; a single block row (``flags`` ``[1, gc]``) may cover any ``h`` rows
        inside it (blocks taller than a chunk). Temporaries are chunk-sized, none when it is avoidable:
        column blocks of 2, 4 or 8 are widened to one 16/32/64-bit word per block (``-1`` sign-extends to
        all ones) and ANDed on the word view of the mask, broadcast over the block's rows.
        """
        h = region.shape[0]
        c, cols = self.c, self.cols
        plain = region.dim() == 2 and region.is_contiguous()
        word = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(c) if cols % c == 0 else None
        if plain and word is not None:
            wide = flags if c == 1 else flags.to(word)
            dest = region.view(word)  # [h, gc]
            full = min(h // self.r, wide.shape[0])
            if full:
                dest[: full * self.r].view(full, self.r, -1).bitwise_and_(wide[:full, None, :])
            if full * self.r < h:  # the rows of a partial (or the only, taller-than-a-chunk) block row
                dest[full * self.r :].bitwise_and_(wide[full : full + 1])
            return
        if flags.shape[0] == 1:
            rows = flags.expand(h, -1)
        else:
            rows = flags.repeat_interleave(self.r, dim=0)[:h]
        keep = rows[:, :, None].expand(h, rows.shape[1], c).reshape(h, -1)[:, :cols]
        region.bitwise_and_(keep.reshape(region.shape))


#: widest column block reduced by adding strided column slices (wider ones use one reduction kernel)
_SLICE_REDUCE_MAX = 8


def _block_reduce(sub: torch.Tensor, br: int, bc: int, reduce: Reduce, dest: torch.Tensor) -> None:
    """``dest[i, j] = reduce(sub[i*br:(i+1)*br, j*bc:(j+1)*bc])`` for the ``br x bc`` blocks tiling ``sub``.

    On CPU, PyTorch's reduction over a *middle* dimension (the ``br`` rows of a block) is fast, but a
    reduction over a short *innermost* one (the ``bc`` columns) runs at a few ns per element, so
    narrow column blocks are reduced by adding (or taking the maximum of) their ``bc`` strided
    column slices instead: ~10x faster for ``1x4`` and ``2x2``. ``mean`` divides the sums by
    ``br * bc``. Sums may differ from a tree reduction in the last bit.

    A block row taller than a chunk is reduced in row chunks by :class:`RowFold` instead (the same
    scores for blocks of up to 4 rows; taller ones are summed in a fixed order, see :func:`_tree_rows`).
    """
    nr, nc = dest.shape
    rows, divided = _reduce_rows(sub.float(), nr, br, nc * bc, reduce, dest if bc == 1 else None)
    _reduce_cols(rows, br, bc, reduce, dest, divided)


def _reduce_rows(
    rows: torch.Tensor, nr: int, br: int, width: int, reduce: Reduce, out: torch.Tensor | None
) -> tuple[torch.Tensor, bool]:
    """The row stage of :func:`_block_reduce`: ``[nr * br, width]`` -> ``[nr, width]`` (into ``out`` when given);
    returns it and whether it is already divided by ``br`` (``mean`` of 1-wide blocks)."""
    if br == 1:
        return rows, False
    stacked = rows.reshape(nr, br, width)
    reduced = out if out is not None else torch.empty(nr, width, dtype=torch.float32, device=rows.device)
    divided = reduce == "mean" and out is not None  # 1-wide blocks: the mean kernel divides in the same pass
    reducer = torch.amax if reduce == "max" else torch.mean if divided else torch.sum
    if reduced.is_contiguous():
        reducer(stacked, dim=1, out=reduced)
    else:  # a column slice of the grid (layers with a partial edge column)
        reduced.copy_(reducer(stacked, dim=1))
    return reduced, divided


def _reduce_cols(rows: torch.Tensor, br: int, bc: int, reduce: Reduce, dest: torch.Tensor, divided: bool) -> None:
    """The column stage of :func:`_block_reduce`: ``rows`` ``[nr, nc * bc]`` (reduced over rows) -> ``dest`` ``[nr, nc]``."""
    nr, nc = dest.shape
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
    elif rows is not dest:
        dest.copy_(rows)
    if reduce == "mean" and not divided:
        dest.div_(br * bc)


#: rows that PyTorch's CPU sum adds one after the other in every code path (its cascade and its
#: interleaved accumulators only start beyond 4)
_SEQUENTIAL_ROWS = 4


def _tree_rows(x: torch.Tensor) -> torch.Tensor:
    """``x.sum(dim=1)`` (``x``: float32 ``[nb, n, width]``) in the fixed order :class:`_RowTree` uses.

    A 4-ary tree over the rows: each node is the sum, one after the other, of up to 4 consecutive
    nodes of the level below (PyTorch's sum of <= 4 rows is exactly that), the last node of a level
    holding what is left. :class:`_RowTree` computes the same sum fed a few rows at a time, so the
    result does not depend on how the rows are chunked. (PyTorch's own sum of more than 4 rows
    depends on the column's position in the call, the vector width and the threads, so a chunked
    sum cannot reproduce it; this order is as accurate: pairwise-like.)
    """
    while x.shape[1] > _SEQUENTIAL_ROWS:
        nb, n, width = x.shape
        full = n // 4 * 4
        nodes = torch.sum(x[:, :full].reshape(nb, n // 4, 4, width), dim=2)
        if full < n:
            nodes = torch.cat([nodes, torch.sum(x[:, full:], dim=1, keepdim=True)], dim=1)
        x = nodes
    return torch.sum(x, dim=1)


class _RowTree:
    """The sum of :func:`_tree_rows`, fed rows in order, a chunk at a time (state: a few rows)."""

    def __init__(self) -> None:
        #: per level: [running sum of the children of the open node of the level above, children so far]
        self._open: list[list] = []

    def feed(self, nodes: torch.Tensor, level: int = 0) -> None:
        """Feed ``nodes`` (``[k, width]``, in order) of ``level`` (0 = rows)."""
        while nodes.shape[0]:
            if len(self._open) <= level:
                self._open.append([None, 0])
            slot = self._open[level]
            if slot[1] == 0 and nodes.shape[0] >= 4:  # whole groups of 4: their sums in one op
                full = nodes.shape[0] // 4 * 4
                self.feed(torch.sum(nodes[:full].reshape(full // 4, 4, -1), dim=1), level + 1)
                nodes = nodes[full:]
                continue
            if slot[0] is None:
                slot[0] = nodes[0].clone()
            else:
                slot[0].add_(nodes[0])
            slot[1] += 1
            nodes = nodes[1:]
            if slot[1] == 4:
                node, slot[0], slot[1] = slot[0], None, 0
                self.feed(node[None], level + 1)

    def result(self) -> torch.Tensor:
        """The sum of every row fed (the open nodes close from the bottom up)."""
        carry = None
        for slot in self._open:
            if carry is not None:
                if slot[0] is None:
                    slot[0] = carry
                else:
                    slot[0].add_(carry)
                slot[1] += 1
            carry = slot[0] if slot[1] else None
        assert carry is not None, "no rows were fed"
        return carry


class RowFold:
    """One block row of a :class:`BlockPattern` taller than a chunk (``channelx1``: a whole column), scored in
    row chunks: :meth:`add` the chunks in order, then :meth:`finish` writes the block scores.

    ``max`` is exact; sums (``mean`` divides them by the block's real element count, partial edge
    blocks included) add the rows in the fixed order of :func:`_tree_rows`, whatever the chunking:
    for blocks of up to 4 rows that is exactly :func:`_block_reduce`'s result, for taller ones it
    may differ from PyTorch's one-call sum in the last bit.
    """

    def __init__(self, pattern: BlockPattern, height: int, reduce: Reduce) -> None:
        self.pattern, self.height, self.reduce = pattern, height, reduce
        self._tree = _RowTree() if reduce != "max" else None
        self._max: torch.Tensor | None = None

    def add(self, scores2d: torch.Tensor) -> None:
        rows = scores2d.float()
        if self._tree is not None:
            self._tree.feed(rows)
        elif self._max is None:
            self._max = rows.amax(dim=0)
        else:
            torch.maximum(self._max, rows.amax(dim=0), out=self._max)

    def finish(self, dest: torch.Tensor) -> None:
        """The block row's scores into ``dest`` ``[1, grid cols]``."""
        self.finish_rows(self.rows_result(), dest)

    def rows_result(self) -> torch.Tensor:
        """The rows reduced so far (sum in the tree's order, or maximum): ``[cols]``."""
        return self._tree.result() if self._tree is not None else self._max

    def state(self, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """What was fed so far, as tensors (``[levels, 2]`` int64 header, ``[levels, width]`` float32), so
        that another process can go on feeding rows (:meth:`load_state`): the same result as one fold."""
        if self._tree is None:
            slots = [[self._max, 0]]
        else:
            slots = self._tree._open
        header = torch.tensor([[0 if s[0] is None else 1, s[1]] for s in slots], dtype=torch.int64).reshape(-1, 2)
        data = torch.zeros(len(slots), width, dtype=torch.float32, device=device)
        for i, (value, _) in enumerate(slots):
            if value is not None:
                data[i].copy_(value)
        return header, data

    def load_state(self, header: torch.Tensor, data: torch.Tensor) -> None:
        """Continue from a :meth:`state` (of a fold of the same block row)."""
        slots = [[data[i].clone() if int(h[0]) else None, int(h[1])] for i, h in enumerate(header)]
        if self._tree is None:
            self._max = slots[0][0] if slots else None
        else:
            self._tree._open = slots

    def finish_rows(self, rows: torch.Tensor, dest: torch.Tensor) -> None:
        """The block row's scores into ``dest`` from :meth:`rows_result`."""
        br, reduce = self.height, self.reduce
        rows = rows.view(1, -1)
        if br == 1:
            rows = rows.clone()
        for _, ec, _, gc, _, bc in self.pattern.rows_pattern(br)._parts():
            divided = reduce == "mean" and bc == 1 and br > 1
            part = rows[:, ec]
            if divided:
                part = part / br
            _reduce_cols(part, br, bc, reduce, dest[:, gc], divided)


#: N:M group sizes chosen on byte fields packed in integer words (others sort each group)
_WORD_GROUP_SIZES = (2, 4, 8)
#: a rank field starts at this value minus N, so "rank >= N" (the weight stays) is its bit 6
_FIELD_BASE = 64


class NMPattern:
    """``N:M``: N of every M consecutive input weights pruned; see the module docstring.

    :meth:`grid` works in row chunks (chunk-sized temporaries) and remembers, until :meth:`expand`,
    which weights of each group stay when the group is pruned: for M in 2, 4, 8 as one bit per
    weight (one byte per group), else as the ``uint8`` positions of the N lowest. It also keeps
    :attr:`score_peak`, the largest element score it saw (NaN or inf when some score is), because a
    group score, reduced over the N lowest only, does not carry a non-finite score of a kept weight.
    """

    def __init__(self, rows: int, cols: int, n: int, m: int) -> None:
        self.rows, self.cols, self.n, self.m = rows, cols, n, m
        self.groups = cols // m
        self.uniform = True
        self.block_numel = n
        self._stay: torch.Tensor | None = None  # set by grid(), read by expand()
        #: max element score seen by the last grid() (0-d float32)
        self.score_peak: torch.Tensor | None = None

    def _row_chunks(self) -> range:
        return range(0, self.rows, max(1, _masks.CHUNK // max(self.cols, 1)))

    def resolution(self, scores2d: torch.Tensor, reduce: Reduce) -> torch.Tensor:
        """Element resolution (the choice of the N weights needs every score)."""
        return scores2d.float().contiguous()

    def grid(
        self, res: torch.Tensor, mask2d: torch.Tensor, reduce: Reduce, owned: bool = False, ordered: bool = True
    ) -> torch.Tensor:
        per = max(1, _masks.CHUNK // max(self.cols, 1))
        return self.grid_rows_from(lambda a, b: res[a:b], mask2d, reduce, per, owned=owned, ordered=ordered)

    def grid_rows_from(
        self,
        scores: Callable[[int, int], torch.Tensor],
        mask2d: torch.Tensor,
        reduce: Reduce,
        per: int,
        owned: bool = False,
        ordered: bool = True,
    ) -> torch.Tensor:
        """The grid from element scores given by ``scores(a, b)`` (rows ``a:b``), ``per`` rows at a time.

        ``owned``: the tensors ``scores`` returns may be overwritten (scratch buffers).
        ``ordered=False``: every group is pruned at this event, so only which N weights of each
        group go matters: unpruned groups score 0 (pruned ones still :data:`PRUNED`).
        """
        device = mask2d.device
        out = torch.empty(self.rows, self.groups, dtype=torch.float32, device=device)
        self._stay = self.new_stay(self.rows, device)
        self.score_peak = torch.zeros((), dtype=torch.float32, device=device)
        for a in range(0, self.rows, per):
            b = min(a + per, self.rows)
            chunk = scores(a, b).reshape(b - a, self.cols)
            if not (owned and chunk.dtype == torch.float32 and chunk.is_contiguous()):
                chunk = chunk.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
            self.choose_rows(chunk, mask2d[a:b].contiguous(), reduce, ordered, out[a:b], self._stay[a:b])
        return out

    def new_stay(self, rows: int, device: torch.device) -> torch.Tensor:
        """An uninitialised buffer for which weights of ``rows`` rows of groups stay (see :meth:`choose_rows`)."""
        if self.m in _WORD_GROUP_SIZES:
            return torch.empty(rows, self.groups, dtype=torch.uint8, device=device)
        pos_dtype = torch.uint8 if self.m <= 256 else torch.int64
        return torch.empty(rows, self.groups, self.n, dtype=pos_dtype, device=device)

    def pruned_groups(self, mask_rows: torch.Tensor) -> torch.Tensor:
        """Bool ``[h, groups]``: the groups of the int8 mask rows ``[h, cols]`` (contiguous) holding a pruned weight."""
        if self.m in _WORD_GROUP_SIZES:
            return mask_rows.view(_WORD_DTYPES[self.m]) != -1
        return (mask_rows.view(mask_rows.shape[0], self.groups, self.m) == 0).any(dim=-1)

    def choose_rows(
        self,
        chunk: torch.Tensor,
        mask_rows: torch.Tensor,
        reduce: Reduce,
        ordered: bool,
        out: torch.Tensor,
        stay: torch.Tensor,
        any_pruned: bool | None = None,
        stay_known: bool = False,
    ) -> None:
        """Group scores (into ``out`` ``[h, groups]``) and the weights that stay (into ``stay``) of ``h`` rows.

        ``chunk``: float32 element scores ``[h, cols]``, contiguous, overwritten; ``mask_rows``: their
        int8 mask (contiguous). Updates :attr:`score_peak` (when set). ``any_pruned=False``: the caller
        knows that no weight of the layer is pruned (skips the mask reads). ``stay_known`` (M in 2, 4,
        8, ``ordered``): ``stay`` already holds what an earlier call wrote for these rows, so only the
        group scores are computed from it, without ranking again (the same bits).
        """
        h = chunk.shape[0]
        if self.score_peak is not None:
            torch.maximum(self.score_peak, chunk.amax(), out=self.score_peak)
        pruned = None
        if any_pruned is not False:
            pruned = self.pruned_groups(mask_rows)
            if bool(pruned.any()):
                _masks.mark_pruned_(chunk, mask_rows)  # pruned -> PRUNED (-1): always among the lowest
            else:
                pruned = None
        groups = chunk.view(h, self.groups, self.m)
        choose = _choose_in_words if self.m in _WORD_GROUP_SIZES else _choose_by_sorting
        # rows per call: the ranking's temporaries (float32 units per weight: the pair differences and
        # their masked copies, or a sort's values and int64 indices) stay within about one chunk of scores
        per = max(1, min(h, int(h / _RANK_TEMPORARIES.get(self.m, 3.0))))
        known = stay_known and ordered and choose is _choose_in_words
        for a in range(0, h, per):
            b = min(a + per, h)
            if known:
                group_scores = _scores_given_stay(groups[a:b], stay[a:b], self.n, reduce, overwrite=True)
            elif choose is _choose_in_words:
                group_scores, stay[a:b] = choose(groups[a:b], self.n, reduce, ordered, overwrite=True)
            else:
                group_scores, stay[a:b] = choose(groups[a:b], self.n, reduce, ordered)
            if group_scores is None:
                out[a:b].zero_()
            else:
                out[a:b].copy_(group_scores)
        if pruned is not None:
            out.masked_fill_(pruned, PRUNED)

    def and_keep_(self, region: torch.Tensor, flags: torch.Tensor) -> None:
        """``region &= -flags``: ``region`` the int8 mask of ``h`` rows, ``flags`` their :meth:`element_keep` (overwritten)."""
        region.bitwise_and_(flags.neg_().view(region.shape) if region.dim() == 2 else flags.neg_().reshape(region.shape))

    def element_keep(self, kept: torch.Tensor, stay: torch.Tensor) -> torch.Tensor:
        """int8 ``[h, cols]`` element keep (1 = kept, 0 = pruned) of ``h`` rows from their group keep
        ``kept`` (``[h, groups]``, bool or int8 0/1) and the weights that stay when a group is pruned."""
        h = kept.shape[0]
        if self.m in _WORD_GROUP_SIZES:
            every = (1 << self.m) - 1  # a kept group keeps all M weights
            bits = stay | kept.view(torch.uint8) * every
            word = torch.empty(h, self.groups, dtype=_WORD_DTYPES[self.m], device=kept.device)
            _spread_bits(bits, self.m, out=word)
            return word.view(torch.int8).view(h, self.cols)
        rows = torch.ones(h, self.groups, self.m, dtype=torch.int8, device=kept.device)
        rows.scatter_(-1, stay.long(), kept.to(torch.int8).unsqueeze(-1).expand(-1, -1, self.n))
        return rows.view(h, self.cols)

    def count(self, pred: torch.Tensor) -> torch.Tensor:
        return torch.count_nonzero(pred) * self.n

    def sizes_of(self, flat_index: torch.Tensor) -> torch.Tensor:
        return torch.full_like(flat_index, self.n)

    def expand(self, keep_grid: torch.Tensor) -> torch.Tensor:
        if self._stay is None:
            raise PruningError("NMPattern.expand called before grid()")
        keep = torch.empty(self.rows, self.cols, dtype=torch.bool, device=keep_grid.device)
        keep_grid = keep_grid.view(self.rows, self.groups)
        step = self._row_chunks().step
        for a in self._row_chunks():
            b = min(a + step, self.rows)
            keep[a:b].view(torch.int8).copy_(self.element_keep(keep_grid[a:b], self._stay[a:b]))
        self._stay = None
        return keep


#: temporaries of ranking one group of M, per weight, in float32 units (pairs / M differences; M = 8
#: ranks the 7 pairs of one weight at a time, twice for its 2 words; a sort: values and int64 indices)
_RANK_TEMPORARIES = {2: 0.5, 4: 1.5, 8: 1.75}
#: the integer word holding one byte per weight of a group of M
_WORD_DTYPES = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_pair_weights_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def _pair_weights(m: int, word: int, device: torch.device) -> torch.Tensor:
    """int32 ``[pairs, 1, 1]``: for the pair ``(i, j)``, ``i < j``, of a group, ``2^(8i') - 2^(8j')``,
    where ``i'``/``j'`` is the byte of ``i``/``j`` in int32 word ``word`` (the term is 0 outside it)."""
    key = (m, word, device)
    if key not in _pair_weights_cache:
        def field(k: int) -> int:
            return 1 << 8 * (k - 4 * word) if 4 * word <= k < 4 * word + 4 else 0

        values = [field(i) - field(j) for i in range(m - 1) for j in range(i + 1, m)]
        _pair_weights_cache[key] = torch.tensor(values, dtype=torch.int32, device=device).view(-1, 1, 1)
    return _pair_weights_cache[key]


def _choose_in_words(
    groups: torch.Tensor, n: int, reduce: Reduce, ordered: bool = True, overwrite: bool = False
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The N lowest of every group of M in 2, 4, 8, in stable order (lower index first on ties).

    ``groups``: float32 ``[r, G, M]``, contiguous (``overwrite``: it may be overwritten). Returns (group scores: the ``reduce`` of the N
    lowest, float32 ``[r, G]``, or ``None`` unless ``ordered``; ``uint8 [r, G]`` with bit ``j`` set
    when weight ``j`` is *not* among the N lowest, i.e. stays when the group is pruned).

    The rank of weight j is ``rank_j = #{i < j: s_i <= s_j} + #{i > j: s_i < s_j}``; it is among
    the N lowest when ``rank_j < N``. For each pair ``i < j`` the sign bit of ``s_j - s_i`` says
    whether j ranks below i (``s_j - s_i`` is negative exactly when ``s_j < s_i``: equal finite
    floats subtract to +0). The ranks of a group are summed as byte fields of int32 words (four
    weights per word): field ``j`` starts at ``64 - N + j`` (``j`` = the earlier weights, counted as
    ranking below j until a pair says otherwise), so it ends at ``64 - N + rank_j``, in [56, 70], and
    weight j stays exactly when bit 6 of its field is set. Every
    step is a whole-tensor integer or float operation: no sort, no bool tensors.
    """
    r, g, m = groups.shape
    last = max(1, m // 4) - 1
    if m <= 4:  # every pair at once
        pieces = [(0, m - 1)]
    else:  # M = 8: the pairs of one first weight at a time (7 at most), so the temporaries stay small
        pieces = [(i, i + 1) for i in range(m - 1)]
    fields: list[torch.Tensor | None] = [None] * (last + 1)
    diff = torch.empty(m - 1 if m > 4 else m * (m - 1) // 2, r, g, dtype=torch.float32, device=groups.device)
    for first, stop in pieces:
        p0 = sum(m - 1 - i for i in range(first))  # index of the piece's first pair (pair-major order)
        p = 0
        for i in range(first, stop):  # pairs (i, i+1..m-1) in one op, written pair-major
            k = m - 1 - i
            torch.sub(groups[..., i + 1 :], groups[..., i : i + 1], out=diff[p : p + k].permute(1, 2, 0))
            p += k
        below = diff[:p].view(torch.int32).bitwise_right_shift_(31)  # -1 where s_j < s_i, else 0
        for w in range(last + 1):
            weights = _pair_weights(m, w, groups.device)[p0 : p0 + p]
            terms = below.bitwise_and_(weights) if w == last else below & weights
            part = torch.sum(terms, dim=0, dtype=torch.int32)  # integer sums: exact in any grouping
            fields[w] = part if fields[w] is None else fields[w].add_(part)
    words = []
    for w in range(last + 1):
        field = fields[w]
        field.add_(sum((_FIELD_BASE - n + j) << 8 * (j - 4 * w) for j in range(4 * w, min(m, 4 * w + 4))))
        words.append(field.bitwise_right_shift_(6).bitwise_and_(0x01010101))  # byte j: 1 when weight j stays
    stay_bits = torch.zeros(r, g, dtype=torch.int32, device=groups.device)
    for w, word in enumerate(words):  # bytes 0/1 -> bits 0..3 of the word
        packed = word | word >> 7
        stay_bits |= ((packed | packed >> 14) & 0xF) << 4 * w
    stay_bits = stay_bits.to(torch.uint8)
    if not ordered:
        return None, stay_bits
    if m == 2:
        stay_bytes = words[0].to(torch.int16)
    else:
        stay_bytes = words[0] if m == 4 else torch.stack(words, dim=-1)
    return _lowest_scores(groups, stay_bytes, n, reduce, overwrite), stay_bits


def _scores_given_stay(groups: torch.Tensor, stay_bits: torch.Tensor, n: int, reduce: Reduce, overwrite: bool = False) -> torch.Tensor:
    """The group scores :func:`_choose_in_words` returns, from the ``stay_bits`` it returned for the same
    ``groups`` (no ranking: the same operations on the same bytes, so the same bits)."""
    r, g, m = groups.shape
    stay_bytes = torch.empty(r, g, dtype=_WORD_DTYPES[m], device=groups.device)
    _spread_bits(stay_bits, m, out=stay_bytes)
    return _lowest_scores(groups, stay_bytes, n, reduce, overwrite)


def _lowest_scores(groups: torch.Tensor, stay_bytes: torch.Tensor, n: int, reduce: Reduce, overwrite: bool) -> torch.Tensor:
    """``reduce`` of the N lowest of every group: ``stay_bytes`` holds byte 1 for the weights that stay."""
    r, g, m = groups.shape
    keep_low = stay_bytes.view(torch.int8).view(r, g, m).neg_().add_(1)
    lowest = groups.mul_(keep_low) if overwrite else groups * keep_low  # the N lowest, others 0
    if reduce == "max":  # scores are >= 0 (groups holding PRUNED scores are marked by the caller)
        grid = torch.nn.functional.max_pool1d(lowest.view(1, 1, -1), m, m).view(r, g)
    else:
        grid = lowest.view(-1, m).mv(torch.ones(m, dtype=torch.float32, device=groups.device)).view(r, g)
        if reduce == "mean":
            grid.div_(n)
    return grid


def _choose_by_sorting(groups: torch.Tensor, n: int, reduce: Reduce, ordered: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """:func:`_choose_in_words` for any M: a stable sort of each group; returns the positions of the N lowest."""
    values, order = torch.sort(groups, dim=-1, stable=True)
    if not ordered:
        return None, order[..., :n]
    low = values[..., :n]
    if reduce == "max":
        grid = low.amax(dim=-1)
    else:
        grid = low.sum(dim=-1) / n if reduce == "mean" else low.sum(dim=-1)
    return grid, order[..., :n]


#: per M: (shift, mask) steps that move bit k of a group's byte to bit 8k (see _spread_bits)
_SPREAD_STEPS = {
    2: ((7, 0x0101),),
    4: ((14, 0x00030003), (7, 0x01010101)),
    8: ((28, 0x0000000F0000000F), (14, 0x0003000300030003), (7, 0x0101010101010101)),
}


def _spread_bits(bits: torch.Tensor, m: int, out: torch.Tensor) -> torch.Tensor:
    """``uint8`` bits ``0..m-1`` -> byte ``k`` of the integer word ``out`` is bit ``k`` (0 or 1); M in 2, 4, 8.

    Each step ``x = (x | x << shift) & mask`` moves the upper half of every bit run up by
    ``shift`` (28, 14, 7: half of what bit k still has to travel to bit 8k) and clears the copies
    left behind; no two bits ever land on the same position.
    """
    x = bits.to(out.dtype)
    *steps, (shift, mask) = _SPREAD_STEPS[m]
    for s, mk in steps:
        x = (x | x << s).bitwise_and_(mk)
    return torch.bitwise_and(x.bitwise_or_(x << shift), mask, out=out)


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
