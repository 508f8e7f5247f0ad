"""The threshold searches of local and global scope against brute-force references."""

from __future__ import annotations

import threading

import pytest
import torch

from prunekit.pruner import masks, scope
from prunekit.pruner.grids import RowGrid, split_grid
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


class Ranks:
    """``world`` ranks as threads of this process, meeting at a barrier for every collective."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots: list = [None] * world

    def exchange(self, rank: int, value):
        """Every rank's ``value``, in rank order (an all-gather)."""
        self.slots[rank] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out

    def run(self, fn):
        """``[fn(rank) for every rank]``, each rank in its own thread; the first error is raised."""
        results, errors = [None] * self.world, []

        def one(rank: int) -> None:
            try:
                results[rank] = fn(rank)
            except BaseException as err:  # noqa: BLE001 - re-raised below
                errors.append(err)
                self.barrier.abort()

        threads = [threading.Thread(target=one, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


class ThreadRankComm(OneRankComm):
    """:class:`~prunekit.pruner.sharding.ShardComm`'s collectives over :class:`Ranks` (replicated grids from rank 0)."""

    def __init__(self, ranks: Ranks, rank: int, sharded, offsets, totals) -> None:
        self.ranks, self.rank, self.world = ranks, rank, ranks.world
        self.sharded, self.offsets, self.totals = list(sharded), list(offsets), list(totals)

    def _mine(self, i: int) -> bool:
        return self.sharded[i] or self.rank == 0

    def counts(self, matrix):
        mine = [[v if self._mine(i) else 0 for i, v in enumerate(row)] for row in matrix]
        every = self.ranks.exchange(self.rank, mine)
        return [[sum(m[t][i] for m in every) for i in range(len(row))] for t, row in enumerate(matrix)]

    def histograms(self, hists):
        mine = torch.stack([h.to(torch.float64) * self._mine(i) for i, h in enumerate(hists)])
        return sum(self.ranks.exchange(self.rank, mine))

    def max(self, value):
        return max(self.ranks.exchange(self.rank, value))

    def gather(self, tensors, grid=None):
        if grid is not None and not self.sharded[grid]:
            tensors = [t if self.rank == 0 else t[:0] for t in tensors]
        every = self.ranks.exchange(self.rank, tensors)
        return [torch.cat([m[i] for m in every]) for i in range(len(tensors))]


def row_parts(grid: torch.Tensor, pattern: BlockPattern, starts: list[int]):
    """The block rows ``[starts[k], starts[k + 1])`` of ``grid`` as rank ``k``'s grid, its own pattern and flat offset."""
    parts = []
    for g0, g1 in zip(starts, starts[1:]):
        rows = min(g1 * pattern.r, pattern.rows) - min(g0 * pattern.r, pattern.rows)
        parts.append((grid[g0:g1].clone(), BlockPattern(rows, pattern.cols, pattern.r, pattern.c), g0 * grid.shape[1]))
    return parts


@pytest.mark.parametrize("starts", [[0, 4, 8], [0, 3, 6, 8], [0, 2, 2, 5, 8]], ids=["2 ranks", "3 ranks", "4 ranks, one empty"])
def test_sharded_ranks_choose_what_one_process_chooses(sample, starts: list[int]) -> None:
    """Ranks holding block rows of a layer (threads exchanging counts and histograms): every rank's
    Choice is the unsharded one; 1x1 and 4x1 with a partial last block row; ties, PRUNED, -0.0, +inf."""
    cases = [(special_grid(8, 64, 11), BlockPattern(8, 64, 1, 1)), (special_grid(8, 30, 12), BlockPattern(30, 30, 4, 1))]
    for grid, pattern in cases:
        parts = row_parts(grid, pattern, starts)
        for k in (1, 50, grid.numel() // 2, int(pattern.count(torch.ones(grid.shape, dtype=torch.bool))) - 3):
            expected = scope.choose_blocks(grid, pattern, k)
            ranks = Ranks(len(parts))

            def choose(rank: int):
                local, local_pattern, offset = parts[rank]
                comm = ThreadRankComm(ranks, rank, [True], [offset], [grid.numel()])
                choice = scope.choose_blocks(scope.as_grid(local, local_pattern), pattern, k, comm=comm)
                return choice.t, choice.cut

            assert ranks.run(choose) == [(expected.t, expected.cut)] * len(parts), (pattern, k)


@pytest.mark.parametrize("digits", ["two wide digits", "three digits"])
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_ranks_find_the_global_budgets_of_one_process(sample, monkeypatch, digits: str, world: int) -> None:
    """Global scope over two sharded layers and a replicated one (every rank holds it: counted once)."""
    if digits == "three digits":
        monkeypatch.setattr(scope, "_WIDE_DIGIT_GRIDS", 0)
    grids, patterns, total, low, high = global_case(lambda i, r, c: special_grid(r, c, seed=20 + i), (0.1, 0.9), 0.6)
    expected = scope.global_choice(grids, patterns, total, low, high)
    ranks = Ranks(world)
    split = [[round(k * g.shape[0] / world) for k in range(world + 1)] for g in grids]

    def search(rank: int):
        local, sharded, offsets = [], [], []
        for i, (grid, pattern) in enumerate(zip(grids, patterns)):
            if i == 2:  # replicated
                local.append(grid), sharded.append(False), offsets.append(0)
                continue
            part, _, offset = row_parts(grid, pattern, split[i])[rank]
            local.append(part), sharded.append(True), offsets.append(offset)
        comm = ThreadRankComm(ranks, rank, sharded, offsets, [g.numel() for g in grids])
        local_patterns = [BlockPattern(g.shape[0], g.shape[1], 1, 1) for g in local]
        budgets, t, counts = scope.global_choice(
            [scope.as_grid(g, p) for g, p in zip(local, local_patterns)], patterns, total, low, high, comm
        )
        return budgets, t, counts

    assert ranks.run(search) == [expected] * world


def test_a_grid_read_in_pieces_gives_the_passes_of_the_whole_grid(monkeypatch) -> None:
    """Counting, bracket and histogram passes of one grid split into pieces of whole chunks (what two
    threads do with one large layer) equal those of the unsplit grid, bracket order included."""
    grid = special_grid(8, 30, 31)
    pattern = BlockPattern(30, 30, 4, 1)  # blocks of 4 and, in the last block row, 2 elements
    before = torch.get_num_threads()

    def passes(threads: int):
        torch.set_num_threads(threads)
        try:  # block rows computed when read, 3 at a time (3 chunks), from a layer of ample weight bytes
            g = RowGrid(lambda g0, g1: (grid[g0:g1].clone(), None), lambda stride: grid.view(-1)[::stride].clone(),
                        tuple(grid.shape), pattern, grid.device, step=3)
            g.weight_bytes = 1 << 30
            counts = scope._counts([g], [("lt", 0.25), ("le", 0.5)])
            (below,), (bracket,) = scope._bracket_pass([g], 0.125, 0.625)
            hist = scope._digit_histogram(g, 0, 15, 1 << 16) if threads == 1 else scope._each_grid(
                lambda piece: scope._digit_histogram(piece, 0, 15, 1 << 16), [g], sum)[0]
            return counts, below, bracket.values, bracket.index, bracket.sizes, hist
        finally:
            torch.set_num_threads(before)

    pieces: list[int] = []
    monkeypatch.setattr(scope, "split_grid", lambda g, n: pieces.append(n) or split_grid(g, n))
    whole, in_pieces = passes(1), passes(2)
    assert pieces and all(n == 2 for n in pieces)
    for a, b in zip(whole, in_pieces):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_grids_are_split_only_within_their_memory_share() -> None:
    """One piece per thread, never more temporaries than PIECES_SHARE of the weight bytes, and only grids
    computed when read (a materialized grid already holds its memory)."""
    def stream(blocks: int, chunk: int, weight_bytes: int | None):
        from prunekit.pruner.grids import StreamGrid

        grid = StreamGrid(lambda a, b: torch.zeros(b - a), lambda s: torch.zeros(1), (1, blocks), BlockPattern(1, blocks, 1, 1),
                          torch.device("cpu"), chunk=chunk)
        if weight_bytes is not None:
            grid.weight_bytes = weight_bytes
        return grid

    assert split_grid(stream(1000, 100, 4000), 2) is None  # 2 pieces x 12 x 100 bytes > 0.25 x 4000
    pieces = split_grid(stream(1000, 100, 4000 * 10), 2)
    assert [(p.first, p.end) for p in pieces] == [(0, 500), (500, 1000)]
    assert [(p.first, p.end) for p in split_grid(stream(1000, 100, 10**6), 3)] == [(0, 300), (300, 600), (600, 1000)]
    assert split_grid(stream(1000, 100, 10**6), 11) is None  # fewer chunks than threads
    assert split_grid(stream(1000, 100, None), 2) is None  # no weight bytes known
    assert split_grid(torch.zeros(10, 100), 2) is None  # a tensor (materialized grid)
