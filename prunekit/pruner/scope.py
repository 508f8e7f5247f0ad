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
sorted and searched. Grids are read chunk by chunk (:mod:`prunekit.pruner.grids`): no copy of
all scores is made (no concatenation, no full sort, no ``kthvalue`` of a whole layer), temporaries
are chunk-sized, counts accumulate on the device (one host read per pass), and every rank
computes the same result from the same scores.
"""

from __future__ import annotations

import struct
from typing import Callable, Sequence

import torch

from prunekit.pruner import masks as _masks
from prunekit.pruner.grids import BlockGrid, as_grid
from prunekit.pruner.patterns import BlockPattern, NMPattern

__all__ = ["select_blocks", "global_budgets", "global_threshold", "element_budget", "find_threshold"]

Pattern = BlockPattern | NMPattern


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


def _counts(grids: Sequence[BlockGrid], tests: Sequence[tuple[str, float]]) -> list[list[int]]:
    """``[test][layer]`` element counts of blocks with ``score <op> v`` (``op`` in le, lt), one pass.

    Equal-sized blocks are counted by summing float32 0/1 comparison flags (several times faster
    than bool comparisons on CPU, exact below 2^24 per chunk); other grids through their block sizes.
    """
    out = [[0] * len(grids) for _ in tests]
    for li, grid in enumerate(grids):
        uniform = grid.pattern.uniform
        flag = torch.empty(min(grid.blocks, _masks.CHUNK), dtype=torch.float32, device=grid.device) if uniform else None
        parts: list[list[torch.Tensor]] = [[] for _ in tests]
        for start, chunk in grid.chunks():
            for ti, (op, v) in enumerate(tests):
                compare = torch.le if op == "le" else torch.lt
                if flag is not None:
                    parts[ti].append(compare(chunk, v, out=flag[: chunk.numel()]).sum().double())
                else:
                    parts[ti].append(_count(compare(chunk, v), grid, start).double())
        zero = torch.zeros((), dtype=torch.float64, device=grid.device)
        totals = torch.stack([torch.stack(p).sum() if p else zero for p in parts])
        scale = grid.pattern.block_numel if uniform else 1
        for ti, value in enumerate(totals.tolist()):  # one host read per layer and pass
            out[ti][li] = int(value) * scale
    return out


def _counts_le(grids: Sequence[BlockGrid], values: Sequence[float]) -> list[list[int]]:
    return _counts(grids, [("le", v) for v in values])


def _already_pruned(grids: Sequence[BlockGrid]) -> list[int]:
    """Elements in blocks scored ``PRUNED``, per grid (a counting pass only where not known)."""
    known = [getattr(g, "known_pruned", None) for g in grids]
    unknown = [g for g, k in zip(grids, known) if k is None]
    counted = iter(_counts(unknown, [("lt", 0.0)])[0] if unknown else [])
    return [k if k is not None else next(counted) for k in known]


def _elements(grid: BlockGrid) -> int:
    pattern = grid.pattern
    if pattern.uniform:
        return grid.blocks * pattern.block_numel
    return int(pattern.count(torch.ones(grid.shape, dtype=torch.bool)))


def _max(grids: Sequence[BlockGrid]) -> float:
    top = float("-inf")
    for grid in grids:
        for _, chunk in grid.chunks():
            top = max(top, float(chunk.max())) if chunk.numel() else top
    return top


def _smallest_threshold(reaches: Callable[[float], bool], high: float) -> float:
    """The smallest float32 ``t`` in ``[0, high]`` with ``reaches(t)``; ``reaches(high)`` must hold."""
    if reaches(0.0):
        return 0.0
    lo, hi = 0, _bits(high)  # non-negative float32 values order like their bit patterns
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reaches(_f32(mid)):
            hi = mid
        else:
            lo = mid
    return _f32(hi)


def select_blocks(
    grid: object, pattern: Pattern, k: int, low: int = 0, high: int | None = None, hint: float | None = None
) -> torch.Tensor:
    """Bool grid (the grid's 2-D shape) of kept blocks after pruning about ``k`` elements (module docstring).

    ``low`` / ``high`` bound the pruned elements (``min/max_sparsity_per_op``): rounding ``k`` to whole
    blocks never crosses them (with uniform blocks ``low`` is met when a whole number of blocks fits).
    ``hint``: a likely threshold (the global one); when its counts show it is this budget's
    threshold, the search is skipped (the result is the same either way).
    """
    g = as_grid(grid, pattern)
    if high is not None:
        k = min(k, high)
    (already,) = _already_pruned([g])
    if k <= 0 or already >= k:
        return _keep_pass(g, 0.0, 0)[0]
    if pattern.uniform:
        size = pattern.block_numel
        blocks = min((2 * k + size - 1) // (2 * size), g.blocks)  # the prefix closest to k, fewer on a tie
        ceiling = g.blocks if high is None else min(g.blocks, high // size)
        floor = min(-(-low // size), ceiling)  # at least `low` elements where whole blocks allow it
        blocks = min(max(blocks, floor), ceiling)
        k_elems = blocks * size
        if k_elems <= already:
            return _keep_pass(g, 0.0, 0)[0]
        if blocks == g.blocks:  # every block goes (2:4 at 0.5, say): nothing to search
            return torch.zeros(g.shape, dtype=torch.bool, device=g.device)
        if hint is not None and hint >= 0:
            keep = _prune_lowest_at(g, hint, blocks, verify=True)
            if keep is not None:
                return keep
        t = find_threshold([g], [pattern], lambda c: c[0] >= k_elems, k_elems)
        return _prune_lowest_at(g, t, blocks, verify=False)
    # partial edge blocks: blocks differ in size, the closest prefix is decided among the ties
    t = find_threshold([g], [pattern], lambda c: c[0] >= k, k)
    keep, below, ties = _keep_pass(g, t, None)
    if ties.numel():
        sizes = pattern.sizes_of(ties)
        n = _take_closest(k - below, sizes)
        if high is not None and n:  # the closest prefix may overshoot by part of a block
            n = int((torch.cumsum(sizes[:n], 0) <= high - below).sum())
        keep.view(-1)[ties[:n]] = False
    return keep


def _keep_pass(g: BlockGrid, t: float, max_ties: int | None) -> tuple[torch.Tensor, int, torch.Tensor]:
    """``(keep = score >= t, elements scored < t, flat indices of the blocks scored == t)`` in one pass.

    ``max_ties`` (uniform patterns, in blocks): stop collecting ties once that many are held
    minus the blocks already below (no more can be needed).
    """
    keep = torch.empty(g.blocks, dtype=torch.bool, device=g.device)
    below = torch.zeros((), dtype=torch.int64, device=g.device)
    ties: list[torch.Tensor] = []
    held = 0
    for start, chunk in g.chunks():
        torch.ge(chunk, t, out=keep[start : start + chunk.numel()])
        below += _count(chunk < t, g, start)
        if t >= 0 and (max_ties is None or held < max_ties):
            idx = torch.nonzero(chunk == t).view(-1)
            if idx.numel():
                ties.append(idx + start)
                held += idx.numel()
    tie_idx = torch.cat(ties) if ties else torch.empty(0, dtype=torch.int64, device=g.device)
    return keep.view(g.shape), int(below), tie_idx


def _prune_lowest_at(g: BlockGrid, t: float, blocks: int, *, verify: bool) -> torch.Tensor | None:
    """The keep grid after pruning the ``blocks`` lowest blocks (uniform sizes), given their threshold ``t``.

    Every block scored below ``t`` is pruned, and of those scored exactly ``t`` the first ones in flat
    order until ``blocks`` are. ``verify``: return ``None`` unless ``count(< t) <= blocks <=
    count(<= t)``, i.e. unless ``t`` really is their threshold (a hint); otherwise the tie count is
    clamped to that range.
    """
    keep, below, tied, tie_starts = _keep_above(g, t)
    n = blocks - below // g.pattern.block_numel
    if verify and not 0 <= n <= tied:
        return None
    n = max(0, min(n, tied))
    if n < tied:  # only the first n blocks scored exactly t are pruned: keep the others
        _keep_ties_after(g, t, n, keep, tie_starts)
    return keep


def _keep_above(g: BlockGrid, t: float) -> tuple[torch.Tensor, int, int, list[int]]:
    """``(keep = score > t, blocks scored < t, blocks scored == t, chunk starts holding a score == t)``.

    One pass (uniform patterns). Comparisons are written as int8 / float32 (on CPU, several times
    faster than producing bool tensors) and counted by summing (exact: a chunk holds fewer than
    2^24 blocks).
    """
    keep = torch.empty(g.blocks, dtype=torch.bool, device=g.device)
    keep8 = keep.view(torch.int8)
    flag = torch.empty(min(g.blocks, _masks.CHUNK), dtype=torch.float32, device=g.device)
    starts, below, tied = [], [], []
    for start, chunk in g.chunks():
        n = chunk.numel()
        torch.gt(chunk, t, out=keep8[start : start + n])
        below.append(torch.lt(chunk, t, out=flag[:n]).sum())
        tied.append(torch.eq(chunk, t, out=flag[:n]).sum())
        starts.append(start)
    if not below:
        return keep.view(g.shape), 0, 0, []
    counts = torch.stack([torch.stack(below), torch.stack(tied)]).double()
    per_chunk_ties = counts[1].tolist()  # one host read
    tie_starts = [start for start, c in zip(starts, per_chunk_ties) if c]
    return keep.view(g.shape), int(counts[0].sum()) * g.pattern.block_numel, int(sum(per_chunk_ties)), tie_starts


def _keep_ties_after(g: BlockGrid, t: float, n: int, keep: torch.Tensor, tie_starts: list[int]) -> None:
    """Mark kept every block scored exactly ``t`` after the first ``n`` of them (flat order).

    Only the chunks that hold such a score (``tie_starts``, from :func:`_keep_above`) are read.
    """
    flat = keep.view(-1)
    skipped = 0
    for start in tie_starts:
        chunk = g.chunk(start)
        idx = torch.nonzero(chunk == t).view(-1)
        if skipped < n:
            take = min(n - skipped, idx.numel())
            skipped += take
            idx = idx[take:]
        if idx.numel():
            flat[idx + start] = True


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
    gs = [as_grid(g, p) for g, p in zip(grids, patterns)]
    totals = [_elements(g) for g in gs]
    if not reaches(totals):  # every score <= the largest one
        return _max(gs)
    vals, cum = _weighted_sample(gs)
    pos = int(torch.searchsorted(cum, torch.tensor([float(target)], dtype=cum.dtype)))
    for slack in (_SLACK, 4 * _SLACK):
        lo, hi = pos - slack, pos + slack
        a = -0.5 if lo < 0 else float(vals[lo])
        b = float("inf") if hi >= vals.numel() else float(vals[hi])
        if not b > a:
            continue
        ca, inside = _bracket_pass(gs, a, b)
        cb = [base + bracket.elements for base, bracket in zip(ca, inside)]
        if not reaches(ca) and reaches(cb):
            return _search_bracket(inside, reaches, ca)
    top = _max(gs)
    return _smallest_threshold(lambda v: reaches(_counts_le(gs, [v])[0]), top)


def _weighted_sample(grids: Sequence[BlockGrid]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted strided sample of the scores and the cumulative element count each stands for."""
    numel = sum(g.blocks for g in grids)
    stride = max(1, numel // _SAMPLE)
    values, weights = [], []
    for g in grids:
        sample = g.sample(stride).float().cpu()
        elements_per_block = _elements(g) / g.blocks
        values.append(sample)
        weights.append(torch.full_like(sample, stride * elements_per_block, dtype=torch.float64))
    vals, order = torch.sort(torch.cat(values), stable=True)
    cum = torch.cumsum(torch.cat(weights)[order], 0)
    return vals, cum


def _bracket_pass(grids: Sequence[BlockGrid], a: float, b: float) -> tuple[list[int], list["_Bracket"]]:
    """One pass over every grid: element counts ``<= a`` and the scores in ``(a, b]``.

    The scores inside come back per layer as a :class:`_Bracket` on the host; the bracket holds a
    few percent of the scores (the sample's slack), so this is small.
    """
    a_counts, inside = [], []
    for g in grids:
        uniform = g.pattern.uniform
        na: list[torch.Tensor] = []
        vals, idx = [], []
        upto_a = torch.empty(min(g.blocks, _masks.CHUNK), dtype=torch.float32, device=g.device)
        upto_b = torch.empty_like(upto_a)
        for start, chunk in g.chunks():
            n = chunk.numel()
            # float32 0/1 flags: several times faster than bool comparisons on CPU; exact sums
            torch.le(chunk, a, out=upto_a[:n])
            between = torch.le(chunk, b, out=upto_b[:n]).sub_(upto_a[:n]).bool()
            if uniform:
                na.append(upto_a[:n].sum())
                vals.append(chunk[between].cpu())
            else:
                na.append(_count(upto_a[:n].bool(), g, start))
                i = torch.nonzero(between).view(-1)
                vals.append(chunk[i].cpu())
                idx.append((i + start).cpu())
        ca = int(torch.stack(na).double().sum()) if na else 0
        a_counts.append(ca * g.pattern.block_numel if uniform else ca)
        v = torch.cat(vals) if vals else torch.empty(0)
        if uniform:
            sizes = None
        else:
            sizes = g.pattern.sizes_of(torch.cat(idx) if idx else torch.empty(0, dtype=torch.int64)).to(torch.int64)
        inside.append(_Bracket(v, sizes, g.pattern.block_numel))
    return a_counts, inside


class _Bracket:
    """The scores of one grid inside a bracket ``(a, b]`` (host tensors, unsorted) and their element sizes."""

    def __init__(self, values: torch.Tensor, sizes: torch.Tensor | None, block_numel: int) -> None:
        self.values, self.sizes, self.block_numel = values, sizes, block_numel

    @property
    def elements(self) -> int:
        return int(self.sizes.sum()) if self.sizes is not None else self.values.numel() * self.block_numel

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
        lo, hi = 0, bracket.values.numel()  # reaches fails with 0 of them and holds with all
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if reaches([below_a[0] + mid * bracket.block_numel]):
                hi = mid
            else:
                lo = mid
        return float(torch.kthvalue(bracket.values, hi).values)
    layers = [b.sorted() for b in brackets]
    union = torch.unique(torch.cat([v for v, _ in layers]))  # sorted; b (when finite) is in it

    def counts(v: float) -> list[int]:
        out = []
        for base, (vals, cum) in zip(below_a, layers):
            n = int(torch.searchsorted(vals, torch.tensor([v], dtype=vals.dtype), right=True))
            out.append(base + (int(cum[n - 1]) if n else 0))
        return out

    lo, hi = -1, union.numel() - 1  # reaches fails at a (index -1) and holds at the last
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reaches(counts(float(union[mid]))):
            hi = mid
        else:
            lo = mid
    return float(union[hi])


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
    gs = [as_grid(g, p) for g, p in zip(grids, patterns)]

    def clamp(v: int, i: int) -> int:
        return min(max(v, low[i]), high[i])

    already = _already_pruned(gs)
    if sum(clamp(c, i) for i, c in enumerate(already)) >= total:
        return [clamp(c, i) for i, c in enumerate(already)], None

    def reaches(c: list[int]) -> bool:
        return sum(clamp(v, i) for i, v in enumerate(c)) >= total

    t = find_threshold(gs, patterns, reaches, total)
    below, upto = _counts(gs, [("lt", t), ("le", t)])
    base = [clamp(c, i) for i, c in enumerate(below)]
    cap = [clamp(c, i) for i, c in enumerate(upto)]
    remaining = total - sum(base)
    budgets = []
    for i in range(len(gs)):  # the ties at t go to the layers in order
        extra = max(0, min(cap[i] - base[i], remaining))
        remaining -= extra
        budgets.append(base[i] + extra)
    return budgets, t
