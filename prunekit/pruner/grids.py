"""Block-score grids that the threshold searches of :mod:`prunekit.pruner.scope` read chunk by chunk.

A grid holds one score per block of a layer (``>= 0``; :data:`~prunekit.pruner.patterns.PRUNED`
for blocks already pruned), in the flat order of the layer's 2-D block grid. The searches only
ever ask for *chunks* (:meth:`BlockGrid.chunks`), so a grid need not exist in memory:

* :class:`TensorGrid` wraps a materialized grid (block patterns: a fraction of the weight's size);
* :class:`StreamGrid` computes each chunk of scores when asked (``1x1`` patterns, where a grid
  would be as large as the weight): a global threshold over every layer of a group then costs a
  few chunk-sized temporaries instead of a copy of every score.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch

from prunekit.pruner import masks as _masks

__all__ = ["BlockGrid", "TensorGrid", "StreamGrid", "as_grid"]


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


class TensorGrid:
    """A materialized block-score grid."""

    def __init__(self, grid: torch.Tensor, pattern: object) -> None:
        self.grid = grid
        self.flat = grid.reshape(-1)
        self.pattern = pattern
        self.blocks = self.flat.numel()
        self.shape = tuple(grid.shape)
        self.known_pruned: int | None = None

    @property
    def device(self) -> torch.device:
        return self.grid.device

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, self.blocks, _masks.CHUNK):
            yield start, self.flat[start : start + _masks.CHUNK]

    def chunk(self, start: int) -> torch.Tensor:
        return self.flat[start : start + _masks.CHUNK]

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
    ) -> None:
        self._score, self._sample = score, sample
        self.shape = shape
        self.blocks = shape[0] * shape[1]
        self.pattern = pattern
        self._device = device
        #: elements already pruned (scored ``PRUNED``) when the caller knows it from the mask, else ``None``
        self.known_pruned: int | None = None

    @property
    def device(self) -> torch.device:
        return self._device

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, self.blocks, _masks.CHUNK):
            yield start, self._score(start, min(start + _masks.CHUNK, self.blocks))

    def chunk(self, start: int) -> torch.Tensor:
        return self._score(start, min(start + _masks.CHUNK, self.blocks))

    def sample(self, stride: int) -> torch.Tensor:
        return self._sample(stride)


def as_grid(grid: object, pattern: object) -> BlockGrid:
    """``grid`` itself, or a :class:`TensorGrid` around a tensor."""
    if isinstance(grid, torch.Tensor):
        return TensorGrid(grid, pattern)
    return grid  # type: ignore[return-value]
