"""Block scores and the block-norm mask in bounded memory (the math of ``DataNormSparsifier``).

The data is a matrix cut into ``(bh, bw)`` blocks from the top-left corner. A block's score is the
sum of ``|x|`` (L1) or ``x²`` (L2) over its entries, divided by its entry count when the matrix has
partial edge blocks (so the score is the block's mean). The ``k`` lowest blocks are chosen with an
exact threshold ``t``: blocks below ``t``, then blocks equal to ``t`` in index order until there
are ``k``. Two strategies, both exact, neither copying the data:

* **stored scores** (when the score table is at most a quarter of the data's size, e.g. fp32 data
  and blocks of 4 or more): one chunked pass fills the score table, then a few whole-table ops
  select ``t`` and write the mask;
* **two passes** (smaller blocks): a first chunked pass counts the scores below a bracket and
  collects those inside it; a second recomputes each chunk's scores and writes its mask.

Either way, for large tables ``t`` comes from a bracket: a fixed-seed random sample of scores gives
two quantiles around the ``k``-th, and ``kthvalue`` runs only on the scores between them (a bracket
that misses falls back to a full ``kthvalue``). Passes run over about 16 chunks, so the number of
(parallel) ops stays small, which matters on a busy machine. On CPU, per-chunk block sums use one
matrix-vector product with a vector of ones (much faster than a reduction over a tiny innermost
dimension); elsewhere, or when float32 matmul precision has been lowered (TF32, bf16), a plain
reduction keeps the scores exact.

Whatever the config, the work is bounded by the data: a block larger than the matrix is clamped to
it (one partial block, the mask torch.ao computes by padding), edge blocks are handled as exact
sub-grids of their own shape instead of being padded, and N:M ranking inside blocks writes its
comparisons into reused buffers. Every temporary is at most a few times the region of the data a
pass reads.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from prunekit.data.masks import CHUNK_ELEMENTS

__all__ = ["BlockGrid", "write_block_mask"]

# up to this many scores, select with one kthvalue (its temporaries are 12 bytes per score)
_DIRECT_BLOCKS = 1 << 16
_SAMPLE_BLOCKS = 1 << 16


class BlockGrid:
    """A 2-D ``mat`` cut into ``block``-shaped blocks, scored chunk by chunk of block rows.

    A block larger than ``mat`` is clamped to it (one partial block covers the data, as torch.ao's
    padding computes too). Edge blocks are never padded: a chunk is cut into at most four regions
    (full blocks, the right edge column, the bottom edge row, the corner), each an exact grid of
    its own block shape, so no pass allocates more than the data's region it reads.
    """

    def __init__(self, mat: torch.Tensor, block: tuple[int, int], norm: str) -> None:
        self.mat = mat
        self.rows, self.cols = mat.shape
        self.bh, self.bw = max(1, min(int(block[0]), self.rows)), max(1, min(int(block[1]), self.cols))
        self.nbr, self.nbc = math.ceil(self.rows / self.bh), math.ceil(self.cols / self.bw)
        self.square = norm == "L2"
        self.dtype = torch.float64 if mat.dtype == torch.float64 else torch.float32
        self.edges = bool(self.rows % self.bh or self.cols % self.bw)
        # at most ~16 chunks per pass (every op is a parallel region: few, large ones behave well
        # on a busy machine), each between CHUNK_ELEMENTS and 16x that many entries
        numel = self.rows * self.cols
        target = min(max(CHUNK_ELEMENTS, numel // 16), 16 * CHUNK_ELEMENTS)
        self.rows_per_chunk = max(1, target // (self.bh * self.cols))
        # the product is exact only at full float32 precision; TF32/bf16 matmuls would round scores
        self.use_product = mat.device.type == "cpu" and torch.get_float32_matmul_precision() == "highest"
        score_bytes = torch.empty((), dtype=self.dtype).element_size()
        self.store_scores = 4 * score_bytes <= self.bh * self.bw * mat.element_size()
        full = self.cols // self.bw
        #: (first column, end column, block width, slice of block columns) of the column regions
        self.col_parts: list[tuple[int, int, int, slice]] = []
        if full:
            self.col_parts.append((0, full * self.bw, self.bw, slice(0, full)))
        if self.cols % self.bw:
            self.col_parts.append((full * self.bw, self.cols, self.cols - full * self.bw, slice(full, full + 1)))
        self._ones_vectors: dict[int, torch.Tensor] = {}
        self._buffer: torch.Tensor | None = None

    @property
    def num_blocks(self) -> int:
        return self.nbr * self.nbc

    def chunks(self) -> Iterator[tuple[int, int]]:
        """Half-open ranges of block rows (about 16 of them, or fewer for small data)."""
        for i0 in range(0, self.nbr, self.rows_per_chunk):
            yield i0, min(i0 + self.rows_per_chunk, self.nbr)

    def row_parts(self, i0: int, i1: int) -> list[tuple[int, int, int, slice]]:
        """(first row, end row, block height, slice of the chunk's block rows) of block rows ``i0 .. i1``."""
        full_end = i1 if (i1 < self.nbr or self.rows % self.bh == 0) else i1 - 1
        parts = []
        if full_end > i0:
            parts.append((i0 * self.bh, full_end * self.bh, self.bh, slice(0, full_end - i0)))
        if full_end < i1:
            parts.append((full_end * self.bh, self.rows, self.rows - full_end * self.bh, slice(full_end - i0, i1 - i0)))
        return parts

    def regions(self, i0: int, i1: int) -> Iterator[tuple[int, int, int, int, int, int, slice, slice]]:
        """``(r0, r1, c0, c1, h, w, rows, cols)``: the exact sub-grids of block rows ``i0 .. i1``.

        ``mat[r0:r1, c0:c1]`` is cut into ``h x w`` blocks; ``rows, cols`` select their entries of a
        ``(i1 - i0, nbc)`` table of the chunk's blocks.
        """
        for r0, r1, h, rows in self.row_parts(i0, i1):
            for c0, c1, w, cols in self.col_parts:
                yield r0, r1, c0, c1, h, w, rows, cols

    def all_scores(self, name: str) -> torch.Tensor:
        """The ``(nbr, nbc)`` score table, computed chunk by chunk into one tensor."""
        scores = torch.empty(self.nbr, self.nbc, dtype=self.dtype, device=self.mat.device)
        for i0, i1 in self.chunks():
            self.chunk_scores(i0, i1, out=scores[i0:i1])
        return _checked(scores, name)

    def chunk_scores(self, i0: int, i1: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of block rows ``i0 .. i1``: ``(i1 - i0, nbc)``, written into ``out`` if given."""
        if out is None:
            out = torch.empty(i1 - i0, self.nbc, dtype=self.dtype, device=self.mat.device)
        for r0, r1, c0, c1, h, w, rows, cols in self.regions(i0, i1):
            self._region_scores(self.mat[r0:r1, c0:c1], h, w, out[rows, cols])
        return out

    def _region_scores(self, part: torch.Tensor, h: int, w: int, out: torch.Tensor) -> None:
        """Write into ``out`` the scores of ``part`` cut into ``h x w`` blocks (sums, or means with edges)."""
        size = part.numel()
        if self._buffer is None or self._buffer.numel() < size:
            self._buffer = torch.empty(size, dtype=self.dtype, device=self.mat.device)
        values = self._buffer[:size].view(part.shape)
        if part.dtype == self.dtype:
            torch.mul(part, part, out=values) if self.square else torch.abs(part, out=values)
        else:
            values.copy_(part)
            values.square_() if self.square else values.abs_()
        n, width = out.shape
        if h > 1:
            values = values.view(n, h, part.shape[1]).sum(1)
        if w > 1 and self.use_product:
            if out.is_contiguous():
                torch.mm(values.reshape(-1, w), self._ones(w), out=out.view(-1, 1))
            else:
                out.copy_(torch.mm(values.reshape(-1, w), self._ones(w)).view(n, width))
        elif w > 1:
            torch.sum(values.reshape(n, width, w), -1, out=out)
        else:
            out.copy_(values.reshape(n, width))
        if self.edges:
            out /= h * w

    def _ones(self, width: int) -> torch.Tensor:
        if width not in self._ones_vectors:
            self._ones_vectors[width] = torch.ones(width, 1, dtype=self.dtype, device=self.mat.device)
        return self._ones_vectors[width]

    def sample_scores(self, count: int) -> torch.Tensor:
        """Scores of ``count`` blocks drawn with a fixed seed (sorted)."""
        picks = torch.randint(self.num_blocks, (count,), generator=torch.Generator().manual_seed(0))
        picks = picks.to(self.mat.device)
        bi, bj = picks // self.nbc, picks % self.nbc
        dev = self.mat.device
        r = bi[:, None] * self.bh + torch.arange(self.bh, device=dev)
        c = bj[:, None] * self.bw + torch.arange(self.bw, device=dev)
        valid = (r < self.rows)[:, :, None] & (c < self.cols)[:, None, :]
        vals = self.mat[r.clamp(max=self.rows - 1)[:, :, None], c.clamp(max=self.cols - 1)[:, None, :]].to(self.dtype)
        vals = (vals.square() if self.square else vals.abs()) * valid
        sums = vals.sum((1, 2))
        if self.edges:
            sums /= valid.sum((1, 2))
        return sums.sort().values


def _threshold(grid: BlockGrid, k: int, name: str) -> tuple[torch.Tensor, int, int, list[torch.Tensor] | None]:
    """``(t, #scores < t, #scores == t, stored chunk scores or None)`` for the ``k``-th smallest score."""
    if grid.num_blocks > _DIRECT_BLOCKS:
        found = _bracketed_threshold(grid, k, name)
        if found is not None:
            return (*found, None)
    stored = []
    for i0, i1 in grid.chunks():
        stored.append(_checked(grid.chunk_scores(i0, i1), name))
    flat = torch.cat([s.view(-1) for s in stored])
    t = flat.kthvalue(k).values
    return t, int(torch.count_nonzero(flat < t)), int(torch.count_nonzero(flat == t)), stored


def _bracketed_threshold(grid: BlockGrid, k: int, name: str) -> tuple[torch.Tensor, int, int] | None:
    # a sample of at most 1/16 of the blocks: its index temporaries stay small next to the data
    count = max(1024, min(_SAMPLE_BLOCKS, CHUNK_ELEMENTS // (grid.bh * grid.bw), grid.num_blocks // 16))
    lo, hi = _bracket(grid.sample_scores(count), k / grid.num_blocks)
    same = lo is not None and hi is not None and bool(lo == hi)
    budget = max(grid.num_blocks // 2, 1)  # a guard: real brackets hold a few percent of the scores
    below = inside = 0
    total = torch.zeros((), dtype=grid.dtype, device=grid.mat.device)  # NaN anywhere makes it NaN
    collected: list[torch.Tensor] = []
    for i0, i1 in grid.chunks():
        s = grid.chunk_scores(i0, i1).view(-1)
        total += s.sum()  # scores are >= 0, so only a NaN score can make the sum NaN
        sel = torch.ones_like(s, dtype=torch.bool) if lo is None else s >= lo
        if lo is not None:
            below += s.numel() - int(torch.count_nonzero(sel))
        if hi is not None:
            sel &= s <= hi
        inside += int(torch.count_nonzero(sel))
        if not same:
            if inside > budget:
                _checked(total, name)
                return None  # the bracket is too wide to be worth it
            collected.append(s[sel])
    _checked(total, name)
    if not below < k <= below + inside:
        return None  # the sample missed the k-th score
    if same:
        return lo.clone(), below, inside  # type: ignore[union-attr]
    cands = torch.cat(collected)
    t = cands.kthvalue(k - below).values
    return t, below + int(torch.count_nonzero(cands < t)), int(torch.count_nonzero(cands == t))


def _checked(scores: torch.Tensor, name: str) -> torch.Tensor:
    if torch.isnan(scores).any():
        raise ValueError(f"data {name!r} contains NaN, so its blocks cannot be ranked; replace the NaN values first")
    return scores


def write_block_mask(grid: BlockGrid, out: torch.Tensor, k: int, zeros: int, name: str = "data") -> None:
    """Write into the bool ``out`` (``rows x cols``) the mask choosing the ``k`` lowest blocks.

    ``zeros`` entries of each chosen block are zeroed (``>= bh·bw``: the whole block): the entries
    of smallest magnitude, ties by position.
    """
    if grid.store_scores:
        _write_from_stored_scores(grid, out, k, zeros, name)
        return
    t, less, equal, stored = _threshold(grid, k, name)
    ties = k - less  # blocks scoring exactly t to choose: the first ones by index
    every_tie = ties == equal  # the usual case: t itself is the only block scoring t
    whole = zeros >= grid.bh * grid.bw
    kept_blocks = 0
    for index, (i0, i1) in enumerate(grid.chunks()):
        s = stored[index] if stored is not None else grid.chunk_scores(i0, i1)
        keep = s > t if every_tie else s >= t
        if not every_tie and ties > 0:
            first = (s == t).view(-1).nonzero().flatten()[:ties]
            keep.view(-1)[first] = False
            ties -= first.numel()
        kept_blocks += int(torch.count_nonzero(keep))
        _write_chunk(grid, out, i0, i1, keep, whole, zeros)
    if grid.num_blocks - kept_blocks != k:  # only if recomputed scores differed from the first pass
        raise RuntimeError(
            f"data {name!r}: chose {grid.num_blocks - kept_blocks} blocks instead of {k}; scores were not reproducible"
        )


def _write_from_stored_scores(grid: BlockGrid, out: torch.Tensor, k: int, zeros: int, name: str) -> None:
    scores = grid.all_scores(name)
    keep = _keep_all_but_lowest(scores.view(-1), k).view(grid.nbr, grid.nbc)
    del scores
    whole = zeros >= grid.bh * grid.bw
    if whole and not grid.edges:
        out.view(grid.nbr, grid.bh, grid.nbc, grid.bw).copy_(keep[:, None, :, None].expand(-1, grid.bh, -1, grid.bw))
        return
    for i0, i1 in grid.chunks():
        _write_chunk(grid, out, i0, i1, keep[i0:i1], whole, zeros)


def _keep_all_but_lowest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Bool like the 1-D ``flat``: False at its ``k`` lowest values (ties: lower index first)."""
    t = _kth_in_memory(flat, k)
    less = int(torch.count_nonzero(flat < t))
    ties = k - less
    if ties == int(torch.count_nonzero(flat == t)):
        return flat > t
    keep = flat >= t
    keep[(flat == t).nonzero().flatten()[:ties]] = False
    return keep


def _kth_in_memory(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest of ``flat`` (exact), bracketed by a sample for large inputs."""
    if flat.numel() > _DIRECT_BLOCKS:
        found = _bracketed_kth(flat, k)
        if found is not None:
            return found
    return flat.kthvalue(k).values  # small, or the sample missed the k-th value: exact, more memory


def _bracketed_kth(flat: torch.Tensor, k: int) -> torch.Tensor | None:
    n = flat.numel()
    count = max(1024, min(_SAMPLE_BLOCKS, n // 16))
    picks = torch.randint(n, (count,), generator=torch.Generator().manual_seed(0)).to(flat.device)
    sample = flat[picks].sort().values
    lo, hi = _bracket(sample, k / n)
    inside = flat >= lo if lo is not None else torch.ones_like(flat, dtype=torch.bool)
    below = n - int(torch.count_nonzero(inside)) if lo is not None else 0
    if hi is not None:
        inside &= flat <= hi
    count_inside = int(torch.count_nonzero(inside))
    if not below < k <= below + count_inside:
        return None
    if lo is not None and hi is not None and bool(lo == hi):
        return lo.clone()  # every score inside equals lo
    if count_inside > max(n // 2, 1):
        return None  # the bracket is too wide to be worth it
    return flat[inside].kthvalue(k - below).values


def _bracket(sample: torch.Tensor, q: float) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Sample quantiles around ``q`` wide enough to hold the true ``q``-quantile (None: unbounded)."""
    count = sample.numel()
    margin = 4.0 / math.sqrt(count) + 1.0 / count
    lo_i, hi_i = math.floor((q - margin) * count), math.ceil((q + margin) * count)
    return (sample[lo_i] if lo_i >= 0 else None), (sample[hi_i] if hi_i < count else None)


def _write_chunk(
    grid: BlockGrid, out: torch.Tensor, i0: int, i1: int, keep: torch.Tensor, whole: bool, zeros: int
) -> None:
    """Write the mask of block rows ``i0 .. i1`` (``keep``: which of their blocks stay) into ``out``."""
    for r0, r1, c0, c1, h, w, rows, cols in grid.regions(i0, i1):
        kept = keep[rows, cols]
        n, width = kept.shape
        target = out[r0:r1, c0:c1].view(n, h, width, w)  # a view even for a column slice
        if whole:
            target.copy_(kept[:, None, :, None].expand(n, h, width, w))
            continue
        blocks = grid.mat[r0:r1, c0:c1].abs().view(n, h, width, w).permute(0, 2, 1, 3).reshape(n * width, h * w)
        entries = _kept_in_rows(blocks, zeros)
        entries |= kept.reshape(-1, 1)
        target.copy_(entries.view(n, width, h, w).permute(0, 2, 1, 3))


def _kept_in_rows(values: torch.Tensor, zeros: int) -> torch.Tensor:
    """Bool like ``values``: False at the ``zeros`` smallest entries of each row (ties: earlier first)."""
    rows, size = values.shape
    if zeros >= size:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    if size > 32:  # pairwise comparisons cost size² passes; sort instead
        order = values.argsort(dim=1, stable=True)
        kept = torch.ones(values.shape, dtype=torch.bool, device=values.device)
        kept.scatter_(1, order[:, :zeros], False)
        return kept
    columns = values.t().contiguous()  # (size, rows): every comparison below reads contiguous memory
    ranks = torch.zeros(columns.shape, dtype=torch.uint8, device=values.device)
    smaller = torch.empty(rows, dtype=torch.bool, device=values.device)
    not_smaller = torch.empty_like(smaller)
    for i in range(size):
        for j in range(i + 1, size):
            torch.lt(columns[j], columns[i], out=smaller)  # else entry i ranks first (ties go to the earlier)
            ranks[i] += smaller
            torch.logical_not(smaller, out=not_smaller)
            ranks[j] += not_smaller
    return ranks.t() >= zeros
