"""Mask helpers shared by the data sparsifiers: the 2-D view of data, block clamping, 1-bit mask
packing, and :class:`MaskView`, the bool mask that computes like torch.ao's float mask."""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import torch

__all__ = ["CHUNK_ELEMENTS", "MaskView", "matrix_shape", "as_matrix", "clamp_block", "pack_mask", "unpack_mask"]

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


def clamp_block(shape: torch.Size | tuple[int, ...], block: tuple[int, int]) -> tuple[int, int]:
    """``block`` clamped to the :func:`matrix_shape` of data of ``shape`` (each size at least 1).

    A block larger than the data covers it as one partial block, which is what torch.ao's
    ``DataNormSparsifier`` computes too (it pads the data up to the block); clamping gives the same
    mask without allocating the padding.
    """
    rows, cols = matrix_shape(shape)
    return max(1, min(int(block[0]), rows)), max(1, min(int(block[1]), cols))


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


# ---------------------------------------------------------------------------- MaskView
# ops whose bool result differs from the 0/1 arithmetic of a float mask (True + True is True)
_ADDITIONS = frozenset({torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__})
_IN_PLACE_DUNDER = re.compile(r"__i(add|sub|mul|matmul|truediv|floordiv|mod|pow|and|or|xor|lshift|rshift)__")
_WRITES = frozenset({"__setitem__", "__set__", "__delitem__", "__setstate__"})
_HINT = (
    "prunekit masks are torch.bool (True = kept), so they hold no other values: write bool values in "
    "place (mask.copy_(new != 0), mask &= keep), or compute out of place (mask * 0.5 is a float tensor)"
)


class MaskView(torch.Tensor):
    """What ``get_mask`` returns: the live bool mask, computing like torch.ao's float mask.

    An alias of the sparsifier's bool mask (the same memory: ``step()`` and in-place writes show
    through it, both ways). Its dtype is ``torch.bool``; an operation that fails on bool
    (``mask.mean()``, ``1 - mask``, ``-mask``, ``mask.std()``, ``x64 @ mask``) is retried with the
    masks converted to the widest floating dtype among the other tensor arguments (float32 when
    there is none), and ``mask + mask`` adds 0/1 numbers as a float mask would (bool addition would
    be a logical or). Everything else (``mask * x``, ``mask.sum() / mask.numel()``, comparisons)
    runs as it does for a bool tensor. Results are plain tensors, not of this class, so code
    receiving them pays nothing extra. In-place operations are never retried (a bool
    mask cannot store floats); their error says how to write a mask. Views of the mask (``mask.T``,
    ``mask.view(...)``, ``mask[0]``) are the mask too, so they stay of this class. Pickles (``torch.save``) as a
    plain bool tensor, which ``torch.load(weights_only=True)`` reads; ``copy.deepcopy`` gives a
    snapshot that computes the same way.
    """

    @classmethod
    def __torch_function__(
        cls, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            if func in _ADDITIONS and _only_bool_tensors((args, kwargs)):
                return func(*_upcast(args, torch.float32, every_bool=True), **_upcast(kwargs, torch.float32, every_bool=True))
            try:
                return _views_stay_masks(func(*args, **kwargs), (args, kwargs))
            except (RuntimeError, TypeError) as err:
                if _writes(func, kwargs):
                    if any(isinstance(a, MaskView) for a in args[:1]):
                        raise type(err)(f"{err}\n{_HINT}") from err
                    raise
                if not _holds_bool_mask((args, kwargs)):
                    raise
                dtype = _float_dtype((args, kwargs))
                try:
                    return func(*_upcast(args, dtype), **_upcast(kwargs, dtype))
                except Exception:
                    raise err from None

    def __reduce_ex__(self, protocol: Any) -> Any:
        with torch._C.DisableTorchFunctionSubclass():
            plain = torch.Tensor.as_subclass(self, torch.Tensor)
        return plain.__reduce_ex__(protocol)

    def __deepcopy__(self, memo: dict[int, Any]) -> "MaskView":
        with torch._C.DisableTorchFunctionSubclass():
            copied = torch.Tensor.as_subclass(self, torch.Tensor).clone().as_subclass(MaskView)
        memo[id(self)] = copied
        return copied


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in _tensors(item)]
    if isinstance(tree, dict):
        return [t for item in tree.values() for t in _tensors(item)]
    return []


def _views_stay_masks(result: Any, inputs: Any) -> Any:
    """``result``, with the bool tensors in it that alias a :class:`MaskView` of ``inputs`` as views."""
    if isinstance(result, (tuple, list)) and not isinstance(result, torch.Size):
        if not any(isinstance(r, torch.Tensor) for r in result):
            return result
        return type(result)(_views_stay_masks(r, inputs) for r in result)
    if not isinstance(result, torch.Tensor) or isinstance(result, MaskView) or result.dtype != torch.bool:
        return result
    storage = result.untyped_storage().data_ptr()
    if storage and any(isinstance(t, MaskView) and t.untyped_storage().data_ptr() == storage for t in _tensors(inputs)):
        return result.as_subclass(MaskView)
    return result


def _only_bool_tensors(tree: Any) -> bool:
    return all(t.dtype == torch.bool for t in _tensors(tree))


def _holds_bool_mask(tree: Any) -> bool:
    return any(isinstance(t, MaskView) and t.dtype == torch.bool for t in _tensors(tree))


def _float_dtype(tree: Any) -> torch.dtype:
    """The widest floating dtype among the tensors of ``tree`` that are not masks (else float32)."""
    dtype: torch.dtype | None = None
    for t in _tensors(tree):
        if not isinstance(t, MaskView) and (t.is_floating_point() or t.is_complex()):
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype is None else dtype


def _upcast(tree: Any, dtype: torch.dtype, every_bool: bool = False) -> Any:
    """``tree`` with its bool masks (``every_bool``: all its bool tensors) converted to ``dtype``."""
    if isinstance(tree, torch.Tensor):
        if tree.dtype == torch.bool and (every_bool or isinstance(tree, MaskView)):
            return torch.Tensor.as_subclass(tree, torch.Tensor).to(dtype)
        return tree
    if isinstance(tree, (list, tuple)):
        return type(tree)(_upcast(item, dtype, every_bool) for item in tree)
    if isinstance(tree, dict):
        return {k: _upcast(v, dtype, every_bool) for k, v in tree.items()}
    return tree


def _writes(func: Callable[..., Any], kwargs: dict[str, Any]) -> bool:
    """Whether ``func`` writes into a tensor (in place or through ``out=``): never retried."""
    name = getattr(func, "__name__", "")
    return (
        "out" in kwargs
        or (name.endswith("_") and not name.startswith("__"))
        or bool(_IN_PLACE_DUNDER.fullmatch(name))
        or name in _WRITES
    )
