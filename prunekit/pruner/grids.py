"""Block-score grids that the threshold searches of :mod:`prunekit.pruner.scope` read chunk by chunk.

A grid holds one score per block of a layer (``>= 0``; :data:`~prunekit.pruner.patterns.PRUNED`
for blocks already pruned), in the flat order of the layer's 2-D block grid. The searches only
ever ask for *chunks* (:meth:`BlockGrid.chunks`), so a grid need not exist in memory:

* :class:`TensorGrid` wraps a materialized grid (blocks of 4 or more weights on 32-bit weights,
  tall blocks such as ``channelx1``: a small fraction of the weight's size);
* :class:`StreamGrid` computes each chunk of scores when asked (``1x1`` patterns, where a grid
  would be as large as the weight): a global threshold over every layer of a group then costs a
  few chunk-sized temporaries instead of a copy of every score;
* :class:`RowGrid` computes the scores of a range of block rows when asked: block patterns and
  N:M where a materialized grid would cost too large a share of the weight's bytes (``1x2``,
  ``1:2``, ``4x1`` or ``2:4`` on 16-bit weights), and accumulated scores.

An event never materializes a keep mask of the layer's size either: the choice of
:mod:`prunekit.pruner.scope` is a threshold and a tie cut (:class:`~prunekit.pruner.scope.Choice`),
and the mask is committed part by part (:meth:`parts`: a range of block rows at a time), each part's
block keep expanded into its rows of the int8 mask. Under ``torch.distributed`` the block keep of
every part is packed into bits (:func:`pack_bits`, 1 bit per block) and broadcast before anything
is committed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import torch

from prunekit.pruner import masks as _masks

__all__ = [
    "BlockGrid", "TensorGrid", "StreamGrid", "RowGrid", "as_grid", "event_chunk", "EVENT_CHUNKS", "EVENT_CHUNK_MAX",
    "row_ranges", "rows_view", "gather_2d", "pack_bits", "unpack_bits", "GridPiece", "split_grid", "FIXED_PER_CHUNK_ELEMENT", "PIECES_SHARE",
]

#: a part of a grid: (first block row, end block row, block scores [rows, grid cols] (flat for StreamGrid), extra)
Part = tuple[int, int, torch.Tensor, Any]


class BlockGrid(Protocol):
    """One layer's block scores, read in chunks."""

    #: the layer's pattern (``uniform``, ``block_numel``, ``sizes_of``, ``count``)
    pattern: object
    #: number of blocks
    blocks: int
    #: 2-D shape of the block grid
    shape: tuple[int, ...]
    #: elements in blocks scored ``PRUNED`` when known without reading the scores, else ``None``
    known_pruned: int | None

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """``(flat block offset, 1-D float32 scores)``; a chunk is only valid until the next one is asked for."""

    def chunk(self, start: int) -> torch.Tensor:
        """The chunk :meth:`chunks` yields at flat block offset ``start`` (a multiple of the chunk size)."""

    def sample(self, stride: int) -> torch.Tensor:
        """Every ``stride``-th block score (flat order), a new tensor."""

    @property
    def device(self) -> torch.device: ...


#: bytes of an event's temporaries per element of a chunk (scores, comparison flags, N:M rank words)
FIXED_PER_CHUNK_ELEMENT = 12
#: the most of a layer's weight bytes that the temporaries of its pieces read at once may take
#: (:func:`split_grid`; one thread's chunk takes 12 / 32 bytes per weight: 0.09x of float32)
PIECES_SHARE = 0.25

#: an event reads a layer in at most this many chunks (up to ``EVENT_CHUNKS * EVENT_CHUNK_MAX`` =
#: 64M weights): its number of operations per layer does not grow with the layer (thousands of
#: small operations are what a busy core makes slow), while the chunk-sized temporaries (about
#: ``FIXED_PER_CHUNK_ELEMENT`` = 12 bytes per chunk element) stay at most 12 / 32 bytes per weight
#: (0.09x float32, 0.19x 16-bit weight bytes)
EVENT_CHUNKS = 32
#: the largest chunk (2M elements, 8 MiB of float32 scores): a chain of operations on larger chunks
#: streams from memory instead of cache (1x1 on one 201M-weight layer took ~1.5x as long with
#: 6.3M-element chunks), and operations on 2M elements are no longer small (a millisecond or more)
EVENT_CHUNK_MAX = 1 << 21


def event_chunk(numel: int) -> int:
    """Elements per chunk of an event on a layer of ``numel`` weights: ``numel / EVENT_CHUNKS`` (rounded
    up), at least ``CHUNK / 64`` (8K: below that an operation costs more to dispatch than to run) and
    at most :data:`EVENT_CHUNK_MAX`. Results do not depend on the chunk size."""
    return min(max(-(-numel // EVENT_CHUNKS), max(1, _masks.CHUNK // 64)), max(EVENT_CHUNK_MAX, _masks.CHUNK))


def _chunk_size(grid: object) -> int:
    """The most blocks one chunk of ``grid`` holds."""
    return min(getattr(grid, "blocks"), getattr(grid, "chunk_size", _masks.CHUNK))


class TensorGrid:
    """A materialized block-score grid; ``step`` block rows per :meth:`parts`, ``extra`` a per-block-row
    tensor handed out with them (N:M: which weights stay in a pruned group)."""

    def __init__(
        self, grid: torch.Tensor, pattern: object, step: int | None = None, extra: torch.Tensor | None = None, chunk: int | None = None
    ) -> None:
        self.grid = grid
        self.flat = grid.reshape(-1)
        self.pattern = pattern
        self.blocks = self.flat.numel()
        self.shape = tuple(grid.shape)
        self.known_pruned: int | None = None
        self.chunk_size = chunk or _masks.CHUNK
        cols = self.shape[-1] if self.shape else 1
        self.step = step if step is not None else max(1, self.chunk_size // max(cols, 1))
        self.extra = extra

    def parts(self) -> Iterator[Part]:
        rows = self.shape[0]
        for g0 in range(0, rows, self.step):
            g1 = min(g0 + self.step, rows)
            yield g0, g1, self.grid[g0:g1], None if self.extra is None else self.extra[g0:g1]

    @property
    def device(self) -> torch.device:
        return self.grid.device

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        size = self.chunk_size
        for start in range(0, self.blocks, size):
            yield start, self.flat[start : start + size]

    def chunk(self, start: int) -> torch.Tensor:
        return self.flat[start : start + self.chunk_size]

    def sample(self, stride: int) -> torch.Tensor:
        return self.flat[::stride].float()


class StreamGrid:
    """Element scores (``1x1``) computed chunk by chunk by ``score(start, stop)`` (flat element range).

    ``score`` returns a 1-D float32 tensor of ``stop - start`` scores with pruned elements set to
    ``PRUNED``; it may reuse one scratch buffer between calls.
    """

    def __init__(
        self,
        score: Callable[[int, int], torch.Tensor],
        sample: Callable[[int], torch.Tensor],
        shape: tuple[int, int],
        pattern: object,
        device: torch.device,
        chunk: int | None = None,
    ) -> None:
        self._score, self._sample = score, sample
        self.shape = shape
        self.blocks = shape[0] * shape[1]
        self.pattern = pattern
        self._device = device
        #: elements already pruned (scored ``PRUNED``) when the caller knows it from the mask, else ``None``
        self.known_pruned: int | None = None
        self.chunk_size = chunk or _masks.CHUNK

    @property
    def device(self) -> torch.device:
        return self._device

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        size = self.chunk_size
        for start in range(0, self.blocks, size):
            yield start, self._score(start, min(start + size, self.blocks))

    def parts(self) -> Iterator[Part]:
        """``(start, stop, scores, None)``: flat element ranges (the layer's 2-D view is contiguous)."""
        for start, chunk in self.chunks():
            yield start, start + chunk.numel(), chunk, None

    def chunk(self, start: int) -> torch.Tensor:
        return self._score(start, min(start + self.chunk_size, self.blocks))

    def sample(self, stride: int) -> torch.Tensor:
        return self._sample(stride)


class RowGrid:
    """Block scores of ``step`` block rows at a time, computed when asked by ``score_rows(g0, g1)``.

    ``score_rows`` returns ``(scores, extra)``: float32 ``[g1 - g0, grid cols]`` with pruned blocks set
    to ``PRUNED`` (it may reuse scratch buffers between calls) and what the commit needs besides
    (N:M: which weights of each group stay). ``sample(stride)`` returns every ``stride``-th block
    score in flat order, or any other spread of block scores (the threshold searches only use the
    sample to bracket the answer, then count exactly). ``known_pruned``: an int, a callable that
    counts the elements of pruned blocks from the mask (called at most once), or ``None``.
    """

    def __init__(
        self,
        score_rows: Callable[[int, int], tuple[torch.Tensor, Any]],
        sample: Callable[[int], torch.Tensor],
        shape: tuple[int, int],
        pattern: object,
        device: torch.device,
        step: int,
        known_pruned: int | Callable[[], int] | None = None,
    ) -> None:
        self._score_rows, self._sample = score_rows, sample
        self.shape = shape
        self.blocks = shape[0] * shape[1]
        self.pattern = pattern
        self._device = device
        self.step = max(1, step)
        self.chunk_size = max(1, self.step * shape[1])
        self._known = known_pruned

    @property
    def known_pruned(self) -> int | None:
        if callable(self._known):
            self._known = int(self._known())
        return self._known

    @property
    def device(self) -> torch.device:
        return self._device

    def parts(self) -> Iterator[Part]:
        rows = self.shape[0]
        for g0 in range(0, rows, self.step):
            g1 = min(g0 + self.step, rows)
            scores, extra = self._score_rows(g0, g1)
            yield g0, g1, scores, extra

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        for g0, _, scores, _ in self.parts():
            yield g0 * self.shape[1], scores.reshape(-1)

    def chunk(self, start: int) -> torch.Tensor:
        g0 = start // self.shape[1]
        return self._score_rows(g0, min(g0 + self.step, self.shape[0]))[0].reshape(-1)

    def sample(self, stride: int) -> torch.Tensor:
        return self._sample(stride)


class GridPiece:
    """The chunks of ``grid`` from flat block ``first`` to ``end`` (``first`` a multiple of its chunk
    size): a grid the counting passes of an event read while other threads read the other pieces
    (the grids compute a chunk in the reading thread's buffers). Starts stay the whole grid's."""

    def __init__(self, grid: "StreamGrid | RowGrid", first: int, end: int) -> None:
        self.grid, self.first, self.end = grid, first, end
        self.pattern = grid.pattern
        self.shape = grid.shape
        self.blocks = end - first
        self.chunk_size = _chunk_size(grid)
        self.known_pruned: int | None = None

    @property
    def device(self) -> torch.device:
        return self.grid.device

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(self.first, self.end, self.chunk_size):
            yield start, self.grid.chunk(start)


def split_grid(grid: object, pieces: int) -> list[GridPiece] | None:
    """``grid`` as exactly ``pieces`` :class:`GridPiece` of whole chunks, in flat order, read at once by
    ``pieces`` threads; ``None`` (read it whole) unless all of this holds:

    * it is computed when read (:class:`StreamGrid`, :class:`RowGrid`: its memory is its chunks'), of
      blocks (not N:M groups, whose reads share a buffer of which weights stay), and knows its layer's
      ``weight_bytes`` (set by the pruner for unsharded layers);
    * the pieces' chunk-sized temporaries, :data:`FIXED_PER_CHUNK_ELEMENT` bytes per chunk element
      each, take at most :data:`PIECES_SHARE` of those bytes (the event's memory promise holds);
    * it has at least ``pieces`` chunks (one piece per thread: never fewer threads than the intra-op
      threads it would otherwise run on).
    """
    weight_bytes = getattr(grid, "weight_bytes", None)
    pattern = getattr(grid, "pattern", None)
    if type(grid) not in (StreamGrid, RowGrid) or not weight_bytes or pieces < 2 or not hasattr(pattern, "block_numel") or hasattr(pattern, "m"):
        return None
    size, blocks = _chunk_size(grid), getattr(grid, "blocks")
    elements = size * int(pattern.block_numel)
    chunks = -(-blocks // size)
    if chunks < pieces or pieces * FIXED_PER_CHUNK_ELEMENT * elements > PIECES_SHARE * weight_bytes:
        return None
    bounds = [k * chunks // pieces * size for k in range(pieces)] + [blocks]
    return [GridPiece(grid, a, b) for a, b in zip(bounds, bounds[1:])]


def row_ranges(rows: int, r: int, per: int) -> Iterator[tuple[int, int]]:
    """Element row ranges ``[a, b)`` of at most ``per`` rows covering ``rows``, in order. When blocks are
    taller than ``per`` (``r > per``) no range crosses a block-row boundary (a block row is then scored
    in several ranges); otherwise ``per`` is a multiple of ``r``."""
    if r <= per:
        for a in range(0, rows, per):
            yield a, min(a + per, rows)
        return
    for a0 in range(0, rows, r):
        b0 = min(a0 + r, rows)
        for a in range(a0, b0, per):
            yield a, min(a + per, b0)


def rows_view(t: torch.Tensor, kind: str) -> torch.Tensor:
    """A view of ``t`` (a weight, its gradient or mask) whose rows, flattened in row-major order, are
    the rows of the layer's 2-D view ``[out, in']`` (see :class:`~prunekit.pruner.selection.Layout`):
    ``[out, in]`` for linear and transposed layouts, ``[out, *kernel, in]`` for convolutions. A range
    of rows ``view[a:b]`` is then a view too: chunks are read and written in place, without a copy.
    """
    if kind == "linear":
        return t
    if kind == "transposed":
        return t.t()
    d = t.dim()
    if kind == "conv":  # [O, I, *k] -> [O, *k, I]
        return t.permute(0, *range(2, d), 1)
    return t.permute(1, *range(2, d), 0)  # conv_transposed: [I, O, *k] -> [O, *k, I]


def gather_2d(view: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Entries ``(i, j)`` of the 2-D view of a :func:`rows_view` ``view`` (``i``, ``j`` int64 of one shape)."""
    if view.dim() == 2:
        return view[i, j]
    return view[(i, *torch.unravel_index(j, tuple(view.shape[1:])))]


#: multiplying 8 bytes that are 0 or 1 by this puts byte k's bit at bit 56 + k (no carries)
_PACK = 0x0102040810204080


def pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """uint8 ``[ceil(n / 8)]``: bit ``k`` of byte ``i`` is ``flags[8 i + k]`` (``flags``: ``n`` int8/uint8/bool 0/1)."""
    n = flags.numel()
    flat = flags.reshape(-1).view(torch.uint8)
    if n % 8:
        flat = torch.cat([flat, flat.new_zeros(8 - n % 8)])
    words = flat.contiguous().view(torch.int64)
    return words.mul(_PACK).bitwise_right_shift_(56).bitwise_and_(0xFF).to(torch.uint8)


def unpack_bits(bits: torch.Tensor, n: int) -> torch.Tensor:
    """The int8 0/1 ``flags`` (``n`` of them) that :func:`pack_bits` packed into ``bits``."""
    from prunekit.pruner.patterns import _spread_bits

    words = torch.empty(bits.numel(), dtype=torch.int64, device=bits.device)
    _spread_bits(bits, 8, out=words)
    return words.view(torch.int8)[:n]


def as_grid(grid: object, pattern: object) -> BlockGrid:
    """``grid`` itself, or a :class:`TensorGrid` around a tensor."""
    if isinstance(grid, torch.Tensor):
        return TensorGrid(grid, pattern)
    return grid  # type: ignore[return-value]
