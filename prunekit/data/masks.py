"""Mask helpers shared by the data sparsifiers: the 2-D view of data and 1-bit mask packing."""

from __future__ import annotations

import math

import torch

__all__ = ["CHUNK_ELEMENTS", "matrix_shape", "as_matrix", "pack_mask", "unpack_mask"]

#: entries processed per chunk by chunked passes over data (4 MiB of float32): bounds temporaries
CHUNK_ELEMENTS = 1 << 20


def matrix_shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """The 2-D shape data of ``shape`` is ranked as.

    Size-1 dimensions are dropped first, so ``(N,)``, ``(1, N)`` and ``(N, 1)`` are all the row
    vector ``(1, N)``; 0-d data is ``(1, 1)``; more than two dimensions are ``(d0, d1·d2·…)``.
    """
    dims = [int(d) for d in shape if d != 1]
    if not dims:
        return 1, 1
    if len(dims) == 1:
        return 1, dims[0]
    return dims[0], math.prod(dims[1:])


def as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` reshaped to :func:`matrix_shape` (a view when ``tensor`` is contiguous)."""
    return tensor.reshape(matrix_shape(tensor.shape))


def pack_mask(mask: torch.Tensor) -> dict[str, object]:
    """``mask`` (any shape, nonzero = kept) packed to 1 bit per element: ``{"bits", "shape"}``."""
    flat = mask.reshape(-1).to(torch.bool)
    n = flat.numel()
    padded = torch.zeros(math.ceil(n / 8) * 8, dtype=torch.bool, device=mask.device)
    padded[:n] = flat
    octets = padded.view(-1, 8)
    bits = torch.zeros(octets.shape[0], dtype=torch.uint8, device=mask.device)
    for i in range(8):
        bits |= octets[:, i].to(torch.uint8) << i
    return {"bits": bits, "shape": list(mask.shape)}


def unpack_mask(packed: dict[str, object], device: torch.device | str | None = None) -> torch.Tensor:
    """The bool mask :func:`pack_mask` packed (on ``device``, default: where the bits are)."""
    bits = packed["bits"]
    shape = tuple(int(d) for d in packed["shape"])  # type: ignore[union-attr]
    if not isinstance(bits, torch.Tensor) or bits.dtype != torch.uint8 or bits.dim() != 1:
        raise ValueError("a packed mask needs 'bits', a 1-D torch.uint8 tensor")
    n = math.prod(shape)
    if bits.numel() != math.ceil(n / 8):
        raise ValueError(f"a packed mask of shape {list(shape)} needs {math.ceil(n / 8)} bytes, got {bits.numel()}")
    bits = bits.to(device) if device is not None else bits
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    flat = ((bits.unsqueeze(1) >> shifts) & 1).to(torch.bool).reshape(-1)[:n]
    return flat.reshape(shape).clone()
