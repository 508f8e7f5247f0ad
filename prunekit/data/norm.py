"""``DataNormSparsifier``: zero the blocks with the smallest L1/L2 norm, optionally N:M inside them.

For data viewed as a matrix (:func:`~prunekit.data.masks.matrix_shape`: size-1 dimensions dropped,
so vectors, ``N x 1`` and ``1 x N`` data are one row) cut into ``sparse_block_shape`` blocks from
the top-left corner (edge blocks are partial):

* block score = mean of ``|x|`` (``L1``) or of ``x²`` (``L2``) over the block's elements;
* the ``k = round(clamp(sparsity_level, 0, 1) · num_blocks)`` lowest-scoring blocks are chosen
  (ties: lower block index first);
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
from typing import Any, Collection, Iterable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from prunekit.data.base import DATA_SPARSIFIERS, BaseDataSparsifier, DataLike, config_problems
from prunekit.data.blocks import BlockGrid, write_block_mask
from prunekit.data.masks import matrix_shape
from prunekit.registry import suggest
from prunekit.validation import problems_from_validation_error, rule_error

__all__ = ["DataNormSparsifier", "DataNormConfig", "DataNormEntryConfig", "norm_block_mask"]

_MAX_BLOCK = 1 << 20


class DataNormEntryConfig(BaseModel):
    """The per-data config of :class:`DataNormSparsifier` (what ``add_data(**config)`` may set)."""

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
        sparse_block_shape: ``(rows, columns)`` of a block.
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
        """Recompute the mask of ``name`` in place (see the module docstring for the rule)."""
        if unknown:
            raise config_problems(
                name, [(k, f"unknown key {k!r}", f"remove it; {type(self).__name__} takes: {', '.join(_ENTRY_KEYS)}") for k in unknown]
            )
        level = float(sparsity_level)
        if math.isnan(level):
            raise config_problems(name, [("sparsity_level", "is NaN", "set a number within [0, 1]")])
        bh, bw = (int(s) for s in sparse_block_shape)
        zeros = bh * bw if zeros_per_block is None else int(zeros_per_block)
        if bh < 1 or bw < 1 or not 0 <= zeros <= bh * bw:
            raise config_problems(
                name,
                [("zeros_per_block", f"{zeros} zeros in a {bh}x{bw} block", f"use a block of positive sizes and 0..{bh * bw} zeros")],
            )
        if not (data.is_floating_point()):
            raise TypeError(f"{type(self).__name__}: data {name!r} is {data.dtype}; it needs floating-point data (convert with .float())")
        norm_block_mask(
            data, self.get_mask(name), min(max(level, 0.0), 1.0), (bh, bw), zeros, self.norm, name=name
        )


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

    ``level`` must already be within [0, 1]. Non-contiguous data is copied once to view it as a matrix.
    """
    rows, cols = matrix_shape(data.shape)
    out = mask.view(rows, cols)
    if data.numel() == 0:
        return
    bh, bw = block
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
