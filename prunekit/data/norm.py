"""``DataNormSparsifier``: zero the blocks with the smallest L1/L2 norm, optionally N:M inside them.

For data viewed as a matrix (:func:`~prunekit.data.masks.matrix_shape`: size-1 dimensions dropped,
so vectors, ``N x 1`` and ``1 x N`` data are one row) cut into ``sparse_block_shape`` blocks from
the top-left corner (edge blocks are partial):

* block score = mean of ``|x|`` (``L1``) or of ``x²`` (``L2``) over the block's elements;
* the ``k = round(clamp(sparsity_level, 0, 1) · num_blocks)`` lowest-scoring blocks are chosen
  (ties: lower block index first);
* a block larger than the data is clamped to the data's matrix shape (one partial block covers it:
  the mask torch.ao computes by padding the data up to the block), when masks are computed, so a
  block written by a data scheduler is clamped too; the config keeps the value given;
* inside each chosen block, the ``zeros_per_block`` entries of smallest magnitude are zeroed
  (ties: lower position first; every entry when the block has no more than that).

So on shapes the block divides, the zero fraction is exactly
``clamp(level, 0, 1) · zeros_per_block / block_size``; level 1.0, block ``(1, 4)`` and 2 zeros per
block is exact 2:4 sparsity. Masks are recomputed from the original data on every step (never
intersected with the previous mask), so repeated steps on fresh data do not drift to all-zero.
Scores and masks are computed chunk by chunk (:mod:`prunekit.data.blocks`): a step never copies
(contiguous) data, and its temporaries stay well below the data's size.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Collection, Iterable, Literal

import torch
from pydantic import ConfigDict, Field, ValidationError, model_validator

from prunekit.data.base import DATA_SPARSIFIERS, BaseDataSparsifier, DataLike, config_problems
from prunekit.data.blocks import BlockGrid, write_block_mask
from prunekit.data.masks import clamp_block, matrix_shape
from prunekit.registry import suggest
from prunekit.config.validation import StrictNumbersModel, problems_from_validation_error, rule_error

__all__ = ["DataNormSparsifier", "DataNormConfig", "DataNormEntryConfig", "norm_block_mask"]

_MAX_BLOCK = 1 << 20


class DataNormEntryConfig(StrictNumbersModel):
    """The per-data config of :class:`DataNormSparsifier` (what ``add_data(**config)`` may set).

    A boolean is refused wherever a number is expected (``sparsity_level=True`` is not 1.0).
    """

    model_config = ConfigDict(extra="forbid")

    sparsity_level: float = Field(
        0.5, ge=0.0, le=1.0, allow_inf_nan=False, description="Fraction of blocks chosen for zeroing."
    )
    sparse_block_shape: tuple[int, int] = Field((1, 4), description="Block (rows, columns), from the top-left corner.")
    zeros_per_block: int | None = Field(
        None, ge=0, description="Entries zeroed inside a chosen block (default: all of them)."
    )

    @model_validator(mode="after")
    def _fits_block(self) -> "DataNormEntryConfig":
        bh, bw = self.sparse_block_shape
        if not (1 <= bh <= _MAX_BLOCK and 1 <= bw <= _MAX_BLOCK):
            raise rule_error(
                f"sparse_block_shape {list(self.sparse_block_shape)} needs two sizes within [1, {_MAX_BLOCK}]",
                "write e.g. [1, 4]",
            )
        if self.zeros_per_block is not None and self.zeros_per_block > bh * bw:
            raise rule_error(
                f"zeros_per_block {self.zeros_per_block} exceeds the {bh * bw} entries of a {bh}x{bw} block",
                f"use at most {bh * bw}, or a larger sparse_block_shape",
            )
        return self


class DataNormConfig(DataNormEntryConfig):
    """``type: data_norm``: the sparsifier's defaults as written in YAML."""

    type: str = "data_norm"
    norm: Literal["L1", "L2"] = Field("L1", description="Block score: mean |x| (L1) or mean x² (L2).")


_ENTRY_KEYS = tuple(DataNormEntryConfig.model_fields)


@DATA_SPARSIFIERS.register("data_norm", config=DataNormConfig)
class DataNormSparsifier(BaseDataSparsifier):
    """Zero the lowest-norm blocks of each data (L1/L2), optionally only N of their entries.

    Args:
        data_list: ``(name, data)`` pairs to add with the defaults.
        sparsity_level: fraction of blocks chosen, in [0, 1] (a data scheduler may set any value; it
            is clamped to [0, 1] when masks are computed).
        sparse_block_shape: ``(rows, columns)`` of a block, sizes in [1, 2^20]; a block larger than
            the data is clamped to it when masks are computed.
        zeros_per_block: entries zeroed in each chosen block; None = the whole block.
        norm: ``"L1"`` or ``"L2"``.

    ``sparsity_level``, ``sparse_block_shape`` and ``zeros_per_block`` are defaults that
    ``add_data(name, data, **config)`` overrides per entry; ``norm`` applies to every entry.
    """

    def __init__(
        self,
        data_list: Iterable[tuple[str, DataLike]] | None = None,
        sparsity_level: float = 0.5,
        sparse_block_shape: tuple[int, int] = (1, 4),
        zeros_per_block: int | None = None,
        norm: Literal["L1", "L2"] = "L1",
    ) -> None:
        if norm not in ("L1", "L2"):
            raise config_problems(None, [("norm", f"unknown norm {norm!r}", "use 'L1' or 'L2'")])
        self.norm: str = norm
        super().__init__(
            data_list,
            sparsity_level=sparsity_level,
            sparse_block_shape=sparse_block_shape,
            zeros_per_block=zeros_per_block,
        )

    @classmethod
    def from_config(
        cls, config: DataNormConfig, data_list: Iterable[tuple[str, DataLike]] | None = None
    ) -> "DataNormSparsifier":
        """Build from a validated :class:`DataNormConfig`."""
        return cls(
            data_list,
            sparsity_level=config.sparsity_level,
            sparse_block_shape=config.sparse_block_shape,
            zeros_per_block=config.zeros_per_block,
            norm=config.norm,  # type: ignore[arg-type]
        )

    def validate_config(
        self, name: str | None, config: dict[str, Any], given: Collection[str] | None = None
    ) -> dict[str, Any]:
        """Only ``sparsity_level`` (in [0, 1]), ``sparse_block_shape`` and ``zeros_per_block``.

        A ``sparsity_level`` that was not given (kept from a data scheduler) is not bounds-checked:
        it is clamped when masks are computed.
        """
        unknown = [k for k in config if k not in _ENTRY_KEYS]
        if unknown:
            raise config_problems(
                name,
                [(k, f"unknown key {k!r}", _did_you_mean(k) + f"{type(self).__name__} takes: {', '.join(_ENTRY_KEYS)}") for k in unknown],
            )
        lenient = given is not None and "sparsity_level" not in given
        check = {k: v for k, v in config.items() if not (lenient and k == "sparsity_level")}
        try:
            checked = DataNormEntryConfig.model_validate(check)
        except ValidationError as err:
            found = problems_from_validation_error(err, model_at=lambda _p: DataNormEntryConfig)
            raise config_problems(name, [(p.path, p.what, p.fix) for p in found]) from None
        return {k: getattr(checked, k) if k in check else config[k] for k in config}

    def update_mask(  # type: ignore[override]
        self,
        name: str,
        data: torch.Tensor,
        sparsity_level: float,
        sparse_block_shape: tuple[int, int],
        zeros_per_block: int | None = None,
        **unknown: Any,
    ) -> None:
        """Recompute the mask of ``name`` in place (see the module docstring for the rule).

        The values are checked again here, because a data scheduler may have written them: a
        boolean, a NaN level, a block that is not two positive integers or a ``zeros_per_block``
        outside the block raise :class:`~prunekit.data.DataConfigError` naming the entry and key.
        """
        if unknown:
            raise config_problems(
                name, [(k, f"unknown key {k!r}", f"remove it; {type(self).__name__} takes: {', '.join(_ENTRY_KEYS)}") for k in unknown]
            )
        level, block, zeros = _step_values(name, sparsity_level, sparse_block_shape, zeros_per_block)
        if not (data.is_floating_point()):
            raise TypeError(f"{type(self).__name__}: data {name!r} is {data.dtype}; it needs floating-point data (convert with .float())")
        norm_block_mask(data, self._plain_mask(name), min(max(level, 0.0), 1.0), block, zeros, self.norm, name=name)


def _is_boolean(value: Any) -> bool:
    """``bool``, NumPy's ``bool_`` or a bool tensor: values Python would silently take for 0 / 1."""
    return isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool")


def _step_values(name: str, level: Any, block: Any, zeros: Any) -> tuple[float, tuple[int, int], int]:
    """``(level, (bh, bw), zeros)`` from an entry's config at step time, or a :class:`DataConfigError`."""
    problems: list[tuple[str, str, str]] = []
    if _is_boolean(level):
        problems.append(("sparsity_level", f"expected a number, got a boolean ({level!r})", "set a number within [0, 1]"))
        level = 0.0
    if isinstance(level, numbers.Real) or (isinstance(level, torch.Tensor) and level.numel() == 1):
        level = float(level)
    else:
        problems.append(("sparsity_level", f"expected a number, got {type(level).__name__}", "set a number within [0, 1]"))
        level = 0.0
    if math.isnan(level):
        problems.append(("sparsity_level", "is NaN", "set a number within [0, 1]"))
    sizes = _block_sizes(block)
    if sizes is None:
        problems.append((
            "sparse_block_shape",
            f"expected two positive integers, got {block!r}" + (" (a boolean is not a size)" if _holds_boolean(block) else ""),
            "set e.g. (1, 4)",
        ))
        sizes = (1, 1)
    bh, bw = sizes
    count = bh * bw
    if zeros is None:
        zeros = count
    elif _is_boolean(zeros) or not _is_integer(zeros):
        what = f"a boolean ({zeros!r})" if _is_boolean(zeros) else repr(zeros)
        problems.append(("zeros_per_block", f"expected an integer or None, got {what}", f"set 0..{count}, or None for the whole block"))
        zeros = count
    elif not 0 <= int(zeros) <= count:
        problems.append(("zeros_per_block", f"{int(zeros)} zeros in a {bh}x{bw} block", f"use a block of positive sizes and 0..{count} zeros"))
    if problems:
        raise config_problems(name, problems)
    return level, (bh, bw), int(zeros)


def _is_integer(value: Any) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _holds_boolean(block: Any) -> bool:
    return isinstance(block, (list, tuple)) and any(_is_boolean(b) for b in block)


def _block_sizes(block: Any) -> tuple[int, int] | None:
    """``block`` as two positive ints, or None when it is not two positive integers (booleans refused)."""
    if not isinstance(block, (list, tuple)) or len(block) != 2:
        return None
    if any(_is_boolean(b) or not _is_integer(b) for b in block):
        return None
    bh, bw = (operator.index(b) for b in block)
    return (bh, bw) if bh >= 1 and bw >= 1 else None


def _did_you_mean(key: str) -> str:
    hint = suggest(key, list(_ENTRY_KEYS))
    return f"did you mean '{hint}'? " if hint else ""


def norm_block_mask(
    data: torch.Tensor,
    mask: torch.Tensor,
    level: float,
    block: tuple[int, int],
    zeros_per_block: int,
    norm: str = "L1",
    *,
    name: str = "data",
) -> None:
    """Write into the bool ``mask`` (``data``'s shape, contiguous) the mask the module docstring defines.

    ``level`` must already be within [0, 1]. A block larger than the data is clamped to it (and
    ``zeros_per_block`` to the clamped block). Non-contiguous data is copied once to view it as a
    matrix.
    """
    rows, cols = matrix_shape(data.shape)
    out = mask.view(rows, cols)
    if data.numel() == 0:
        return
    bh, bw = block = clamp_block(data.shape, block)
    zeros_per_block = min(zeros_per_block, bh * bw)
    num_blocks = math.ceil(rows / bh) * math.ceil(cols / bw)
    k = round(level * num_blocks)
    if k == 0 or zeros_per_block == 0:
        out.fill_(True)
        return
    if k == num_blocks and zeros_per_block >= bh * bw:
        out.fill_(False)
        return
    grid = BlockGrid(data.detach().reshape(rows, cols), block, norm)
    write_block_mask(grid, out, k, zeros_per_block, name)
