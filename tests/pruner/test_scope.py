"""The threshold searches of local and global scope against brute-force references."""

from __future__ import annotations

import pytest
import torch

from prunekit.pruner import masks, scope
from prunekit.pruner.patterns import PRUNED, BlockPattern


@pytest.fixture(params=["default", "tiny_sample", "tiny_chunks"])
def sample(request, monkeypatch):
    """tiny_sample: a 64-value sample with a 4-value bracket, so narrowing, misses and fallbacks all run;
    tiny_chunks: 100-score chunks, so counts, gathering and tie handling span many chunks."""
    if request.param == "tiny_sample":
        monkeypatch.setattr(scope, "_SAMPLE", 64)
        monkeypatch.setattr(scope, "_SLACK", 4)
    if request.param == "tiny_chunks":
        monkeypatch.setattr(masks, "CHUNK", 100)


def random_grid(rows: int, cols: int, seed: int, ties: bool = False, pruned: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    grid = torch.rand(rows, cols, generator=g)
    if ties:
        grid = (grid * 8).floor() / 8
    if pruned:
        grid[torch.rand(rows, cols, generator=g) < pruned] = PRUNED
    return grid


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [0, 1, 37, 500, 2047, 2048])
def test_local_1x1_prunes_exactly_the_k_lowest(sample, ties: bool, k: int) -> None:
    grid = random_grid(32, 64, seed=k, ties=ties, pruned=0.1)
    keep = scope.select_blocks(grid, BlockPattern(32, 64, 1, 1), k)
    already = int((grid < 0).sum())
    assert int((~keep).sum()) == max(k, already)
    order = torch.sort(grid.view(-1), stable=True).indices  # reference: lowest first, lower index on ties
    expected = torch.ones(grid.numel(), dtype=torch.bool)
    expected[order[: max(k, already)]] = False
    assert torch.equal(keep.view(-1), expected)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 37, 500, 2047])
def test_a_threshold_hint_never_changes_the_choice(sample, ties: bool, k: int) -> None:
    """select_blocks(hint=the threshold) takes its shortcut; any other hint falls back to the search."""
    grid = random_grid(32, 64, seed=k, ties=ties, pruned=0.1)
    pattern = BlockPattern(32, 64, 1, 1)
    expected = scope.select_blocks(grid, pattern, k)
    exact = float(torch.sort(grid.view(-1)).values[k - 1])
    for hint in (exact, 0.0, 0.5, 2.0, float(grid.max())):
        assert torch.equal(scope.select_blocks(grid, pattern, k, hint=hint), expected), hint


def brute_budgets(grids, total, low, high):
    values = sorted({float(v) for g in grids for v in g.view(-1).tolist() if v >= 0})
    def counts(v, strict=False):
        return [int(((g < v) if strict else (g <= v)).sum()) for g in grids]
    clamp = lambda c, i: min(max(c, low[i]), high[i])
    already = counts(0.0, strict=True)
    if sum(clamp(c, i) for i, c in enumerate(already)) >= total:
        return [clamp(c, i) for i, c in enumerate(already)]
    t = next((v for v in values if sum(clamp(c, i) for i, c in enumerate(counts(v))) >= total), values[-1])
    base = [clamp(c, i) for i, c in enumerate(counts(t, strict=True))]
    cap = [clamp(c, i) for i, c in enumerate(counts(t))]
    remaining, out = total - sum(base), []
    for b, c in zip(base, cap):
        extra = max(0, min(c - b, remaining))
        remaining -= extra
        out.append(b + extra)
    return out


def global_case(make, bounds: tuple[float, float], ratio: float):
    """Three 1x1 layers of scores ``make(i, rows, cols)``, the second much less important than the others
    (the clamps bind): ``(grids, patterns, total, low, high)`` for ``ratio`` of the elements within ``bounds``."""
    shapes = [(16, 20), (8, 64), (40, 10)]
    grids = [make(i, r, c) for i, (r, c) in enumerate(shapes)]
    grids[1][grids[1] > 0] *= 0.1
    numels = [r * c for r, c in shapes]
    low = [int(min(bounds[0], ratio) * n) for n in numels]
    high = [int(bounds[1] * n) for n in numels]
    return grids, [BlockPattern(r, c, 1, 1) for r, c in shapes], round(ratio * sum(numels)), low, high


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (0.3, 0.9), (0.0, 0.5)])
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.8])
def test_global_budgets_match_brute_force(sample, ties: bool, bounds: tuple[float, float], ratio: float) -> None:
    grids, patterns, total, low, high = global_case(lambda i, r, c: random_grid(r, c, seed=i + 10 * int(ties), ties=ties, pruned=0.05), bounds, ratio)
    numels = [g.numel() for g in grids]
    got = scope.global_budgets(grids, patterns, total, low, high)
    assert got == brute_budgets(grids, total, low, high)
    if bounds[1] * min(numels) >= total / len(numels):
        assert sum(got) == total


def test_partial_block_threshold(sample) -> None:
    grid = random_grid(8, 30, seed=3, ties=True)  # 30 rows / 4 -> 8 block rows, the last with 2 rows
    pattern = BlockPattern(30, 30, 4, 1)
    for k in (0, 1, 3, 100, 450, 899, 900):
        keep = scope.select_blocks(grid, pattern, k)
        pruned = int(pattern.count(~keep))
        assert abs(pruned - k) <= 2, (k, pruned)  # within half of the largest block


class OneRankComm:
    """The collectives of :class:`~prunekit.pruner.sharding.ShardComm` on a world of one rank (identities),
    so the sharded search (the radix select over bit patterns) runs in this process on the same grids
    as the unsharded one (the bracket search). The collectives themselves run in test_fsdp.py."""

    def __init__(self, grids) -> None:
        self.rank, self.world = 0, 1
        self.sharded = [True] * len(grids)
        self.offsets = [0] * len(grids)
        self.totals = [g.numel() for g in grids]

    def counts(self, matrix):
        return [list(row) for row in matrix]

    def histograms(self, hists):
        return torch.stack([h.to(torch.float64) for h in hists])

    def max(self, value):
        return value

    def gather(self, tensors, grid=None):
        return [t.clone() for t in tensors]


def special_grid(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Scores with exact ties, PRUNED blocks, -0.0 beside +0.0, and +inf."""
    grid = random_grid(rows, cols, seed, ties=True, pruned=0.1)
    g = torch.Generator().manual_seed(seed + 1)
    grid[torch.rand(rows, cols, generator=g) < 0.05] = 0.0
    grid[torch.rand(rows, cols, generator=g) < 0.05] = -0.0
    grid[torch.rand(rows, cols, generator=g) < 0.02] = float("inf")
    return grid


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_sharded_search_chooses_what_the_bracket_search_chooses(sample, seed: int) -> None:
    """Local: every k, 1x1 and 4x1 blocks with a partial edge row; the same Choice (threshold and tie cut)."""
    for grid, pattern in ((special_grid(32, 64, seed), BlockPattern(32, 64, 1, 1)), (special_grid(8, 30, seed), BlockPattern(30, 30, 4, 1))):
        for k in (1, 7, 100, grid.numel() // 3, grid.numel() - 5, int(pattern.count(torch.ones(grid.shape, dtype=torch.bool))) - 1):
            expected = scope.choose_blocks(grid, pattern, k)
            got = scope.choose_blocks(grid, pattern, k, comm=OneRankComm([grid]))
            assert (got.t, got.cut) == (expected.t, expected.cut), (k, got, expected)


@pytest.mark.parametrize("digits", ["two wide digits", "three digits (groups of more than 8 layers)"])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (0.3, 0.9)])
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.8])
def test_the_sharded_global_search_matches_brute_force(sample, monkeypatch, digits: str, bounds: tuple[float, float], ratio: float) -> None:
    if digits.startswith("three"):
        monkeypatch.setattr(scope, "_WIDE_DIGIT_GRIDS", 0)
    grids, patterns, total, low, high = global_case(lambda i, r, c: special_grid(r, c, seed=i), bounds, ratio)
    expected = scope.global_choice(grids, patterns, total, low, high)
    got = scope.global_choice(grids, patterns, total, low, high, comm=OneRankComm(grids))
    assert got == expected
    assert got[0] == brute_budgets(grids, total, low, high)


def test_the_sharded_search_gathers_no_score(monkeypatch) -> None:
    """Only counts, histograms and integer indices cross ranks (the per-rank tie counts of a tie cut)."""
    grid = special_grid(64, 64, 5)
    comm = OneRankComm([grid])
    gathered = []

    def gather(tensors, grid=None):
        assert not any(t.is_floating_point() for t in tensors), [t.dtype for t in tensors]
        gathered.append(tensors)
        return [t.clone() for t in tensors]

    monkeypatch.setattr(comm, "gather", gather)
    for k in (10, 1000, 3000):
        choice = scope.choose_blocks(grid, BlockPattern(64, 64, 1, 1), k, comm=comm)
        assert (choice.t, choice.cut) == ((c := scope.choose_blocks(grid, BlockPattern(64, 64, 1, 1), k)).t, c.cut)
    assert gathered  # the tie cuts ran
