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

Both thresholds come from :func:`find_threshold`: a strided sample brackets the answer, exact
counts confirm the bracket, and only the few scores inside it are searched. No copy of all scores
is made (no concatenation, no sort, no ``kthvalue`` of a whole layer), and every rank computes the
same result from the same scores.
"""

from __future__ import annotations

import struct
from typing import Callable, Sequence

import torch

from prunekit.pruner.patterns import PRUNED, BlockPattern, NMPattern

__all__ = ["select_blocks", "global_budgets", "element_budget", "find_threshold"]

Pattern = BlockPattern | NMPattern


def _f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<i", bits))[0]


def _bits(value: float) -> int:
    return struct.unpack("<i", struct.pack("<f", value))[0]


def element_budget(ratio: float, numel: int) -> int:
    """Elements to prune for sparsity ``ratio``: ``round(ratio · numel)`` (ties to even)."""
    return int(round(ratio * numel))


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


def select_blocks(grid: torch.Tensor, pattern: Pattern, k: int) -> torch.Tensor:
    """Bool grid of kept blocks after pruning about ``k`` elements (see the module docstring)."""
    keep = grid >= 0  # PRUNED blocks stay pruned
    already = int(pattern.count(grid < 0))
    if k <= 0 or already >= k:
        return keep
    flat = grid.reshape(-1)
    if pattern.uniform:
        size = pattern.block_numel
        blocks = min((2 * k + size - 1) // (2 * size), flat.numel())  # the prefix closest to k, fewer on a tie
        k_elems = blocks * size
        if k_elems <= already:
            return keep
        t = find_threshold([grid], [pattern], lambda c: c[0] >= k_elems, k_elems)
        below = int(torch.count_nonzero(flat < t))
        keep = grid >= t  # ties at t stay kept until _prune_ties picks some
        _prune_ties(keep.view(-1), flat, t, lambda sizes: _take_count(blocks - below, sizes))
        return keep
    # partial edge blocks: blocks differ in size, the closest prefix is decided among the ties
    t = find_threshold([grid], [pattern], lambda c: c[0] >= k, k)
    below = int(pattern.count(grid < t))
    keep = grid >= t
    _prune_ties(keep.view(-1), flat, t, lambda sizes: _take_closest(k - below, sizes), pattern)
    return keep


#: sample size of the threshold bracket, and the bracket's half-width in samples
_SAMPLE, _SLACK = 1 << 16, 1 << 9  # a quantile of 2^16 samples errs by ~0.4 % (1 sigma ~ 128 samples)


def find_threshold(
    grids: Sequence[torch.Tensor], patterns: Sequence[Pattern], reaches: Callable[[list[int]], bool], target: int
) -> float:
    """The smallest block score ``t >= 0`` with ``reaches([c_l(<= t) for each layer])`` (the largest score if none).

    ``c_l`` counts elements. A strided sample of the scores brackets the answer around ``target``
    elements: ``(a, b]`` with ``reaches(c(a))`` false and ``reaches(c(b))`` true, checked exactly;
    the few scores inside the bracket are then searched exactly. About six passes over the block
    scores and one small bool temporary at a time; when the bracket misses (heavily clamped
    global budgets), an exact bisection over float32 bit patterns takes over.
    """
    top = max(float(g.max()) for g in grids)

    def counts_le(v: float) -> list[int]:
        return [int(p.count(g <= v)) for g, p in zip(grids, patterns)]

    if not reaches(counts_le(top)):
        return top
    if reaches(counts_le(0.0)):
        return 0.0
    vals, cum = _weighted_sample(grids, patterns)
    pos = int(torch.searchsorted(cum, torch.tensor([float(target)], dtype=cum.dtype)))
    for slack in (_SLACK, 4 * _SLACK):
        lo, hi = pos - slack, pos + slack
        a = -0.5 if lo < 0 else float(vals[lo])
        b = top if hi >= vals.numel() else float(vals[hi])
        ca = counts_le(a)
        if b > a and not reaches(ca) and reaches(counts_le(b)):
            return _search_bracket(grids, patterns, reaches, a, b, ca)
    return _smallest_threshold(lambda v: reaches(counts_le(v)), top)


def _weighted_sample(grids: Sequence[torch.Tensor], patterns: Sequence[Pattern]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted strided sample of the scores (>= 0 only) and the cumulative element count each stands for."""
    numel = sum(g.numel() for g in grids)
    stride = max(1, numel // _SAMPLE)
    values, weights = [], []
    for g, p in zip(grids, patterns):
        sample = g.reshape(-1)[::stride]
        elements_per_block = float(p.count(torch.ones_like(g, dtype=torch.bool))) / g.numel()
        values.append(sample.float())
        weights.append(torch.full_like(sample, stride * elements_per_block, dtype=torch.float64))
    vals, order = torch.sort(torch.cat(values).cpu(), stable=True)
    cum = torch.cumsum(torch.cat(weights).cpu()[order], 0)
    return vals, cum


def _search_bracket(
    grids: Sequence[torch.Tensor],
    patterns: Sequence[Pattern],
    reaches: Callable[[list[int]], bool],
    a: float,
    b: float,
    below_a: list[int],
) -> float:
    """Exact search among the scores in ``(a, b]``; ``below_a`` = element counts ``<= a``."""
    layers = []
    for g, p in zip(grids, patterns):
        flat = g.reshape(-1)
        inside = flat > a
        inside &= flat <= b
        idx = torch.nonzero(inside).view(-1)
        del inside
        layers.append((flat[idx].cpu(), p.sizes_of(idx).cpu()))
    union = torch.unique(torch.cat([v for v, _ in layers]))  # sorted; b is in it

    def counts(v: float) -> list[int]:
        return [base + int(sizes[vals <= v].sum()) for base, (vals, sizes) in zip(below_a, layers)]

    lo, hi = -1, union.numel() - 1  # reaches fails at a (index -1) and holds at b (the last)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reaches(counts(float(union[mid]))):
            hi = mid
        else:
            lo = mid
    return float(union[hi])


def _take_count(n: int, sizes: torch.Tensor) -> int:
    return max(0, min(n, sizes.numel()))


def _take_closest(remaining: int, sizes: torch.Tensor) -> int:
    """How many of the tie blocks (in order) to prune: while ``pruned + size/2 < remaining``."""
    before = torch.cumsum(sizes, 0) - sizes
    ok = (2 * before + sizes) < 2 * remaining
    return int(torch.cumprod(ok.to(torch.int64), 0).sum()) if ok.numel() else 0


def _prune_ties(
    keep_flat: torch.Tensor,
    flat: torch.Tensor,
    t: float,
    how_many: Callable[[torch.Tensor], int],
    pattern: Pattern | None = None,
) -> None:
    """Prune the first blocks (flat order) scored exactly ``t``; ``how_many(sizes)`` says how many."""
    ties = torch.nonzero(flat == t).view(-1)
    if ties.numel() == 0:
        return
    sizes = pattern.sizes_of(ties) if pattern is not None else torch.ones_like(ties)
    n = how_many(sizes)
    keep_flat[ties[:n]] = False


def global_budgets(
    grids: Sequence[torch.Tensor],
    patterns: Sequence[Pattern],
    total: int,
    low: Sequence[int],
    high: Sequence[int],
) -> list[int]:
    """Per-layer element budgets summing to ``total`` (when the bounds allow); see the module docstring."""

    def clamp(v: int, i: int) -> int:
        return min(max(v, low[i]), high[i])

    def counts(pred: Callable[[torch.Tensor], torch.Tensor]) -> list[int]:
        return [int(p.count(pred(g))) for g, p in zip(grids, patterns)]

    already = counts(lambda g: g < 0)
    if sum(clamp(c, i) for i, c in enumerate(already)) >= total:
        return [clamp(c, i) for i, c in enumerate(already)]

    def reaches(c: list[int]) -> bool:
        return sum(clamp(v, i) for i, v in enumerate(c)) >= total

    t = find_threshold(grids, patterns, reaches, total)
    base = [clamp(c, i) for i, c in enumerate(counts(lambda g: g < t))]
    cap = [clamp(c, i) for i, c in enumerate(counts(lambda g: g <= t))]
    remaining = total - sum(base)
    budgets = []
    for i in range(len(grids)):  # the ties at t go to the layers in order
        extra = max(0, min(cap[i] - base[i], remaining))
        remaining -= extra
        budgets.append(base[i] + extra)
    return budgets

