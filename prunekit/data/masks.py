"""Mask helpers shared by the data sparsifiers: 2-D views, exact k-smallest selection, bit packing.

Everything here works in bounded extra memory: large inputs are processed in chunks, so no helper
allocates a temporary as large as the data (the data is usually an embedding table).
"""

from __future__ import annotations

import math

import torch

__all__ = ["matrix_shape", "as_matrix", "smallest_k_mask", "kth_smallest", "pack_mask", "unpack_mask", "CHUNK_ELEMENTS"]

#: elements processed per chunk by the chunked passes (16 MiB of float32)
CHUNK_ELEMENTS = 1 << 22

# selection below this size uses torch.kthvalue directly (its temporaries are 12 bytes per value)
_DIRECT_SELECT = 1 << 21
_SAMPLE = 1 << 16


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


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest (1-based) of the 1-D ``values``, as a 0-d tensor; no NaN allowed.

    Large inputs are bracketed with a fixed-seed random sample first, so the exact selection
    (``torch.kthvalue``) only runs on the values between two sample quantiles; the result is exact
    either way (a bracket that misses falls back to the full selection).
    """
    n = values.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must be within [1, {n}], got {k}")
    if n <= _DIRECT_SELECT:
        return values.kthvalue(k).values
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(n, (_SAMPLE,), generator=generator).to(values.device)
    sample = values[picks].sort().values
    margin = 4.0 / math.sqrt(_SAMPLE) + 1.0 / _SAMPLE
    q = k / n
    lo_i, hi_i = math.floor((q - margin) * _SAMPLE), math.ceil((q + margin) * _SAMPLE)
    lo = sample[lo_i] if lo_i >= 0 else None
    hi = sample[hi_i] if hi_i < _SAMPLE else None
    below = int((values < lo).sum()) if lo is not None else 0
    inside = torch.ones_like(values, dtype=torch.bool) if lo is None else values >= lo
    if hi is not None:
        inside &= values <= hi
    count = int(inside.sum())
    if below < k <= below + count:
        if lo is not None and hi is not None and bool(lo == hi):
            return lo.clone()
        if count <= n // 2:
            return values[inside].kthvalue(k - below).values
    return values.kthvalue(k).values  # the bracket missed (or is too wide): exact, more memory


def smallest_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """A bool tensor like the 1-D ``values``, True at exactly its ``k`` smallest entries.

    Ties at the threshold are broken towards the lower index, so the result is deterministic.
    """
    n = values.numel()
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    threshold = kth_smallest(values, k)
    chosen = values < threshold
    missing = k - int(chosen.sum())
    if missing > 0:
        ties = values == threshold
        for start in range(0, n, CHUNK_ELEMENTS):
            part = ties[start : start + CHUNK_ELEMENTS]
            count = int(part.sum())
            if count <= missing:
                chosen[start : start + CHUNK_ELEMENTS] |= part
                missing -= count
            else:
                first = part.nonzero().flatten()[:missing]
                chosen[start + first] = True
                missing = 0
            if missing == 0:
                break
    return chosen


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
