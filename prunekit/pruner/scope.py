"""Which blocks to prune: the local choice in one layer and the global budget across layers.

**Local** (:func:`select_blocks`): prune ``k`` elements of a layer by pruning its lowest-scored
blocks. Blocks are taken in ascending score (ties: lower flat index first, so every rank and
every run chooses the same blocks); a block is taken while ``pruned + size/2 < k``, i.e. the
pruned count is the block prefix closest to ``k`` (the fewer blocks on a tie). With 1x1 blocks
exactly ``k`` elements are pruned. Already pruned blocks (score :data:`PRUNED`) stay pruned.

**Global** (:func:`global_budgets`): with ``K`` elements to prune across the group, find the
smallest threshold ``t`` such that ``sum_l clamp(c_l(<= t), lo_l, hi_l) >= K`` (``c_l`` = elements
of layer ``l`` in blocks scored ``<= t``; ``lo/hi`` from ``min/max_sparsity_per_op``). Layers get
``clamp(c_l(< t))`` plus the remainder of the ties at ``t`` in layer order; each layer then makes
its local choice with that budget.

Both thresholds come from :func:`find_threshold`: a strided sample brackets the answer, and one
pass both counts exactly below the bracket and gathers the few scores inside it, which are then
sorted and searched (the counts at the threshold come from the same gathered scores, without
another pass). Grids are read chunk by chunk (:mod:`prunekit.pruner.grids`): no copy of
all scores is made (no concatenation, no full sort, no ``kthvalue`` of a whole layer), temporaries
are chunk-sized, counts accumulate on the device (one host read per pass), and every rank
computes the same result from the same scores.

**Sharded layers** (FSDP2, :mod:`prunekit.pruner.sharding`): a grid then holds this rank's block
rows only, and ``comm`` (a :class:`~prunekit.pruner.sharding.ShardComm`) turns every count and
maximum into the one of the whole layer, so every rank reaches the same threshold, tie cut and
budgets as one process would; flat block indices (tie cuts) are global (this rank's grid starts at
``comm.offsets[i]``). The threshold is then found by a radix select over the float32 bit patterns of
the scores (:func:`_radix_find`): two passes (three for groups of more than 8 layers), each an
all-reduced histogram of one digit per layer (65,536 and 32,768 element counts; 2,048 and 1,024),
exact, the same on any number of ranks. No weight or score
is gathered (only the flat indices of tied blocks of unequal size, for their tie cut).

**The choice** of a layer (:func:`choose_blocks`) is a :class:`Choice`: a threshold ``t`` and a tie cut
(blocks scored above ``t`` stay, below go, and of those scored exactly ``t`` the ones before a flat
index go), so no keep grid of the layer's size is ever built; :func:`select_blocks` materializes it.
"""

from __future__ import annotations

import math
import struct
from typing import Callable, Sequence, TypeVar

import torch

from prunekit.pruner.grids import BlockGrid, _chunk_size, as_grid, split_grid
from prunekit.pruner.parallel import MIN_EVENT_LAYER, in_worker, parallel_map
from prunekit.pruner.patterns import BlockPattern, NMPattern
from prunekit.pruner.sharding import ShardComm

__all__ = [
    "Choice", "choose_blocks", "select_blocks", "global_budgets", "global_threshold", "global_choice",
    "element_budget", "find_threshold",
]

Pattern = BlockPattern | NMPattern
R = TypeVar("R")


def _f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<i", bits))[0]


def _bits(value: float) -> int:
    return struct.unpack("<i", struct.pack("<f", value))[0]


def element_budget(ratio: float, numel: int) -> int:
    """Elements to prune for sparsity ``ratio``: ``round(ratio · numel)`` (ties to even)."""
    return int(round(ratio * numel))


def _count(pred: torch.Tensor, grid: BlockGrid, start: int) -> torch.Tensor:
    """Elements in the blocks of chunk ``pred`` (flat, from block ``start``) that are True (0-d int64)."""
    pattern = grid.pattern
    if pattern.uniform:
        return torch.count_nonzero(pred) * pattern.block_numel
    idx = torch.arange(start, start + pred.numel(), device=pred.device)
    return (pattern.sizes_of(idx) * pred).sum()


def _counts(grids: Sequence[BlockGrid], tests: Sequence[tuple[str, float]], comm: ShardComm | None = None) -> list[list[int]]:
    """``[test][layer]`` element counts of blocks with ``score <op> v`` (``op`` in le, lt), one pass.

    Equal-sized blocks are counted by summing float32 0/1 comparison flags (several times faster
    than bool comparisons on CPU, exact below 2^24 per chunk); other grids through their block sizes.
    """

    def count(grid: BlockGrid) -> list[int]:
        uniform = grid.pattern.uniform
        flag = torch.empty(_chunk_size(grid), dtype=torch.float32, device=grid.device) if uniform else None
        parts: list[list[torch.Tensor]] = [[] for _ in tests]
        for start, chunk in grid.chunks():
            for ti, (op, v) in enumerate(tests):
                compare = torch.le if op == "le" else torch.lt
                if flag is not None:
                    parts[ti].append(compare(chunk, v, out=flag[: chunk.numel()]).sum().double())
                else:
                    parts[ti].append(_count(compare(chunk, v), grid, start).double())
        zero = torch.zeros((), dtype=torch.float64, device=grid.device)
        scale = grid.pattern.block_numel if uniform else 1
        totals = torch.stack([torch.stack(p).sum() if p else zero for p in parts])
        return [int(value) * scale for value in totals.tolist()]  # one host read per layer and pass

    out = [[0] * len(grids) for _ in tests]
    for li, values in enumerate(_each_grid(count, grids, _sum_lists)):
        for ti, value in enumerate(values):
            out[ti][li] = value
    return comm.counts(out) if comm is not None else out


def _grid_weight(g: BlockGrid) -> int:
    return g.blocks * max(1, int(getattr(g.pattern, "m", None) or g.pattern.block_numel))  # N:M: groups of m


def _each_grid(fn: Callable[[BlockGrid], R], grids: Sequence[BlockGrid], merge: Callable[[list[R]], R] | None = None) -> list[R]:
    """``[fn(g) for g in grids]``, grids in parallel, each on one thread (:func:`~prunekit.pruner.parallel.parallel_map`):
    a grid's chunk-sized temporaries are a small share of its own layer's bytes, so an event's extra
    memory stays bounded by the layers' bytes whatever the number of threads.

    ``merge``: ``fn`` is a pass whose result over a grid is ``merge`` of its results over pieces of
    whole chunks in flat order (counts, histograms, brackets). A grid holding more than its share of
    the work (one large layer: the layers alone cannot keep the threads busy) is then read in as many
    pieces as there are threads, each piece on one thread: on torch's intra-op threads instead, every
    operation waits for all of them, several times slower when another process holds a core."""
    threads = torch.get_num_threads()
    weights = [_grid_weight(g) for g in grids]
    if merge is not None and threads > 1 and not in_worker() and all(g.device.type == "cpu" for g in grids):
        share = sum(weights) / threads
        owners, items = [], []
        for i, (g, w) in enumerate(zip(grids, weights)):
            pieces = split_grid(g, threads) if w > share else None
            owners += [i] * (len(pieces) if pieces else 1)
            items += pieces or [g]
        if len(items) > len(grids):
            results = parallel_map(fn, items, [_grid_weight(p) for p in items], [p.device for p in items], MIN_EVENT_LAYER)
            per_grid: list[list[R]] = [[] for _ in grids]
            for i, result in zip(owners, results):
                per_grid[i].append(result)
            return [rs[0] if len(rs) == 1 else merge(rs) for rs in per_grid]
    return parallel_map(fn, list(grids), weights, [g.device for g in grids], MIN_EVENT_LAYER)


def _sum_lists(results: list[list[int]]) -> list[int]:
    return [sum(values) for values in zip(*results)]


def _counts_le(grids: Sequence[BlockGrid], values: Sequence[float], comm: ShardComm | None = None) -> list[list[int]]:
    return _counts(grids, [("le", v) for v in values], comm)


def _already_pruned(grids: Sequence[BlockGrid], comm: ShardComm | None = None) -> list[int]:
    """Elements in blocks scored ``PRUNED``, per grid (a counting pass only where not known)."""
    known = [getattr(g, "known_pruned", None) for g in grids]
    unknown = [g for g, k in zip(grids, known) if k is None]
    counted = iter(_counts(unknown, [("lt", 0.0)])[0] if unknown else [])
    local = [k if k is not None else next(counted) for k in known]
    return comm.counts([local])[0] if comm is not None else local


def _total_blocks(g: BlockGrid, comm: ShardComm | None) -> int:
    """Blocks of one layer's grid ``g`` over every rank (``g.blocks`` without sharding)."""
    return comm.totals[0] if comm is not None else g.blocks


def _elements(grid: BlockGrid) -> int:
    pattern = grid.pattern
    if pattern.uniform:
        return grid.blocks * pattern.block_numel
    if isinstance(pattern, BlockPattern):  # blocks tile the layer
        return pattern.rows * pattern.cols
    return int(pattern.count(torch.ones(grid.shape, dtype=torch.bool)))


def _max(grids: Sequence[BlockGrid], comm: ShardComm | None = None) -> float:
    top = float("-inf")
    for i, grid in enumerate(grids):
        if comm is not None and not comm.sharded[i] and comm.rank != 0:
            continue  # a replicated grid: rank 0's stands for it
        for _, chunk in grid.chunks():
            top = max(top, float(chunk.max())) if chunk.numel() else top
    return comm.max(top) if comm is not None else top


def _first_holding(lo: int, hi: int, holds: Callable[[int], bool]) -> int:
    """The smallest ``i`` in ``(lo, hi]`` with ``holds(i)``, for ``holds`` monotone, false at ``lo`` (or
    ``lo`` out of its domain) and true at ``hi``: bisection, ``log2(hi - lo)`` calls."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if holds(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _smallest_threshold(reaches: Callable[[float], bool], high: float) -> float:
    """The smallest float32 ``t`` in ``[0, high]`` with ``reaches(t)``; ``reaches(high)`` must hold."""
    if reaches(0.0):
        return 0.0
    # non-negative float32 values order like their bit patterns
    return _f32(_first_holding(0, _bits(high), lambda bits: reaches(_f32(bits))))


class Choice:
    """Which blocks of one grid stay: those scored above ``t``, and those scored exactly ``t`` whose flat
    index is ``cut`` or more (the lower indices among the ties go first, as in a stable sort)."""

    __slots__ = ("t", "cut")

    def __init__(self, t: float, cut: int) -> None:
        self.t, self.cut = float(t), int(cut)

    def __repr__(self) -> str:
        return f"Choice(t={self.t!r}, cut={self.cut})"

    def keep(self, start: int, chunk: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """int8 0/1 flags (into ``out``, of ``chunk``'s shape) of the blocks of ``chunk`` (flat offset ``start``) that stay."""
        cut = self.cut - start
        n = chunk.numel()
        if cut <= 0:
            return torch.ge(chunk, self.t, out=out)
        if cut >= n:
            return torch.gt(chunk, self.t, out=out)
        flat, dest = chunk.reshape(-1), out.view(-1)
        torch.gt(flat[:cut], self.t, out=dest[:cut])
        torch.ge(flat[cut:], self.t, out=dest[cut:])
        return out


#: every block not already pruned stays
_KEEP_UNPRUNED = (0.0, 0)


def choose_blocks(
    grid: object,
    pattern: Pattern,
    k: int,
    low: int = 0,
    high: int | None = None,
    hint: float | None = None,
    hint_counts: tuple[int, int] | None = None,
    comm: ShardComm | None = None,
) -> Choice:
    """The :class:`Choice` of the blocks that stay after pruning about ``k`` elements (module docstring).

    ``low`` / ``high`` bound the pruned elements (``min/max_sparsity_per_op``): rounding ``k`` to whole
    blocks never crosses them (with uniform blocks ``low`` is met when a whole number of blocks fits).
    ``hint``: a likely threshold (the global one); when its counts show it is this budget's
    threshold, the search is skipped (the result is the same either way). ``hint_counts``: the
    elements of this grid scored ``< hint`` and ``<= hint``, when known (saves counting them).

    ``comm``: the grid holds this rank's block rows of a sharded layer (``pattern`` is then the whole
    layer's, ``grid.pattern`` this rank's part); the choice is the whole layer's, its tie cut a global
    flat index.
    """
    g = as_grid(grid, pattern)
    nblocks = _total_blocks(g, comm)
    if high is not None:
        k = min(k, high)
    (already,) = _already_pruned([g], comm)
    if k <= 0 or already >= k:
        return Choice(*_KEEP_UNPRUNED)
    if pattern.uniform:
        size = pattern.block_numel
        blocks = min((2 * k + size - 1) // (2 * size), nblocks)  # the prefix closest to k, fewer on a tie
        ceiling = nblocks if high is None else min(nblocks, high // size)
        floor = min(-(-low // size), ceiling)  # at least `low` elements where whole blocks allow it
        blocks = min(max(blocks, floor), ceiling)
        k_elems = blocks * size
        if k_elems <= already:
            return Choice(*_KEEP_UNPRUNED)
        if blocks == nblocks:  # every block goes (2:4 at 0.5, say): nothing to search
            return Choice(float("inf"), nblocks)
        if hint is not None and hint >= 0:
            counts = hint_counts if hint_counts is not None else _below_and_tied(g, hint, comm)
            choice = _lowest_at(g, hint, blocks, counts, verify=True, comm=comm, size=size)
            if choice is not None:
                return choice
        t, found = _find([g], [pattern], lambda c: c[0] >= k_elems, k_elems, comm)
        counts = found.counts(t)[0] if found is not None else _below_and_tied(g, t, comm)
        return _lowest_at(g, t, blocks, counts, verify=False, comm=comm, found=found, size=size)  # type: ignore[return-value]
    # partial edge blocks: blocks differ in size, the closest prefix is decided among the ties
    t, found = _find([g], [pattern], lambda c: c[0] >= k, k, comm)
    if t < 0:  # nothing but pruned blocks: no tie goes
        return Choice(t, 0)
    below, ties = found.ties(t) if isinstance(found, _Found) else _below_and_ties(g, t, comm)
    n = 0
    if ties.numel():
        sizes = pattern.sizes_of(ties)
        n = _take_closest(k - below, sizes)
        if high is not None and n:  # the closest prefix may overshoot by part of a block
            n = int((torch.cumsum(sizes[:n], 0) <= high - below).sum())
    return Choice(t, int(ties[n]) if n < ties.numel() else nblocks)


def select_blocks(
    grid: object, pattern: Pattern, k: int, low: int = 0, high: int | None = None, hint: float | None = None
) -> torch.Tensor:
    """Bool grid (the grid's 2-D shape) of kept blocks after pruning about ``k`` elements: the
    :func:`choose_blocks` choice, materialized (one byte per block)."""
    g = as_grid(grid, pattern)
    return materialize(g, choose_blocks(g, pattern, k, low, high, hint))


def materialize(grid: BlockGrid, choice: Choice) -> torch.Tensor:
    """The bool keep grid of ``choice`` on ``grid`` (one pass)."""
    keep = torch.empty(grid.blocks, dtype=torch.bool, device=grid.device)
    keep8 = keep.view(torch.int8)
    for start, chunk in grid.chunks():
        choice.keep(start, chunk, out=keep8[start : start + chunk.numel()])
    return keep.view(grid.shape)


def _below_and_ties(g: BlockGrid, t: float, comm: ShardComm | None = None) -> tuple[int, torch.Tensor]:
    """``(elements scored < t, flat indices of the blocks scored == t)`` in one pass (``t >= 0``)."""
    below = torch.zeros((), dtype=torch.int64, device=g.device)
    ties: list[torch.Tensor] = []
    for start, chunk in g.chunks():
        below += _count(chunk < t, g, start)
        idx = torch.nonzero(chunk == t).view(-1)
        if idx.numel():
            ties.append(idx + start)
    tie_idx = torch.cat(ties) if ties else torch.empty(0, dtype=torch.int64, device=g.device)
    if comm is None:
        return int(below), tie_idx
    (below_all,) = comm.counts([[int(below)]])
    (gathered,) = comm.gather([tie_idx.cpu() + comm.offsets[0]], grid=0)
    return below_all[0], gathered.to(g.device)


def _below_and_tied(g: BlockGrid, t: float, comm: ShardComm | None = None) -> tuple[int, int]:
    """Elements of ``g`` scored ``< t`` and ``<= t`` (one pass; uniform patterns)."""
    below, upto = _counts([g], [("lt", t), ("le", t)], comm)
    return below[0], upto[0]


def _lowest_at(
    g: BlockGrid, t: float, blocks: int, counts: tuple[int, int], *, verify: bool, comm: ShardComm | None = None,
    found: "_Found | _Counted | None" = None, size: int | None = None,
) -> Choice | None:
    """The choice that prunes the ``blocks`` lowest blocks (uniform sizes), given their threshold ``t``.

    ``counts``: the elements scored ``< t`` and ``<= t``. Every block scored below ``t`` is pruned, and
    of those scored exactly ``t`` the first ones in flat order until ``blocks`` are. ``verify``:
    return ``None`` unless ``count(< t) <= blocks <= count(<= t)``, i.e. unless ``t`` really is their
    threshold (a hint); otherwise the tie count is clamped to that range. ``size``: elements per block
    (the whole layer's; a rank that owns no block row of a sharded layer has a degenerate local pattern).
    """
    size = size if size is not None else g.pattern.block_numel
    below, tied = counts[0] // size, (counts[1] - counts[0]) // size
    n = blocks - below
    if verify and not 0 <= n <= tied:
        return None
    n = max(0, min(n, tied))
    if n == 0:
        return Choice(t, 0)  # every tie stays
    if n == tied:
        return Choice(t, _total_blocks(g, comm))  # every tie goes
    if isinstance(found, _Found) and found.inside[0].index is not None:  # the bracket holds every tie's index
        bracket = found.inside[0]
        return Choice(t, int(bracket.index[bracket.values == t][n]))
    mine = found.mine[0] if isinstance(found, _Counted) else None
    return Choice(t, _nth_tie(g, t, n, comm, size, mine))


def _nth_tie(
    g: BlockGrid, t: float, n: int, comm: ShardComm | None = None, size: int | None = None, mine_counts: tuple[int, int] | None = None
) -> int:
    """Flat index of the block after the first ``n`` blocks scored exactly ``t`` (reads chunks up to it).

    Sharded: the ranks' tie counts (one all-gather; ``mine_counts``: this rank's elements ``< t`` and
    ``<= t`` when known) say which rank holds it; that rank finds it."""
    if comm is not None:
        if mine_counts is None:
            below, upto = _counts([g], [("lt", t), ("le", t)])
            mine_counts = (below[0], upto[0])
        mine = (mine_counts[1] - mine_counts[0]) // (size if size is not None else g.pattern.block_numel)
        per_rank = comm.gather([torch.tensor([mine], dtype=torch.int64)])[0].tolist()
        before = sum(per_rank[: comm.rank])
        found = 0
        if before <= n < before + mine:
            found = comm.offsets[0] + _nth_tie(g, t, n - before) + 1
        (result,) = comm.counts([[found]])  # only the rank that holds it adds its index (+ 1)
        return result[0] - 1 if result[0] > 0 else comm.totals[0]
    skipped = 0
    for start, chunk in g.chunks():
        idx = torch.nonzero(chunk.reshape(-1) == t).view(-1)
        if skipped + idx.numel() > n:
            return start + int(idx[n - skipped])
        skipped += idx.numel()
    return g.blocks


#: sample size of the threshold bracket, and the bracket's half-width in samples
_SAMPLE, _SLACK = 1 << 16, 1 << 9  # a quantile of 2^16 samples errs by ~0.4 % (1 sigma ~ 128 samples)


def find_threshold(
    grids: Sequence[object], patterns: Sequence[Pattern], reaches: Callable[[list[int]], bool], target: int
) -> float:
    """The smallest block score ``t >= 0`` with ``reaches([c_l(<= t) for each layer])`` (the largest score if none).

    ``c_l`` counts elements. A strided sample of the scores brackets the answer around ``target``
    elements: ``(a, b]``; one pass counts exactly at ``a`` and gathers the few scores inside the
    bracket, which confirms ``reaches(c(a))`` false and ``reaches(c(b))`` true and is then
    searched exactly (a threshold of 0 is found there too when ``a < 0``). When the bracket misses
    (heavily clamped global budgets), an exact bisection over float32 bit patterns takes over.
    """
    return _find([as_grid(g, p) for g, p in zip(grids, patterns)], patterns, reaches, target)[0]


class _Found:
    """The bracket pass that found a threshold: exact counts at any ``t`` inside the bracket, no pass needed."""

    def __init__(self, below_a: list[int], inside: list["_Bracket"]) -> None:
        self.below_a, self.inside = below_a, inside

    def counts(self, t: float) -> list[tuple[int, int]]:
        """Per grid: elements scored ``< t`` and ``<= t``."""
        return [(base + b.elements_where(b.values < t), base + b.elements_where(b.values <= t)) for base, b in zip(self.below_a, self.inside)]

    def ties(self, t: float) -> tuple[int, torch.Tensor]:
        """One grid of unequal blocks: elements scored ``< t`` and the flat indices of the blocks scored ``t`` (ascending)."""
        bracket = self.inside[0]
        return self.below_a[0] + bracket.elements_where(bracket.values < t), bracket.index[bracket.values == t]


def _find(
    gs: Sequence[BlockGrid],
    patterns: Sequence[Pattern],
    reaches: Callable[[list[int]], bool],
    target: int,
    comm: ShardComm | None = None,
) -> tuple[float, "_Found | _Counted | None"]:
    """:func:`find_threshold` on grids, and what holds the counts at the answer (``None`` when found otherwise):
    the bracket that held it (:class:`_Found`), or the counts of the sharded search (:class:`_Counted`)."""
    totals = [_elements(g) for g in gs]
    if comm is not None:
        totals = comm.counts([totals])[0]
    if not reaches(totals):  # every score <= the largest one
        return _max(gs, comm), None
    if comm is not None:
        return _radix_find(gs, reaches, comm)
    vals, pos = _weighted_sample(gs, target)
    # the bracket's half-width in samples: _SLACK for a full sample, proportionally fewer for the
    # smaller sample of a small layer (the same share of the scores, the same error in sigmas)
    base_slack = max(min(_SLACK, 4), _SLACK * vals.numel() // _SAMPLE)
    for slack in (base_slack, 4 * base_slack):
        lo, hi = pos - slack, pos + slack
        a = -0.5 if lo < 0 else float(vals[lo])
        b = float("inf") if hi >= vals.numel() else float(vals[hi])
        if not b > a:
            continue
        ca, inside = _bracket_pass(gs, a, b)
        cb = [base + bracket.elements for base, bracket in zip(ca, inside)]
        if not reaches(ca) and reaches(cb):
            return _search_bracket(inside, reaches, ca), _Found(ca, inside)
    top = _max(gs)
    return _smallest_threshold(lambda v: reaches(_counts_le(gs, [v])[0]), top), None


#: digits of the sharded search, high first: (shift, bins) covering the 31 bits of a non-negative float32:
#: two passes with up to :data:`_WIDE_DIGIT_GRIDS` grids (a local choice has one: at most ~4 MiB of
#: histograms per all-reduce), three with more (16 KiB per grid and pass)
_RADIX_DIGITS_WIDE, _RADIX_DIGITS = ((15, 1 << 16), (0, 1 << 15)), ((20, 2048), (10, 1024), (0, 1024))
_WIDE_DIGIT_GRIDS = 8


class _Counted:
    """The element counts ``< t`` and ``<= t`` per grid at the threshold ``t`` a search found."""

    def __init__(self, t: float, below: list[int], upto: list[int], mine: list[tuple[int, int]]) -> None:
        self.t, self.below, self.upto = t, below, upto
        #: the same counts of this rank's blocks only (where a tie cut finds its rank without a pass)
        self.mine = mine

    def counts(self, t: float) -> list[tuple[int, int]]:
        """Per grid: elements scored ``< t`` and ``<= t`` (``t`` must be the threshold found)."""
        assert t == self.t, (t, self.t)
        return list(zip(self.below, self.upto))


def _digit_histogram(g: BlockGrid, lo: int, shift: int, bins: int) -> torch.Tensor:
    """Elements of ``g`` by digit of their score's float32 bit pattern (``[bins + 2]`` float64, on ``g``'s device).

    Bin 0: scores whose pattern is below ``lo`` (:data:`PRUNED` and other negative scores too);
    bin ``1 + d``: patterns in ``[lo + (d << shift), lo + ((d + 1) << shift))``; the last bin: above.
    ``-0.0`` counts as ``0.0`` (it compares equal). Non-negative float32 values order like their
    patterns (as int32), so the counts ``<= v`` of every ``v`` at a digit boundary follow by summing.
    Scores are float32, finite or ``+inf`` (NaN is refused before any scoring).
    """
    hist = torch.zeros(bins + 2, dtype=torch.float64, device=g.device)
    uniform = g.pattern.uniform
    buffer = torch.empty(_chunk_size(g), dtype=torch.float32, device=g.device)
    for start, chunk in g.chunks():
        bits = torch.add(chunk, 0.0, out=buffer[: chunk.numel()]).view(torch.int32)  # -0.0 becomes +0.0
        # 1 + digit = (bits - lo + 2^shift) >> shift, clamped to [0, bins + 1]; negative scores (-1 after the
        # clamp) land in bin 0; no int32 overflow: 0 <= lo < 2^31 and patterns are <= +inf's 0x7F800000
        bits.clamp_(min=-1).sub_(lo - (1 << shift)).bitwise_right_shift_(shift).clamp_(0, bins + 1)
        if uniform:
            hist += torch.bincount(bits, minlength=bins + 2)
            continue
        # blocks of a few sizes (edge blocks): one unweighted count per (bin, size) pair, then weighted by
        # the sizes (a weighted bincount raises on CUDA under torch.use_deterministic_algorithms)
        sizes = g.pattern.sizes_of(torch.arange(start, start + chunk.numel(), device=chunk.device))
        classes, which = torch.unique(sizes, return_inverse=True)
        pairs = torch.bincount(bits.to(torch.int64) * classes.numel() + which.view(-1), minlength=(bins + 2) * classes.numel())
        hist += pairs.view(bins + 2, classes.numel()).to(torch.float64) @ classes.to(torch.float64)
    if uniform:
        hist *= g.pattern.block_numel
    return hist


def _radix_find(gs: Sequence[BlockGrid], reaches: Callable[[list[int]], bool], comm: ShardComm) -> tuple[float, _Counted]:
    """:func:`find_threshold` over sharded grids, exactly, from counts alone (module docstring).

    Invariant: ``reaches`` holds for the counts ``<= lo + width - 1`` (initially every score: the caller
    checked). Each pass splits ``[lo, lo + width)`` into the digits of the next bits; the smallest digit
    whose upper end reaches narrows it. After the last pass ``width`` is 1 and ``t`` is the score whose
    pattern is ``lo`` (a float32 value, not necessarily a score: ``0.0`` when the counts reach there);
    the last histogram gives the counts ``< t`` and ``<= t``."""
    lo = 0
    below = upto = [0] * len(gs)
    for shift, bins in _RADIX_DIGITS_WIDE if len(gs) <= _WIDE_DIGIT_GRIDS else _RADIX_DIGITS:
        local = _each_grid(lambda g: _digit_histogram(g, lo, shift, bins), gs, sum)
        hist = comm.histograms(local)  # [grid, bin] on the host
        cum = hist[:, 0:1] + torch.cumsum(hist[:, 1 : bins + 1], 1)  # [grid, d]: elements <= the digit's last pattern

        def at(d: int) -> list[int]:
            return [int(v) for v in cum[:, d].tolist()]

        high_d = _first_holding(-1, bins - 1, lambda d: reaches(at(d)))  # it holds at the last digit (the invariant)
        lo += high_d << shift
        upto = at(high_d)
        below = [u - int(h) for u, h in zip(upto, hist[:, 1 + high_d].tolist())]
    # this rank's counts < t and <= t: from its own last histogram (bins below the digit, and the digit's)
    mine = [(int(h[: 1 + high_d].sum()), int(h[: 2 + high_d].sum())) for h in torch.stack(local).cpu()]
    return _f32(lo), _Counted(_f32(lo), below, upto, mine)


def _coprime_stride(stride: int, row: int) -> int:
    """The smallest stride ``>= stride`` that shares no factor with a grid row's length ``row``.

    A stride that divides the rows (512 on 4096 columns) samples a few columns only; when scores vary
    by column (gradients of a small batch do) the sample then misplaces the bracket, and the exact
    bisection (~32 passes over the scores) has to take over. A coprime stride visits every column.
    """
    if stride <= 1 or row <= 1:
        return stride
    while math.gcd(stride, row) != 1:
        stride += 1
    return stride


def _weighted_sample(grids: Sequence[BlockGrid], target: float) -> tuple[torch.Tensor, int]:
    """Sorted strided sample of the scores and the position in it where the cumulative element count
    each sample stands for reaches ``target``."""
    numel = sum(g.blocks for g in grids)
    # _SAMPLE scores, or 1/64 of them for small layers (at least _SAMPLE / 16): the sorted sample is a
    # fixed cost of every event, which should stay small next to a small layer too
    samples = min(_SAMPLE, max(_SAMPLE // 16, numel // 64))
    base = max(1, numel // samples)
    if len(grids) == 1:  # every sample stands for the same count: no weights to sort along
        g = grids[0]
        stride = _coprime_stride(base, g.shape[-1])
        vals = torch.sort(g.sample(stride).float().cpu()).values
        weight = stride * _elements(g) / g.blocks
        return vals, min(vals.numel(), max(0, math.ceil(target / weight) - 1))
    values, weights = [], []
    for g in grids:
        stride = _coprime_stride(base, g.shape[-1])
        sample = g.sample(stride).float().cpu() if g.blocks else torch.empty(0)
        elements_per_block = _elements(g) / g.blocks if g.blocks else 0.0
        values.append(sample)
        weights.append(torch.full_like(sample, stride * elements_per_block, dtype=torch.float64))
    vals, order = torch.sort(torch.cat(values), stable=True)
    cum = torch.cumsum(torch.cat(weights)[order], 0)
    return vals, int(torch.searchsorted(cum, torch.tensor([float(target)], dtype=cum.dtype)))


def _bracket_pass(grids: Sequence[BlockGrid], a: float, b: float) -> tuple[list[int], list["_Bracket"]]:
    """One pass over every grid: element counts ``<= a`` and the scores in ``(a, b]``.

    The scores inside come back per layer as a :class:`_Bracket` on the host; the bracket holds a
    few percent of the scores (the sample's slack), so this is small.
    """

    def one(g: BlockGrid) -> tuple[int, _Bracket]:
        uniform = g.pattern.uniform
        na: list[torch.Tensor] = []
        vals, idx = [], []
        flag = torch.empty(_chunk_size(g), dtype=torch.float32, device=g.device)
        inside_flag = torch.empty(_chunk_size(g), dtype=torch.int8, device=g.device)
        for start, chunk in g.chunks():
            n = chunk.numel()
            # float32 0/1 flags: several times faster than bool comparisons on CPU; exact sums
            upto_a = torch.le(chunk, a, out=flag[:n])
            na.append(upto_a.sum() if uniform else _count(upto_a.bool(), g, start))
            # inside (a, b]: (score <= b) - (score <= a), as int8 0/1 flags
            between = torch.le(chunk, b, out=inside_flag[:n]).sub_(upto_a.to(torch.int8)).view(torch.bool)
            if uniform:
                vals.append(chunk[between].cpu())
            else:
                i = torch.nonzero(between).view(-1)
                vals.append(chunk[i].cpu())
                idx.append((i + start).cpu())
        ca = int(torch.stack(na).double().sum()) if na else 0
        v = torch.cat(vals) if vals else torch.empty(0)
        if uniform:
            sizes = index = None
        else:
            index = torch.cat(idx) if idx else torch.empty(0, dtype=torch.int64)
            sizes = g.pattern.sizes_of(index).to(torch.int64)
        return ca * g.pattern.block_numel if uniform else ca, _Bracket(v, sizes, g.pattern.block_numel, index)

    results = _each_grid(one, grids, _join_brackets)
    return [count for count, _ in results], [bracket for _, bracket in results]


def _join_brackets(pieces: list[tuple[int, "_Bracket"]]) -> tuple[int, "_Bracket"]:
    """One grid's :func:`_bracket_pass` result from those of its pieces (in flat order)."""
    brackets = [b for _, b in pieces]
    sizes = None if brackets[0].sizes is None else torch.cat([b.sizes for b in brackets])  # type: ignore[misc]
    index = None if brackets[0].index is None else torch.cat([b.index for b in brackets])  # type: ignore[misc]
    joined = _Bracket(torch.cat([b.values for b in brackets]), sizes, brackets[0].block_numel, index)
    return sum(count for count, _ in pieces), joined


class _Bracket:
    """The scores of one grid inside a bracket ``(a, b]`` (host tensors, unsorted) and their element sizes."""

    def __init__(self, values: torch.Tensor, sizes: torch.Tensor | None, block_numel: int, index: torch.Tensor | None = None) -> None:
        self.values, self.sizes, self.block_numel = values, sizes, block_numel
        #: flat block indices of the values (unequal blocks only), ascending
        self.index = index

    @property
    def elements(self) -> int:
        return int(self.sizes.sum()) if self.sizes is not None else self.values.numel() * self.block_numel

    def elements_where(self, pred: torch.Tensor) -> int:
        """Elements of the blocks whose values satisfy the bool ``pred``."""
        if self.sizes is not None:
            return int(self.sizes[pred].sum())
        return int(pred.sum()) * self.block_numel

    def sorted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sorted values, cumulative element counts)``."""
        v, order = torch.sort(self.values)
        if self.sizes is None:
            cum = torch.arange(1, v.numel() + 1, dtype=torch.int64) * self.block_numel
        else:
            cum = torch.cumsum(self.sizes[order], 0)
        return v, cum


def _search_bracket(brackets: Sequence[_Bracket], reaches: Callable[[list[int]], bool], below_a: list[int]) -> float:
    """Exact search among the scores gathered by :func:`_bracket_pass`; ``below_a`` = element counts ``<= a``.

    One grid of equal-sized blocks (local scope): the count reached by the ``j`` lowest scores is
    ``below_a + j·size``, so ``j`` is found by bisection on counts alone and the answer is the
    ``j``-th lowest score (a selection, no sort). Otherwise the scores are sorted per grid and the
    union of their values is bisected.
    """
    if len(brackets) == 1 and brackets[0].sizes is None and brackets[0].values.numel():
        bracket = brackets[0]
        # reaches fails with 0 of them and holds with all
        j = _first_holding(0, bracket.values.numel(), lambda j: reaches([below_a[0] + j * bracket.block_numel]))
        return float(torch.kthvalue(bracket.values, j).values)
    layers = [b.sorted() for b in brackets]
    union = torch.unique(torch.cat([v for v, _ in layers]))  # sorted; b (when finite) is in it

    def counts(v: float) -> list[int]:
        out = []
        for base, (vals, cum) in zip(below_a, layers):
            n = int(torch.searchsorted(vals, torch.tensor([v], dtype=vals.dtype), right=True))
            out.append(base + (int(cum[n - 1]) if n else 0))
        return out

    # reaches fails at a (index -1) and holds at the last
    return float(union[_first_holding(-1, union.numel() - 1, lambda i: reaches(counts(float(union[i]))))])


def _take_closest(remaining: int, sizes: torch.Tensor) -> int:
    """How many of the tie blocks (in order) to prune: while ``pruned + size/2 < remaining``."""
    before = torch.cumsum(sizes, 0) - sizes
    ok = (2 * before + sizes) < 2 * remaining
    return int(torch.cumprod(ok.to(torch.int64), 0).sum()) if ok.numel() else 0


def global_budgets(
    grids: Sequence[object],
    patterns: Sequence[Pattern],
    total: int,
    low: Sequence[int],
    high: Sequence[int],
) -> list[int]:
    """Per-layer element budgets summing to ``total`` (when the bounds allow); see the module docstring."""
    return global_threshold(grids, patterns, total, low, high)[0]


def global_threshold(
    grids: Sequence[object],
    patterns: Sequence[Pattern],
    total: int,
    low: Sequence[int],
    high: Sequence[int],
) -> tuple[list[int], float | None]:
    """:func:`global_budgets` and the global threshold ``t`` (``None`` when nothing more is pruned).

    ``t`` is the local threshold of every layer whose budget its bounds did not clamp, so passing it
    as :func:`select_blocks`'s ``hint`` saves each such layer its own search.
    """
    budgets, t, _ = global_choice(grids, patterns, total, low, high)
    return budgets, t


def global_choice(
    grids: Sequence[object],
    patterns: Sequence[Pattern],
    total: int,
    low: Sequence[int],
    high: Sequence[int],
    comm: ShardComm | None = None,
) -> tuple[list[int], float | None, list[tuple[int, int]] | None]:
    """:func:`global_threshold` and, per layer, the elements scored ``< t`` and ``<= t`` (``None`` with ``t``);
    pass them as :func:`choose_blocks`'s ``hint_counts``. ``comm``: some grids hold this rank's block
    rows of sharded layers; every count is then the whole layer's."""
    gs = [as_grid(g, p) for g, p in zip(grids, patterns)]

    def clamp(v: int, i: int) -> int:
        return min(max(v, low[i]), high[i])

    already = _already_pruned(gs, comm)
    if sum(clamp(c, i) for i, c in enumerate(already)) >= total:
        return [clamp(c, i) for i, c in enumerate(already)], None, None

    def reaches(c: list[int]) -> bool:
        return sum(clamp(v, i) for i, v in enumerate(c)) >= total

    t, found = _find(gs, patterns, reaches, total, comm)
    if found is not None:
        counts = found.counts(t)
        below, upto = [c[0] for c in counts], [c[1] for c in counts]
    else:
        below, upto = _counts(gs, [("lt", t), ("le", t)], comm)
    base = [clamp(c, i) for i, c in enumerate(below)]
    cap = [clamp(c, i) for i, c in enumerate(upto)]
    remaining = total - sum(base)
    budgets = []
    for i in range(len(gs)):  # the ties at t go to the layers in order
        extra = max(0, min(cap[i] - base[i], remaining))
        remaining -= extra
        budgets.append(base[i] + extra)
    return budgets, t, list(zip(below, upto))
